// SPDX-License-Identifier: Apache-2.0
// Engines in the hub: registration through their agents, their tasks' dispatch after commit,
// results from engines, losses, timeouts and task_retention (docs/engines.md).
#include "hub/tasks.hpp"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/log.hpp"
#include "common/text.hpp"
#include "protocol/errors.hpp"

namespace sortie::hub {
namespace {

/// The engines' pace (PrefetchPace) is measured in microseconds of this process's steady clock,
/// not the hub's Clock (milliseconds, which tests may drive): a no-op task takes ~50 us.
std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

} // namespace

Tasks::Tasks(Core& core, Jobs& jobs) : core_(core), jobs_(jobs) {
  core_.direct.on(
      [this](const std::shared_ptr<Peer>& peer, std::uint64_t link, JobId job, pb::Envelope& env) {
        // As if its agent had routed it: the same checks and handlers.
        const Job* j = jobs_.find(job);
        Agent* agent = j ? core_.state.find_agent(j->agent) : nullptr;
        if (!agent || !router_)
          return peer->close_with_error(make_error(ErrorCode::FailedPrecondition,
                                                   fmt::format("job {} is not running: this "
                                                               "engine is not wanted any more",
                                                               job)));
        router_->dispatch(Sender{peer, Role::Engine, agent, env.request_id(), link}, env);
      },
      [this](std::uint64_t link) {
        // Its engine goes on through its agent (EngineReady there), or is gone with its job.
        for (auto& [id, e] : engines_)
          if (e.link == link && e.direct) {
            e.direct.reset();
            if (e.up) {
              e.up = false;
              chooser_.close_engine(id);
            }
          }
      });
  core_.events.final.subscribe([this](Job& job) { job_ended(job); });
  core_.events.attempt_ended.subscribe([this](Job& job) { job_ended(job); });
  core_.events.agent_away.subscribe([this](Agent& agent) {
    // Its engines keep running; they take nothing new until they are back (EngineReady), unless
    // they talk to the hub directly.
    for (auto& [id, e] : engines_)
      if (e.agent == agent.id && e.up && !(e.direct && !e.direct->closed())) {
        e.up = false;
        chooser_.close_engine(id);
      }
  });
  core_.events.client_closed.subscribe([this](const std::shared_ptr<Peer>& peer) {
    pushes_.erase(peer.get());
    std::vector<std::uint64_t> cut;
    for (const auto& [task, up] : uploaders_)
      if (auto p = up.lock(); !p || p == peer)
        cut.push_back(task);
    for (auto id : cut) {
      uploaders_.erase(id);
      if (Task* t = find(id); t && t->state == TaskState::Uploading)
        finish(*t, TaskState::Failed, nullptr, "ArgumentIncomplete",
               fmt::format("its client left after sending {} of its argument's {} bytes",
                           t->received, t->payload_size));
    }
  });
}

void Tasks::register_with(Router& router) {
  router_ = &router;
  router.add(pb::Envelope::kEngineReady, Role::Engine, [this](const Sender& from, pb::Envelope& env) {
    handle_ready(from, *env.mutable_engine_ready());
  });
  router.add(pb::Envelope::kTaskDone, Role::Engine, [this](const Sender& from, pb::Envelope& env) {
    handle_done(from, *env.mutable_task_done());
  });
  router.add(pb::Envelope::kTaskOutput, Role::Engine, [this](const Sender& from, pb::Envelope& env) {
    handle_output(from, *env.mutable_task_output());
  });
  router.add(pb::Envelope::kTaskSubmit, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_submit(from, *env.mutable_task_submit());
  });
  router.add(pb::Envelope::kTaskWatch, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_watch(from, env.task_watch());
  });
  router.add(pb::Envelope::kTaskList, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_list(from, env.task_list());
  });
  router.add(pb::Envelope::kTaskForget, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_forget(from, env.task_forget());
  });
  router.add(pb::Envelope::kEngineList, Role::Client, [this](const Sender& from, pb::Envelope& env) {
    handle_engines(from, env.engine_list());
  });
  for (Role role : {Role::Client, Role::Engine})
    router.add(pb::Envelope::kValueChunk, role, [this](const Sender& from, pb::Envelope& env) {
      handle_chunk(from, *env.mutable_value_chunk());
    });
  router.add(pb::Envelope::kValueChunkAck, Role::Engine,
             [this](const Sender& from, pb::Envelope& env) {
               handle_chunk_ack(from, env.value_chunk_ack());
             });
}

