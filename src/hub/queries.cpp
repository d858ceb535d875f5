// SPDX-License-Identifier: Apache-2.0
// Listings, job details, pilot lists and the hub's status.
#include "hub/queries.hpp"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <unordered_set>

#include <fmt/format.h>

#include "common/text.hpp"
#include "common/version.hpp"

namespace sortie::hub {
namespace {

constexpr std::size_t kListChunk = 5000; // jobs per JobList frame

pb::JobState to_pb(JobState s) { return static_cast<pb::JobState>(s); }

} // namespace

void Queries::register_with(Router& router) {
  router.add(pb::Envelope::kListJobs, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_list(from, env.list_jobs()); });
  router.add(pb::Envelope::kGetJob, Role::Client,
             [this](const Sender& from, pb::Envelope& env) { handle_get(from, env.get_job()); });
  router.add(pb::Envelope::kHubStatus, Role::Client,
             [this](const Sender& from, pb::Envelope&) { handle_status(from); });
  router.add(pb::Envelope::kPilotList, Role::Client, [this](const Sender& from, pb::Envelope&) {
    pb::Envelope env;
    fill_pilots(*env.mutable_pilot_list_reply());
    reply(from.peer, env, from.rid);
  });
}

std::string Queries::node_of(const Job& job) const {
  const Agent* a = core_.state.find_agent(job.agent);
  return a ? a->node : std::string();
}

void Queries::fill_info(const Job& job, pb::JobInfo& info, bool detail) const {
  const auto& st = core_.state;
  info.set_id(job.id.value);
  info.set_state(to_pb(job.state));
  if (job.has_exit_code)
    info.set_exit_code(job.exit_code);
  if (job.has_signal)
    info.set_signal(job.signal);
  info.set_node(node_of(job));
  if (auto span = st.spans.find(job.id); span != st.spans.end())
    for (auto [node, slots] : span->second)
      if (const Agent* a = st.find_agent(node))
        info.add_nodes(a->node);
  info.set_attempt(job.attempt);
  if (job.is_array)
    info.set_array_index(job.array_index);
  info.set_group(job.group);
  info.set_submit_ms(job.submit_ms);
  info.set_start_ms(job.start_ms);
  info.set_end_ms(job.end_ms);
  const Spec& spec = st.spec_of(job);
  if (job.state == JobState::Queued && job.reason.empty() && job.deps_pending == 0) {
    std::int64_t now = core_.clock.monotonic_ms();
    if (why_cache_.spec != job.spec || why_cache_.at_ms != now)
      why_cache_ = {job.spec, now, jobs_.why_waiting(spec.req)};
    info.set_reason(why_cache_.reason);
  } else if (const Agent* a = job.state == JobState::Assigned && job.reason.empty()
                                  ? st.find_agent(job.agent)
                                  : nullptr) {
    // In its agent's launch queue: it starts as soon as slots free up there.
    std::uint32_t idle = core_.scheduler.idle_slots(a->id);
    std::uint32_t need = spec.req.spans_nodes() ? spec.req.per_node : spec.req.slots;
    info.set_reason(idle >= need
                        ? fmt::format("starting on node {}", a->node)
                        : fmt::format("waiting in node {}'s launch queue: it starts when {} of "
                                      "its {} slots {} free",
                                      a->node, need, a->slots, need == 1 ? "is" : "are"));
  } else {
    info.set_reason(job.reason);
  }
  info.set_limits(limits_name(job.limits));
  for (auto g : gpus_of(job.gpu_mask))
    info.add_gpus(g);
  if (const Group* g = st.group_of(job))
    info.set_group_name(g->name);
  if (detail) {
    info.mutable_spec()->ParseFromString(spec.bytes);
    auto* first = info.add_history();
    first->set_state(pb::JOB_QUEUED);
    first->set_time_ms(job.submit_ms);
    for (const auto& h : job.history) {
      auto* c = info.add_history();
      c->set_state(to_pb(h.state));
      c->set_time_ms(h.time_ms);
    }
    auto* u = info.mutable_usage();
    u->set_user_cpu_us(job.usage.user_cpu_us);
    u->set_system_cpu_us(job.usage.system_cpu_us);
    u->set_max_rss_kib(job.usage.max_rss_kib);
  }
  info.set_name(spec.name);
}

