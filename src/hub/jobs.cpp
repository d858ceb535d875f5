// SPDX-License-Identifier: Apache-2.0
// A job's life in the hub: transitions, requeues, losses and retries, dependencies, queue
// timeouts, cancellation, final states and forgetting.
#include "hub/jobs.hpp"

#include <malloc.h>

#include <algorithm>

#include <fmt/format.h>

#include "common/log.hpp"
#include "common/text.hpp"

namespace sortie::hub {

Jobs::Jobs(Core& core) : core_(core) {
  core_.events.final.subscribe([this](Job& job) { settle_dependents(job); });
}

void Jobs::register_with(Router& router) {
  router.add(pb::Envelope::kCancel, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_cancel(from, env.cancel()); });
  router.add(pb::Envelope::kForget, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_forget(from, env.forget()); });
}

// -------------------------------------------------------------------------------------------
// Lookups and selectors

Error Jobs::missing(JobId id) const {
  if (id.value > 0 && id.value < core_.state.next_job_id)
    return make_error(ErrorCode::NotFound,
                      fmt::format("job {} does not exist (any more: ended jobs are forgotten after "
                                  "job_retention, {}, or by `sortie job forget`)",
                                  id, core_.config.job_retention_ms
                                          ? format_duration_ms(core_.config.job_retention_ms)
                                          : std::string("never")));
  return make_error(ErrorCode::NotFound, fmt::format("job {} does not exist", id));
}

Result<void> Jobs::check_ranges(const pb::JobSelector& sel) {
  for (const auto& r : sel.ids()) {
    std::uint64_t last = r.last() ? r.last() : r.first();
    if (r.first() == 0 || last < r.first())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("invalid job range {}-{}", r.first(), last));
  }
  return ok_result();
}