std::size_t Tasks::engines_up() const {
  return static_cast<std::size_t>(
      std::count_if(engines_.begin(), engines_.end(), [](const auto& e) { return e.second.up; }));
}

// -------------------------------------------------------------------------------------------
// Loading

void Tasks::load(store::LoadedState& state) {
  next_task_id_ = std::max<std::uint64_t>(1, state.next_task_id);
  reserved_task_ids_ = next_task_id_;
  next_engine_id_ = std::max<std::uint64_t>(1, state.next_engine_id);
  // Engines of jobs that still run as that attempt may come back (their agents reconnect).
  for (const auto& row : state.engines) {
    next_engine_id_ = std::max(next_engine_id_, row.id + 1);
    const Job* job = jobs_.find(JobId(row.job_id));
    if (!job || job->attempt != row.attempt ||
        (job->state != JobState::Assigned && job->state != JobState::Running))
      continue;
    Engine e;
    e.id = row.id;
    e.job = job->id;
    e.attempt = row.attempt;
    e.rank = row.rank;
    e.size = row.size;
    e.agent = job->agent;
    e.started_ms = job->start_ms;
    pb::JobSpec spec;
    spec.ParseFromString(core_.state.spec_of(*job).bytes);
    e.label = spec.label();
    engines_of_job_[e.job].push_back(e.id);
    engines_.emplace(e.id, std::move(e));
  }
  // Only tasks that have not ended are loaded; the ended ones are read back when asked for.
  oldest_end_ms_ = state.oldest_task_end_ms;
  std::vector<std::uint64_t> orphans;
  for (auto& row : state.tasks) {
    next_task_id_ = std::max(next_task_id_, row.id + 1);
    auto& task = tasks_.emplace(row.id, from_row(std::move(row))).first->second;
    if (task.state == TaskState::Uploading) {
      finish(task, TaskState::Failed, nullptr, "ArgumentIncomplete",
             "the hub restarted while its client was sending its argument: submit it again");
    } else if (task.state == TaskState::Queued) {
      enqueue(task);
    } else if (auto it = engines_.find(task.engine); it != engines_.end()) {
      it->second.running.insert(task.id); // waits for its engine to say whether it still has it
      if (task.timeout_ms > 0)
        deadlines_.emplace(task.start_ms + task.timeout_ms, task.id);
    } else {
      orphans.push_back(task.id);
    }
  }
  for (auto& [id, e] : engines_)
    chooser_.add_engine(id, e.label, core_.config.engine_prefetch,
                        static_cast<std::uint32_t>(e.running.size()));
  for (auto& [id, e] : engines_)
    chooser_.close_engine(id); // until it says it is there
  for (auto id : orphans) {
    Task& t = tasks_.at(id);
    requeue(t, true, fmt::format("its engine {} ended while the hub was down", t.engine));
  }
  // Engines that may come back may hold tasks stored as queued (sent just before the old hub
  // died): nothing is handed out until they are back or gone, or their agents' time is up.
  for (const auto& [id, e] : engines_)
    awaited_.insert(id);
  if (!awaited_.empty())
    hold_dispatch_until_ =
        core_.clock.monotonic_ms() + core_.config.agent_reconnect_window_ms + kRejoinMarginMs;
}

bool Tasks::holding() {
  if (hold_dispatch_until_ == 0)
    return false;
  if (awaited_.empty() || core_.clock.monotonic_ms() >= hold_dispatch_until_) {
    if (!awaited_.empty())
      log::warn("{} engines did not come back after the restart; handing out tasks anyway",
                awaited_.size());
    hold_dispatch_until_ = 0;
    awaited_.clear();
    return false;
  }
  return true;
}