void Queries::handle_list(const Sender& from, const pb::ListJobsRequest& req) {
  std::unordered_set<int> states(req.states().begin(), req.states().end());
  auto named = jobs_.groups_named(req.selector());
  if (!named.ok())
    return reply_error(from.peer, from.rid, named.error());
  // Which jobs match, counted by state; with a limit only the newest are sent.
  std::vector<const Job*> matched;
  std::map<JobState, std::uint64_t> counts;
  jobs_.for_each_selected(req.selector(), *named, [&](Job& j) {
    if (!states.empty() && !states.contains(static_cast<int>(j.state)))
      return;
    ++counts[j.state];
    matched.push_back(&j);
  });
  std::size_t from_index =
      req.limit() > 0 && matched.size() > req.limit() ? matched.size() - req.limit() : 0;
  pb::Envelope env;
  auto* list = env.mutable_job_list();
  for (std::size_t i = from_index; i < matched.size(); ++i) {
    fill_info(*matched[i], *list->add_jobs(), false);
    if (static_cast<std::size_t>(list->jobs_size()) >= kListChunk) {
      reply(from.peer, env, from.rid);
      list->Clear();
    }
  }
  list->set_last(true);
  list->set_matched(matched.size());
  for (auto [state, n] : counts) {
    auto* c = list->add_counts();
    c->set_state(to_pb(state));
    c->set_count(n);
  }
  reply(from.peer, env, from.rid);
}

void Queries::handle_get(const Sender& from, const pb::GetJobRequest& req) {
  const Job* j = jobs_.find(JobId(req.job_id()));
  if (!j)
    return reply_error(from.peer, from.rid, jobs_.missing(JobId(req.job_id())));
  pb::Envelope env;
  fill_info(*j, *env.mutable_job_info(), true);
  reply(from.peer, env, from.rid);
}

HubStats Queries::stats() const {
  HubStats s;
  for (const auto& [state, n] : core_.state.state_counts)
    if (n)
      s.jobs_by_state[job_state_name(state)] = n;
  for (const auto& [id, a] : core_.state.agents)
    s.agents += a.peer != nullptr;
  for (const auto& [id, p] : core_.state.pilots)
    s.pilots += !is_over(p.state);
  s.slots_total = core_.scheduler.slots_total();
  s.slots_used = core_.scheduler.slots_used();
  return s;
}

void Queries::handle_status(const Sender& from) {
  auto s = stats();
  pb::Envelope env;
  auto* st = env.mutable_hub_status_reply();
  st->set_version(kSortieVersion);
  st->set_profile(core_.config.profile.name);
  st->set_pid(::getpid());
  st->set_started_ms(identity_.started_ms);
  st->set_address(identity_.listen_address);
  for (const auto& [k, v] : s.jobs_by_state)
    (*st->mutable_jobs_by_state())[k] = v;
  st->set_agents(s.agents);
  st->set_pilots(s.pilots);
  st->set_slots_total(s.slots_total);
  st->set_slots_used(s.slots_used);
  st->set_store_path(core_.config.profile.store_file().string());
  st->set_store_commits(core_.durable.store().commits());
  reply(from.peer, env, from.rid);
}

void Queries::fill_pilots(pb::PilotList& list) const {
  const auto& st = core_.state;
  std::vector<const Pilot*> sorted;
  for (const auto& [id, p] : st.pilots)
    sorted.push_back(&p);
  std::sort(sorted.begin(), sorted.end(),
            [](const Pilot* a, const Pilot* b) { return a->id < b->id; });
  for (const Pilot* p : sorted) {
    auto* info = list.add_pilots();
    info->set_id(p->id.value);
    *info->mutable_spec() = p->spec;
    info->set_state(pilot_state_name(p->state));
    info->set_created_ms(p->created_ms);
    info->set_reason(p->reason);
    info->set_end_ms(p->end_ms);
    info->set_batch_id(p->batch_id);
    std::uint64_t total = 0, used = 0;
    std::uint32_t up = 0;
    for (auto aid : p->agents) {
      const Agent* a = st.find_agent(aid);
      if (!a || !a->peer)
        continue;
      ++up;
      info->add_nodes(a->node);
      total += a->slots;
      for (auto jid : a->jobs)
        if (const Job* j = st.find_job(jid); j && j->state == JobState::Running)
          used += st.spec_of(*j).req.slots;
    }
    info->set_nodes_up(up);
    info->set_slots_total(total);
    info->set_slots_used(used);
  }
}

} // namespace sortie::hub