Result<std::vector<std::uint64_t>> Jobs::groups_named(const pb::JobSelector& sel) const {
  const auto& groups = core_.state.groups;
  // Every command treats a group that does not exist the same way: an error naming it.
  for (auto g : sel.groups())
    if (g == 0 || g > groups.size() || groups[g - 1].id == 0)
      return make_error(ErrorCode::NotFound,
                        fmt::format("group {} does not exist: `sortie job list` shows the jobs "
                                    "and their groups",
                                    g));
  std::vector<std::uint64_t> out;
  for (const auto& name : sel.group_names()) {
    auto it = core_.state.groups_by_name.find(name);
    if (it == core_.state.groups_by_name.end())
      return make_error(ErrorCode::NotFound,
                        fmt::format("no group is named '{}': `sortie job list` shows the jobs and "
                                    "their groups",
                                    printable(name)));
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

bool Jobs::selected(const pb::JobSelector& sel,
                    const std::vector<std::uint64_t>& named,
                    const Job& job) const {
  if (sel.all() || (sel.ids_size() == 0 && sel.groups_size() == 0 && sel.group_names_size() == 0))
    return true;
  for (auto g : named)
    if (g == job.group)
      return true;
  for (const auto& r : sel.ids()) {
    std::uint64_t last = r.last() ? r.last() : r.first();
    if (job.id.value >= r.first() && job.id.value <= last)
      return true;
  }
  for (auto g : sel.groups())
    if (g == job.group)
      return true;
  return false;
}

void Jobs::for_each_selected(const pb::JobSelector& sel, const std::vector<std::uint64_t>& named,
                             const std::function<void(Job&)>& fn, std::uint64_t* missing) {
  auto& jobs = core_.state.jobs;
  if (!sel.all() && sel.groups_size() == 0 && sel.group_names_size() == 0 && sel.ids_size() > 0) {
    std::unordered_set<std::uint64_t> seen;
    for (const auto& r : sel.ids()) {
      std::uint64_t last = r.last() ? r.last() : r.first();
      std::uint64_t existing_last = std::min<std::uint64_t>(last, jobs.size());
      for (std::uint64_t id = r.first(); id <= existing_last; ++id) {
        Job* j = find(JobId(id));
        if (!j) {
          if (missing)
            ++*missing;
        } else if (seen.insert(id).second) {
          fn(*j);
        }
      }
      if (missing && last > existing_last)
        *missing += last - std::max(existing_last, r.first() - 1);
    }
    return;
  }
  jobs.for_each([&](Job& j) {
    if (j.id.valid() && selected(sel, named, j))
      fn(j);
  });
}

Result<void> Jobs::check_after(const pb::JobSpec& spec, std::size_t item) const {
  for (auto dep : spec.after())
    if (!find(JobId(dep)))
      return make_error(ErrorCode::NotFound,
                        fmt::format("--after {}: there is no job {}", dep, dep),
                        fmt::format("job {} of the submission", item + 1));
  return ok_result();
}

// -------------------------------------------------------------------------------------------
// Specs and groups

Spec Jobs::make_spec(std::string bytes, const pb::JobSpec& p) {
  auto& sched = core_.scheduler;
  Spec s;
  s.bytes = std::move(bytes);
  s.name = p.name();
  auto& r = s.req;
  r.label = sched.intern(p.label());
  // An MPI job holds a slot (or --slots) for each of its ranks.
  r.slots = std::max<std::uint32_t>(1, p.slots()) * std::max<std::uint32_t>(1, p.mpi_ranks());
  r.memory = p.memory_bytes();
  r.gpus = p.gpus();
  for (const auto& h : p.hosts())
    r.hosts.push_back(sched.intern(h));
  for (const auto& h : p.prefer_hosts())
    r.prefer.push_back(sched.intern(h));
  std::sort(r.hosts.begin(), r.hosts.end());
  std::sort(r.prefer.begin(), r.prefer.end());
  r.max_per_node = p.max_per_node();
  r.priority = p.priority();
  r.time_request_ms = p.time_request_ms();
  s.rank_slots = std::max<std::uint32_t>(1, p.slots());
  if (p.ranks_per_node() > 0) // across ceil(ranks / per node) nodes of one pilot
    r.per_node = s.rank_slots * p.ranks_per_node();
  s.queue_timeout_ms = p.queue_timeout_ms();
  s.retries = p.has_retries() ? static_cast<std::int32_t>(p.retries()) : -1;
  s.retry_on_failure = p.retry_on_failure();
  s.engine = p.kind() == "engine";
  s.restart = s.engine && p.restart();
  for (auto dep : p.after())
    s.after.push_back(JobId(dep));
  return s;
}

std::shared_ptr<const std::string> Jobs::intern_env(std::string bytes) {
  if (bytes.empty())
    return nullptr;
  auto& same_hash = core_.state.envs[std::hash<std::string>{}(bytes)];
  std::erase_if(same_hash, [](const auto& w) { return w.expired(); });
  for (const auto& w : same_hash)
    if (auto env = w.lock(); *env == bytes)
      return env;
  auto env = std::make_shared<const std::string>(std::move(bytes));
  same_hash.push_back(env);
  return env;
}

std::int64_t Jobs::run_timeout_of(const Spec& spec) {
  pb::JobSpec p;
  p.ParseFromString(spec.bytes);
  return p.run_timeout_ms();
}

// -------------------------------------------------------------------------------------------
// Life

void Jobs::watch_queue_timeout(const Job& job) {
  const Spec& spec = core_.state.spec_of(job);
  if (spec.queue_timeout_ms > 0 && job.start_ms == 0)
    queue_deadlines_.emplace(job.submit_ms + spec.queue_timeout_ms, job.id);
}

void Jobs::transition(Job& job, JobState to, std::int64_t now_ms) {
  if (job.state == to)
    return;
  auto& counts = core_.state.state_counts;
  --counts[job.state];
  ++counts[to];
  job.state = to;
  job.history.push_back({to, now_ms});
  core_.durable.mark_dirty(job);
}

bool Jobs::may_retry(const Job& job, bool failure) const {
  const Spec& spec = core_.state.spec_of(job);
  if (spec.restart) // an engine started with restart: again whenever it ends, until cancelled
    return true;
  std::uint32_t used = job.lost_count + job.fail_count;
  if (failure)
    return spec.retry_on_failure && spec.retries > 0 &&
           used < static_cast<std::uint32_t>(spec.retries);
  std::uint32_t budget =
      spec.retries >= 0 ? static_cast<std::uint32_t>(spec.retries) : core_.config.lost_retries;
  return used < budget;
}

void Jobs::make_ready(Job& job, bool at_load) {
  const Spec& spec = core_.state.spec_of(job);
  job.deps_pending = 0;
  for (auto dep : spec.after) {
    const Job* d = find(dep);
    if ((d && d->state == JobState::Succeeded) || (!d && at_load))
      continue;
    if (!d || is_terminal(d->state)) {
      end(job, JobState::Cancelled,
          d ? fmt::format("dependency {} {}", dep, job_state_name(d->state))
            : fmt::format("dependency {} does not exist", dep));
      return;
    }
    dependents_[dep].push_back(job.id);
    ++job.deps_pending;
  }
  if (job.deps_pending == 0) {
    core_.scheduler.enqueue(job.id, spec.req);
    return;
  }
  std::string ids;
  for (auto dep : spec.after)
    ids += fmt::format("{}{}", ids.empty() ? "" : ",", dep);
  job.reason = "waiting for " + ids;
}

void Jobs::settle_dependents(const Job& done) {
  auto it = dependents_.find(done.id);
  if (it == dependents_.end())
    return;
  auto waiting = std::move(it->second);
  dependents_.erase(it);
  for (auto id : waiting) {
    Job* j = find(id);
    if (!j || j->state != JobState::Queued || j->deps_pending == 0)
      continue;
    if (done.state == JobState::Succeeded) {
      if (--j->deps_pending == 0) {
        j->reason.clear();
        core_.scheduler.enqueue(j->id, core_.state.spec_of(*j).req);
        core_.events.schedulable.emit();
      }
      continue;
    }
    // A dependency that will not succeed: the dependent never runs.
    j->deps_pending = 0;
    end(*j, JobState::Cancelled,
        fmt::format("dependency {} {}", done.id, job_state_name(done.state)));
  }
}

void Jobs::unqueue(Job& job) {
  if (job.deps_pending == 0)
    core_.scheduler.remove_queued(job.id);
}

void Jobs::detach_from_agent(Job& job) {
  auto& st = core_.state;
  if (Agent* a = st.find_agent(job.agent))
    a->jobs.erase(job.id);
  st.span_lost.erase(job.id);
  if (auto span = st.spans.find(job.id); span != st.spans.end()) {
    bool engine = st.spec_of(job).engine;
    for (auto [node, slots] : span->second)
      if (Agent* a = st.find_agent(node); a && a->held.erase(job.id) && engine && a->peer) {
        pb::Envelope env; // its ranks' engine socket there goes
        env.mutable_engine_host()->set_job_id(job.id.value);
        env.mutable_engine_host()->set_attempt(job.attempt);
        env.mutable_engine_host()->set_end(true);
        a->peer->send(env);
      }
    st.spans.erase(span);
  }
  core_.scheduler.release(job.id);
}

void Jobs::send_kill(const Job& job, const std::string& reason) {
  Agent* a = core_.state.find_agent(job.agent);
  if (!a || !a->peer)
    return;
  pb::Envelope env;
  auto* k = env.mutable_kill();
  auto* ref = k->add_jobs();
  ref->set_job_id(job.id.value);
  ref->set_attempt(job.attempt);
  k->set_reason(reason);
  k->set_grace_ms(core_.config.kill_grace_ms);
  a->peer->send(env);
}

void Jobs::requeue(Job& job, bool front) {
  detach_from_agent(job);
  job.started = false;
  job.agent = AgentId();
  transition(job, JobState::Queued, core_.clock.now_ms());
  const auto& req = core_.state.spec_of(job).req;
  if (front)
    core_.scheduler.requeue_front(job.id, req);
  else
    core_.scheduler.enqueue(job.id, req);
  core_.events.schedulable.emit();
}

void Jobs::lost(Job& job, const std::string& why) {
  detach_from_agent(job);
  std::int64_t now = core_.clock.now_ms();
  job.end_ms = now;
  job.reason = why;
  transition(job, JobState::Lost, now);
  core_.events.attempt_ended.emit(job);
  bool retry = may_retry(job, false);
  ++job.lost_count;
  if (job.cancel_requested) {
    transition(job, JobState::Cancelled, now);
    final(job);
  } else if (retry) {
    log::warn("job {} lost ({}); requeued (retry {})", job.id, why,
              job.lost_count + job.fail_count);
    requeue(job, true);
  } else {
    job.reason = fmt::format("{}; its node was lost {} time{}, and it has no retries left", why,
                             job.lost_count, job.lost_count == 1 ? "" : "s");
    log::warn("job {} lost ({}); no retries left", job.id, why);
    final(job);
  }
}

void Jobs::end(Job& job, JobState to, std::string reason) {
  std::int64_t now = core_.clock.now_ms();
  if (!reason.empty())
    job.reason = std::move(reason);
  job.end_ms = now;
  transition(job, to, now);
  final(job);
}

void Jobs::final(Job& job) { core_.events.final.emit(job); }

void Jobs::cancel(Job& job, const std::string& reason) {
  switch (job.state) {
  case JobState::Queued:
    unqueue(job);
    return end(job, JobState::Cancelled, reason);
  case JobState::Assigned:
  case JobState::Running:
    if (job.cancel_requested)
      return;
    job.cancel_requested = true;
    job.reason = reason;
    send_kill(job, reason);
    // A disconnected agent is told when it reconnects; if it never does, the job ends cancelled.
    return;
  default:
    return;
  }
}

std::string Jobs::output_loss_note(const Job& job) const {
  return fmt::format("part of its output could not be written ({} bytes so far; see hub.log) and "
                     "is missing from its output files",
                     job.out_lost);
}

namespace {
constexpr std::int64_t kForeverMs = 10LL * 366 * 24 * 3600 * 1000; // no walltime
} // namespace

std::string Jobs::why_waiting(const scheduler::Requirements& r) const {
  const auto& sched = core_.scheduler;
  // Like squeue's REASON: first whether any node the hub knows could ever run it, and if none
  // could, which requirement rules them all out.
  const Agent* any = nullptr;
  std::uint32_t most_slots = 0;
  std::uint64_t most_memory = 0;
  std::size_t most_gpus = 0;
  std::int64_t most_time = 0;
  bool label_seen = r.label == 0, host_seen = r.hosts.empty();
  std::int64_t now = core_.clock.now_ms();
  std::uint32_t per_node = r.spans_nodes() ? r.per_node : r.slots;
  std::uint32_t fits = 0, most_idle = 0, idle_of = 0; // nodes it fits, the most idle of them
  for (const auto& [id, a] : core_.state.agents) {
    if (!a.peer)
      continue;
    any = &a;
    if (r.label != 0 && a.label != sched.name(r.label))
      continue;
    label_seen = true;
    if (!r.hosts.empty() && std::none_of(r.hosts.begin(), r.hosts.end(), [&](scheduler::Symbol h) {
          return sched.name(h) == a.node;
        }))
      continue;
    host_seen = true;
    std::int64_t left = a.walltime_end_ms ? a.walltime_end_ms - now : kForeverMs;
    most_slots = std::max(most_slots, a.slots);
    most_memory = std::max(most_memory, a.memory);
    most_gpus = std::max(most_gpus, a.gpus.size());
    most_time = std::max(most_time, left);
    if (per_node <= a.slots && r.memory <= a.memory && r.gpus <= a.gpus.size() &&
        r.time_request_ms <= left) { // it fits this node: when it has room
      std::uint32_t idle = sched.idle_slots(id);
      if (fits++ == 0 || idle > most_idle)
        std::tie(most_idle, idle_of) = std::pair(idle, a.slots);
    }
  }
  if (fits > 0) {
    std::string where = r.label == 0 ? std::string()
                                     : fmt::format(" with label '{}'", sched.name(r.label));
    return fmt::format("waiting for free resources: it needs {} slot{} on a node{}; {} {} "
                       "such node{}, and the most free slots on one now is {} (of {})",
                       per_node, per_node == 1 ? "" : "s", where, fits == 1 ? "there is" : "there are",
                       fits, fits == 1 ? "" : "s", most_idle, idle_of);
  }
  if (!any)
    return "no pilot is running: add one (sortie pilot add)";
  if (!label_seen)
    return fmt::format("no running pilot has label '{}'", sched.name(r.label));
  if (!host_seen) {
    std::string hosts;
    for (auto h : r.hosts)
      hosts += (hosts.empty() ? "" : ", ") + sched.name(h);
    return fmt::format("it must run on {}, which no running pilot has", hosts);
  }
  if (per_node > most_slots)
    return fmt::format("it needs {} slots on one node; the largest node it may use has {}",
                       per_node, most_slots);
  if (r.memory > most_memory)
    return fmt::format("it needs {} of memory; the most any node it may use offers is {}",
                       format_size_bytes(r.memory), format_size_bytes(most_memory));
  if (r.gpus > most_gpus)
    return fmt::format("it needs {} GPUs; the most any node it may use has is {}", r.gpus,
                       most_gpus);
  return fmt::format("it asks for {} of walltime; the most any pilot it may use has left is {}",
                     format_duration_ms(r.time_request_ms), format_duration_ms(most_time));
}

void Jobs::tick() {
  // job_retention: a sweep every quarter of it, at least every second and at most every minute.
  if (std::int64_t mono = core_.clock.monotonic_ms(); mono >= next_retention_sweep_ms_) {
    if (next_retention_sweep_ms_ > 0)
      forget_expired();
    next_retention_sweep_ms_ =
        mono + std::clamp<std::int64_t>(core_.config.job_retention_ms / 4, 1'000, 60'000);
  }
  std::int64_t wall = core_.clock.now_ms();
  while (!queue_deadlines_.empty() && queue_deadlines_.top().first <= wall) {
    JobId id = queue_deadlines_.top().second;
    queue_deadlines_.pop();
    Job* j = find(id);
    if (!j || j->start_ms != 0 || j->started)
      continue; // started (or finished) in time
    const Spec& spec = core_.state.spec_of(*j);
    std::string why = fmt::format("not started within its queue timeout of {}: {}",
                                  format_duration_ms(spec.queue_timeout_ms),
                                  j->deps_pending ? "it waited for its dependencies"
                                                  : why_waiting(spec.req));
    if (j->state == JobState::Queued) {
      unqueue(*j);
      j->deps_pending = 0;
      end(*j, JobState::TimedOut, std::move(why));
    } else if (j->state == JobState::Assigned && !j->cancel_requested) {
      // In its agent's launch queue, waiting for slots there: taken out of it, timed out.
      j->queue_timed_out = true;
      j->cancel_requested = true;
      j->reason = std::move(why);
      send_kill(*j, j->reason);
    }
  }
}

// -------------------------------------------------------------------------------------------
// Cancel and forget

Result<std::vector<std::uint64_t>> Jobs::named_for(const pb::JobSelector& sel,
                                                   const char* verb) const {
  if (!sel.all() && sel.ids_size() == 0 && sel.groups_size() == 0 && sel.group_names_size() == 0)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("name the jobs to {} (ids, a group, or all)", verb));
  SORTIE_TRY(check_ranges(sel));
  return groups_named(sel);
}

void Jobs::handle_cancel(const Sender& from, const pb::CancelRequest& req) {
  const auto& sel = req.selector();
  auto named = named_for(sel, "cancel");
  if (!named.ok())
    return reply_error(from.peer, from.rid, named.error());
  std::string reason = req.reason().empty() ? fmt::format("cancelled by {}", from.peer->describe())
                                            : req.reason();
  std::uint64_t cancelled = 0, finished = 0, missing = 0;
  for_each_selected(sel, *named, [&](Job& j) {
    if (is_terminal(j.state)) {
      ++finished;
    } else {
      cancel(j, reason);
      ++cancelled;
    }
  }, &missing);
  pb::Envelope env;
  auto* c = env.mutable_cancel_reply();
  c->set_cancelled(cancelled);
  c->set_already_finished(finished);
  c->set_not_found(missing);
  reply(from.peer, env, from.rid);
}

void Jobs::handle_forget(const Sender& from, const pb::ForgetRequest& req) {
  const auto& sel = req.selector();
  auto named = named_for(sel, "forget");
  if (!named.ok())
    return reply_error(from.peer, from.rid, named.error());
  std::vector<JobId> ended;
  std::uint64_t not_ended = 0, missing = 0;
  for_each_selected(sel, *named, [&](Job& j) {
    if (is_terminal(j.state))
      ended.push_back(j.id);
    else
      ++not_ended;
  }, &missing);
  forget(ended);
  // The reply once the rows are gone: a `job list` after it does not show them.
  core_.durable.after_commit([peer = from.peer, rid = from.rid, n = ended.size(), not_ended,
                              missing](const Result<void>& r) {
    if (!r.ok())
      return reply_error(peer, rid, r.error());
    pb::Envelope env;
    auto* f = env.mutable_forget_reply();
    f->set_forgotten(n);
    f->set_not_ended(not_ended);
    f->set_not_found(missing);
    reply(peer, env, rid);
  });
}

void Jobs::forget(const std::vector<JobId>& ids) {
  if (ids.empty())
    return;
  auto& st = core_.state;
  store::WriteBatch& b = core_.durable.batch();
  std::vector<std::size_t> chunks;
  for (auto id : ids) {
    Job* j = find(id);
    if (!j || !is_terminal(j->state))
      continue;
    b.jobs_forgotten.push_back(id.value); // a pending row update is dropped by flush()
    --st.state_counts[j->state];
    if (j->spec > 0 && j->spec <= st.specs.size() && --st.specs[j->spec - 1].jobs == 0) {
      b.specs_forgotten.push_back(j->spec);
      st.specs[j->spec - 1] = Spec{};
    }
    if (j->group > 0 && j->group <= st.groups.size() && --st.groups[j->group - 1].live == 0) {
      Group& g = st.groups[j->group - 1];
      b.groups_forgotten.push_back(g.id);
      if (!g.name.empty())
        if (auto it = st.groups_by_name.find(g.name); it != st.groups_by_name.end()) {
          std::erase(it->second, g.id);
          if (it->second.empty())
            st.groups_by_name.erase(it);
        }
      g = Group{};
    }
    core_.events.forgotten.emit(id);
    *j = Job{};
    std::size_t chunk = (id.value - 1) / 4096;
    if (chunks.empty() || chunks.back() != chunk)
      chunks.push_back(chunk);
  }
  b.next_job_id = st.next_job_id;
  b.next_spec_id = st.next_spec_id;
  b.next_group_id = st.next_group_id;
  // Whole chunks of forgotten ids give their memory back.
  for (auto c : chunks)
    st.jobs.release_if(c * 4096, [](const Job& e) { return !e.id.valid(); });
  if (b.jobs_forgotten.size() >= 10'000)
    ::malloc_trim(0);
}

void Jobs::forget_expired() {
  if (core_.config.job_retention_ms <= 0)
    return;
  std::int64_t before = core_.clock.now_ms() - core_.config.job_retention_ms;
  std::vector<JobId> old;
  core_.state.jobs.for_each([&](Job& j) {
    if (j.id.valid() && is_terminal(j.state) && j.end_ms > 0 && j.end_ms < before &&
        old.size() < 100'000)
      old.push_back(j.id);
  });
  if (!old.empty()) {
    log::info("forgetting {} jobs that ended more than {} ago (job_retention)", old.size(),
              format_duration_ms(core_.config.job_retention_ms));
    forget(old);
  }
}

} // namespace sortie::hub