// -------------------------------------------------------------------------------------------
// Engines

void Tasks::send_to(const Engine& e, pb::Envelope& env) {
  if (e.direct) {
    env.clear_route();
    e.direct->send(env);
    return;
  }
  Agent* agent = core_.state.find_agent(e.agent);
  if (!agent || !agent->peer || e.link == 0)
    return; // it resends what it holds when its agent is back (EngineReady)
  env.clear_route();
  env.add_route(e.link);
  agent->peer->send(env);
}

void Tasks::handle_ready(const Sender& from, pb::EngineReady& r) {
  Agent* agent = from.agent;
  auto refuse = [&](ErrorCode code, std::string message) {
    log::warn("engine of job {} on {} refused: {}", from.via, agent->node, message);
    Router::refuse(from, make_error(code, std::move(message)));
  };
  // The agent wrote job_id and attempt: those of the job whose key the engine proved.
  Job* job = jobs_.find(JobId(r.job_id()));
  // (An MPI engine job's ranks on its other nodes come through the agents there.)
  if (!job || (job->agent != agent->id && !agent->held.contains(job->id)) ||
      job->attempt != r.attempt() ||
      (job->state != JobState::Assigned && job->state != JobState::Running))
    return refuse(ErrorCode::FailedPrecondition,
                  fmt::format("job {} attempt {} is not running on node {}: this engine is "
                              "not wanted any more",
                              r.job_id(), r.attempt(), agent->node));
  if (!core_.state.spec_of(*job).engine)
    return refuse(ErrorCode::FailedPrecondition,
                  fmt::format("job {} is a command, not an engine: submit engines with `sortie "
                              "engine start` (kind \"engine\")",
                              r.job_id()));
  std::uint32_t size = std::max<std::uint32_t>(1, r.size());
  if (size > kMaxRanks || r.rank() >= size)
    return refuse(ErrorCode::InvalidArgument,
                  fmt::format("engine rank {} of {} is not a valid rank", r.rank(), size));

  Engine* e = nullptr;
  for (auto id : engines_of_job_[job->id]) {
    Engine& cand = engines_.at(id);
    if (cand.attempt == r.attempt() && cand.rank == r.rank())
      e = &cand;
  }
  std::int64_t now = core_.clock.now_ms();
  auto& batch = core_.durable.batch();
  if (!e) {
    std::uint64_t id = next_engine_id_++;
    Engine fresh;
    fresh.id = id;
    fresh.job = job->id;
    fresh.attempt = r.attempt();
    fresh.rank = r.rank();
    fresh.size = size;
    fresh.started_ms = now;
    pb::JobSpec spec;
    spec.ParseFromString(core_.state.spec_of(*job).bytes);
    fresh.label = spec.label();
    engines_of_job_[job->id].push_back(id);
    e = &engines_.emplace(id, std::move(fresh)).first->second;
    batch.engines.push_back({id, job->id.value, r.attempt(), r.rank(), size});
    batch.next_engine_id = next_engine_id_;
    log::info("engine {} up: job {} rank {}/{} on {} (pid {})", id, job->id, r.rank(), size,
              agent->node, r.pid());
  }
  if (e->link != 0)
    links_.erase({e->agent.value, e->link});
  e->agent = agent->id;
  e->link = from.via;
  // A direct link's peer is the engine's own (05-tasks.md §5.9); through its agent, none.
  e->direct = from.peer != agent->peer ? from.peer : nullptr;
  links_[{agent->id.value, from.via}] = e->id;
  e->node = agent->node;
  e->pid = r.pid();
  e->kind = r.kind();

  // What it holds against what the hub sent it: a task sent but never received (its agent was
  // away) is queued again; one it holds that the hub no longer gives it is dropped there.
  std::unordered_set<std::uint64_t> holds(r.running().begin(), r.running().end());
  for (const auto& res : r.unacked())
    holds.insert(res.task_id());
  std::vector<std::uint64_t> missing;
  for (auto id : e->running)
    if (!holds.contains(id))
      missing.push_back(id);
  for (auto id : missing) {
    Task* t = find(id);
    if (t && t->state == TaskState::Running && t->engine == e->id) {
      requeue(*t, false, fmt::format("engine {} never received it", e->id));
    } else { // timed out meanwhile
      engine_freed(*e, id);
    }
  }
  pb::Envelope welcome;
  auto* w = welcome.mutable_engine_welcome();
  for (auto id : r.running()) {
    if (e->running.contains(id))
      continue;
    Task* t = find(id);
    if (t && t->state == TaskState::Queued && (t->target == 0 || t->target == e->id)) {
      claim(*t, *e); // sent to it by a hub that died before storing so
      continue;
    }
    w->add_drop(id);
  }
  std::vector<std::uint64_t> acked, finished;
  for (auto& res : *r.mutable_unacked()) {
    acked.push_back(res.task_id());
    if (accept_result(*e, res))
      finished.push_back(res.task_id());
  }
  w->set_engine_id(e->id);
  w->set_prefetch(core_.config.engine_prefetch);
  w->set_label(e->label);
  e->up = true;
  awaited_.erase(e->id);
  chooser_.add_engine(e->id, e->label, core_.config.engine_prefetch,
                      static_cast<std::uint32_t>(e->running.size()));
  if (e->stuck > 0)
    chooser_.close_engine(e->id); // busy with timed-out tasks
  std::uint64_t engine_id = e->id;
  welcome.set_request_id(from.rid);
  core_.durable.after_commit([this, engine_id, welcome = std::move(welcome),
                              acked = std::move(acked), finished = std::move(finished)](
                                 const Result<void>& committed) mutable {
    auto it = engines_.find(engine_id);
    if (!committed.ok() || it == engines_.end())
      return;
    send_to(it->second, welcome);
    if (!acked.empty()) {
      pb::Envelope ack;
      for (auto id : acked)
        ack.mutable_task_done_ack()->add_task_ids(id);
      send_to(it->second, ack);
    }
    notify(finished);
    request_dispatch();
  });
}

void Tasks::claim(Task& t, Engine& e) {
  unqueue(t);
  shed(t); // the engine has it
  t.state = TaskState::Running;
  t.engine = e.id;
  ++t.attempts;
  t.start_ms = core_.clock.now_ms();
  if (e.running.empty())
    e.pace.started(now_us());
  e.running.insert(t.id);
  write(t, store::TaskRow::Write::Update);
}

bool Tasks::accept_result(Engine& e, pb::TaskResult& r) {
  Task* t = find(r.task_id());
  if (t && t->state == TaskState::Queued && (t->target == 0 || t->target == e.id))
    claim(*t, e);
  if (!t || t->state != TaskState::Running || t->engine != e.id) {
    // Timed out, forgotten, or a resend of one already finished: just acked (and the engine,
    // busy with it until now, is free).
    engine_freed(e, r.task_id());
    return false;
  }
  e.running.erase(t->id);
  ++e.tasks_done;
  chooser_.finished(e.id);
  downloads_.erase(t->id);
  TaskState to = r.state() == pb::TaskResult::DONE ? TaskState::Done : TaskState::Failed;
  if (r.payload_size() > 0) { // its pieces came first (handle_chunk)
    if (t->received != r.payload_size()) {
      finish(*t, TaskState::Failed, nullptr, "ValueIncomplete",
             fmt::format("engine {} sent {} of its result's {} bytes", e.id, t->received,
                         r.payload_size()));
      return true;
    }
    t->result_size = r.payload_size();
  }
  finish(*t, to, &r);
  return true;
}

void Tasks::engine_freed(Engine& e, std::uint64_t task) {
  if (!e.running.erase(task))
    return;
  chooser_.finished(e.id);
  if (e.stuck > 0 && --e.stuck == 0 && e.up) // its timed-out tasks are done: it takes tasks again
    chooser_.add_engine(e.id, e.label, core_.config.engine_prefetch,
                        static_cast<std::uint32_t>(e.running.size()));
}

Engine* Tasks::engine_of(const Sender& from) {
  auto link = links_.find({from.agent->id.value, from.via});
  auto it = link == links_.end() ? engines_.end() : engines_.find(link->second);
  return it == engines_.end() ? nullptr : &it->second;
}

void Tasks::handle_output(const Sender& from, pb::TaskOutput& out) {
  Engine* e = engine_of(from);
  if (!e) // sent before its EngineReady reached this hub (a restart): the result has it all
    return;
  Task* t = find(out.task_id());
  if (!t || t->state != TaskState::Running || t->engine != e->id || out.data().empty())
    return; // ended meanwhile (or never ran there): its result has the whole output
  if (out.data().size() > kMaxOutputPiece)
    return Router::refuse(from, make_error(ErrorCode::InvalidArgument,
                                           fmt::format("protocol error: a piece of task output "
                                                       "of {} bytes: at most {}",
                                                       out.data().size(), kMaxOutputPiece)));
  Live& live = live_[t->id];
  if (out.offset() != live.end) // a gap on the engine's side: what it sends is what counts
    live.tail.clear();
  live.end = out.offset() + out.data().size();
  live.tail += out.data();
  if (live.tail.size() > kLiveTail)
    live.tail.erase(0, live.tail.size() - kLiveTail);
  auto f = followers_.find(t->id);
  if (f == followers_.end())
    return;
  std::erase_if(f->second, [&](const std::weak_ptr<Peer>& w) {
    auto peer = w.lock();
    if (!peer || peer->closed())
      return true;
    send_output(*peer, t->id, out.offset(), out.data());
    return false;
  });
  if (f->second.empty())
    followers_.erase(f);
}

void Tasks::send_output(Peer& peer, std::uint64_t task, std::uint64_t offset,
                        std::string_view data) {
  if (peer.queued_bytes() >= kPushQueueLimit)
    return; // behind: it sees a gap in the offsets, and the whole output with the result
  pb::Envelope env;
  auto* o = env.mutable_task_output();
  o->set_task_id(task);
  o->set_offset(offset);
  o->set_data(data.data(), data.size());
  peer.send(env);
}

void Tasks::handle_done(const Sender& from, pb::TaskDone& done) {
  Engine* found = engine_of(from);
  if (!found) {
    // Sent before its EngineReady reached this hub (the hub restarted, or its link moved): the
    // engine keeps them unacknowledged and gives them again in that EngineReady.
    log::debug("results from an engine before its EngineReady: dropped until it sends them again");
    return;
  }
  Engine& e = *found;
  std::vector<std::uint64_t> acked, finished;
  for (auto& r : *done.mutable_results()) {
    const Task* known = find(r.task_id());
    if (!known || !known->transient) // a transient task's result is not stored, nor acknowledged
      acked.push_back(r.task_id());
    if (accept_result(e, r))
      if (const Task* t = find(r.task_id()); t && t->stored)
        finished.push_back(r.task_id()); // (the others go once their submission is committed)
  }
  e.pace.ended(now_us(), static_cast<std::size_t>(done.results_size()), !e.running.empty());
  // Results go to their watchers now (with the others that came this turn), while they are being
  // stored: the engine keeps each until it is acknowledged below, after the commit, and gives
  // it again to a hub that restarted meanwhile (05-tasks.md §5.1).
  notify_soon(finished);
  if (!acked.empty())
    core_.durable.after_commit_last([this, engine_id = e.id,
                                acked = std::move(acked)](const Result<void>& committed) {
      if (!committed.ok())
        return;
      if (auto it2 = engines_.find(engine_id); it2 != engines_.end()) {
        pb::Envelope ack;
        auto* a = ack.mutable_task_done_ack();
        for (auto id : acked)
          a->add_task_ids(id);
        send_to(it2->second, ack);
      }
    }, When::Soon);
  request_dispatch();
}

void Tasks::job_ended(const Job& job) {
  core_.direct.ended(job.id);
  auto it = engines_of_job_.find(job.id);
  if (it == engines_of_job_.end())
    return;
  std::vector<std::uint64_t> ids = std::move(it->second);
  engines_of_job_.erase(it);
  std::string why = job.reason.empty()
                        ? fmt::format("its job {} ended ({})", job.id, job_state_name(job.state))
                        : fmt::format("its job {} ended: {}", job.id, job.reason);
  for (auto id : ids)
    engine_gone(id, why);
}

void Tasks::engine_gone(std::uint64_t id, const std::string& why) {
  auto it = engines_.find(id);
  if (it == engines_.end())
    return;
  Engine e = std::move(it->second);
  engines_.erase(it);
  links_.erase({e.agent.value, e.link});
  log::info("engine {} gone: {}", id, why);
  awaited_.erase(id);
  for (auto task : chooser_.remove_engine(id))
    if (Task* t = find(task))
      finish(*t, TaskState::Lost, nullptr, "EngineLost",
             fmt::format("engine {} is gone ({}) and the task was sent to it alone", id, why));
  for (auto task : e.running) {
    Task* t = find(task);
    if (!t || t->state != TaskState::Running)
      continue;
    if (t->target == 0 && t->attempts <= t->retries) {
      requeue(*t, true, fmt::format("engine {} died while running it", id));
    } else {
      finish(*t, TaskState::Lost, nullptr, "EngineLost",
             fmt::format("engine {} (job {} on {}) died while running it: {}", id, e.job, e.node,
                         why));
    }
  }
}

// -------------------------------------------------------------------------------------------
// Dispatch

void Tasks::request_dispatch() {
  if (dispatch_posted_)
    return;
  dispatch_posted_ = true;
  core_.post([this] {
    dispatch_posted_ = false;
    dispatch();
  });
}

void Tasks::dispatch() {
  if (core_.state.stopping || holding())
    return;
  std::int64_t pace_now = now_us();
  for (const auto& [id, e] : engines_)
    if (e.up)
      chooser_.set_prefetch(id, e.pace.prefetch(pace_now, core_.config.engine_prefetch,
                                                core_.config.engine_prefetch_max));
  auto picks = chooser_.choose();
  if (picks.empty())
    return;
  std::int64_t now = core_.clock.now_ms();
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> by_engine;
  for (const auto& p : picks) {
    Task* t = find(p.task);
    auto e = engines_.find(p.engine);
    if (!t || t->state != TaskState::Queued || e == engines_.end()) {
      chooser_.finished(p.engine);
      continue;
    }
    unqueue(*t, /*chosen=*/true);
    t->state = TaskState::Running;
    t->engine = p.engine;
    ++t->attempts;
    t->start_ms = now;
    t->received = 0;
    if (e->second.running.empty())
      e->second.pace.started(pace_now);
    e->second.running.insert(t->id);
    if (t->payload_size > 0)
      downloads_[t->id] = Download{p.engine, t->payload_size, 0, 0};
    if (t->timeout_ms > 0)
      deadlines_.emplace(now + t->timeout_ms, t->id);
    write(*t, store::TaskRow::Write::Update);
    by_engine[p.engine].push_back(t->id);
  }
  // Sent at once, with "running there" in this turn's batch: a hub that dies before that commit
  // finds the task queued, and hears from the engine that it holds it (EngineReady) before it
  // gives queued tasks to anyone (hold_dispatch_until_).
  for (const auto& [engine, ids] : by_engine) {
    auto e = engines_.find(engine);
    if (e == engines_.end())
      continue;
    pb::Envelope env;
    std::size_t bytes = 0;
    for (auto id : ids) {
      Task& t = *find(id);
      if (t.in_store > 0) { // its argument is read back first
        to_read_.push_back({id, t.attempts});
        continue;
      }
      std::size_t size = t.payload ? t.payload->size() : 0;
      if (bytes > 0 && bytes + size > kFrameBudget) { // frames stay below the limit
        send_to(e->second, env);
        env.Clear();
        bytes = 0;
      }
      add_run(env, t, t.payload.get());
      bytes += size + t.handler.size() + 32;
      shed(t); // once stored, the store has it should it run again
    }
    if (env.has_task_run())
      send_to(e->second, env);
    for (auto id : ids) // large arguments follow their TaskRun
      if (downloads_.contains(id))
        pump_download(id);
  }
  read_arguments();
}

void Tasks::add_run(pb::Envelope& env, const Task& t, const std::string* payload) {
  auto* task = env.mutable_task_run()->add_tasks();
  task->set_task_id(t.id);
  task->set_handler(t.handler);
  if (payload)
    task->set_payload(*payload);
  task->set_payload_size(t.payload_size);
  task->set_timeout_ms(t.timeout_ms);
  task->set_transient(t.transient);
}

void Tasks::read_arguments() {
  if (reading_arguments_ || to_read_.empty())
    return;
  store::TaskQuery q;
  std::unordered_map<std::uint64_t, std::uint32_t> attempts;
  while (!to_read_.empty() && q.ids.size() < kFetchIds) {
    q.ids.push_back(to_read_.front().task);
    attempts[to_read_.front().task] = to_read_.front().attempts;
    to_read_.pop_front();
  }
  q.max_bytes = kFrameBudget;
  reading_arguments_ = true;
  core_.durable.store().read_tasks(std::move(q), [this, alive = core_.alive,
                                                  attempts = std::move(attempts)](
                                                     Result<store::TaskRows> rows) mutable {
    if (!*alive)
      return;
    reading_arguments_ = false;
    // Still given to that engine as that attempt (not timed out, forgotten or requeued since).
    auto current = [&](std::uint64_t id) -> Task* {
      Task* t = find(id);
      auto a = attempts.find(id);
      return t && a != attempts.end() && t->state == TaskState::Running &&
                     t->attempts == a->second && t->in_store > 0
                 ? t
                 : nullptr;
    };
    if (!rows.ok()) {
      for (const auto& [id, n] : attempts)
        if (Task* t = current(id))
          finish(*t, TaskState::Failed, nullptr, "StoreError",
                 fmt::format("the hub could not read its argument back from its store: {}",
                             rows.error().message));
      return read_arguments();
    }
    for (auto it = rows->unread.rbegin(); it != rows->unread.rend(); ++it) { // read next
      to_read_.push_front({*it, attempts[*it]});
      attempts.erase(*it);
    }
    std::unordered_map<std::uint64_t, pb::Envelope> by_engine;
    for (const auto& row : rows->rows) {
      if (Task* t = current(row.id))
        add_run(by_engine[t->engine], *t, row.payload.get());
      attempts.erase(row.id);
    }
    for (const auto& [id, n] : attempts) // not in the store: it cannot run
      if (Task* t = current(id))
        finish(*t, TaskState::Failed, nullptr, "StoreError",
               "its argument is missing from the hub's store");
    for (auto& [engine, env] : by_engine)
      if (auto e = engines_.find(engine); e != engines_.end())
        send_to(e->second, env);
    read_arguments();
  });
}

// -------------------------------------------------------------------------------------------
// Periodic work

void Tasks::tick() {
  std::int64_t now = core_.clock.now_ms();
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    auto id = deadlines_.top().second;
    deadlines_.pop();
    Task* t = find(id);
    if (!t || t->state != TaskState::Running || t->timeout_ms <= 0 ||
        t->start_ms + t->timeout_ms > now)
      continue;
    // Its engine is still busy with it (not interrupted): it stays counted there until its
    // result comes (and is dropped), so no task waits behind it.
    std::uint64_t engine = t->engine;
    if (auto e = engines_.find(engine); e != engines_.end() && e->second.stuck++ == 0)
      chooser_.close_engine(engine);
    finish(*t, TaskState::Failed, nullptr, "TaskTimeout",
           fmt::format("ran longer than its timeout of {} on engine {}",
                       format_duration_ms(t->timeout_ms), engine));
  }
  if (hold_dispatch_until_ != 0 && !holding())
    request_dispatch();
  if (core_.config.task_retention_ms > 0)
    sweep(now);
}

} // namespace sortie::hub
