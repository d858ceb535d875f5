// SPDX-License-Identifier: Apache-2.0
// Engines and tasks in the hub: registration through agents, dispatch after commit, results,
// losses, timeouts, retention, and pushes of results to watching clients.
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

constexpr std::size_t kMaxCalls = 100'000;       // per TaskSubmit
constexpr std::size_t kPushQueueLimit = 8u << 20; // bytes queued on a client before pushes wait
constexpr std::size_t kFrameBudget = 16u << 20;  // bytes of results per TaskResults frame
constexpr std::uint32_t kMaxRanks = 4096;
// Live output: the tail kept per running task for late followers, and the largest piece taken.
constexpr std::size_t kLiveTail = 64u << 10;
constexpr std::size_t kMaxOutputPiece = 1u << 20;
// Large values travel in pieces of this size, at most kWindow bytes unacknowledged.
constexpr std::size_t kChunk = 1u << 20;
constexpr std::uint64_t kWindow = 4u << 20;
constexpr std::uint64_t kMaxValue = 4ull << 30; // 4 GiB
// After a restart, engines have their agents' reconnect window and this much more to come back.
constexpr std::int64_t kRejoinMarginMs = 5'000;

/// The engines' pace (PrefetchPace) is measured in microseconds of this process's steady clock,
/// not the hub's Clock (milliseconds, which tests may drive): a no-op task takes ~50 us.
std::int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

pb::TaskResult::State wire_state(TaskState s) {
  switch (s) {
  case TaskState::Done:
    return pb::TaskResult::DONE;
  case TaskState::Failed:
    return pb::TaskResult::FAILED;
  case TaskState::Lost:
    return pb::TaskResult::LOST;
  default:
    return pb::TaskResult::STATE_UNSPECIFIED;
  }
}

std::shared_ptr<const std::string> share(std::string* s) {
  if (s->empty())
    return nullptr;
  return std::make_shared<const std::string>(std::move(*s));
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
  std::vector<std::uint64_t> orphans;
  for (auto& row : state.tasks) {
    next_task_id_ = std::max(next_task_id_, row.id + 1);
    Task t;
    t.id = row.id;
    t.stored = true;
    t.state = static_cast<TaskState>(row.state);
    t.handler = std::move(row.handler);
    t.label = std::move(row.label);
    t.payload = std::move(row.payload);
    t.target = row.target_engine;
    t.engine = row.engine_id;
    t.retries = row.retries;
    t.attempts = row.attempts;
    t.timeout_ms = row.timeout_ms;
    t.priority = row.priority;
    t.submit_ms = row.submit_ms;
    t.start_ms = row.start_ms;
    t.end_ms = row.end_ms;
    t.result = std::move(row.result);
    t.output = std::move(row.output);
    t.error_type = std::move(row.error_type);
    t.error_message = std::move(row.error_message);
    t.traceback = std::move(row.traceback);
    t.payload_size = row.payload_size;
    t.result_size = row.result_size;
    auto& task = tasks_.emplace(t.id, std::move(t)).first->second;
    if (task.state == TaskState::Uploading) {
      finish(task, TaskState::Failed, nullptr, "ArgumentIncomplete",
             "the hub restarted while its client was sending its argument: submit it again");
    } else if (task.ended()) {
      ended_.emplace_back(task.end_ms, task.id);
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
  std::sort(ended_.begin(), ended_.end());
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
  chooser_.dequeue(t.id);
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
    core_.durable.after_commit([this, engine_id = e.id,
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
// Tasks

Task* Tasks::find(std::uint64_t id) {
  auto it = tasks_.find(id);
  return it == tasks_.end() ? nullptr : &it->second;
}

void Tasks::write(const Task& t, store::TaskRow::Write how, When when) {
  if (t.transient)
    return;
  store::TaskRow row;
  row.write = how;
  row.id = t.id;
  row.state = static_cast<int>(t.state);
  row.engine_id = t.engine;
  row.attempts = t.attempts;
  row.start_ms = t.start_ms;
  if (how == store::TaskRow::Write::Insert) {
    row.handler = t.handler;
    row.label = t.label;
    row.payload = t.payload;
    row.target_engine = t.target;
    row.retries = t.retries;
    row.timeout_ms = t.timeout_ms;
    row.priority = t.priority;
    row.submit_ms = t.submit_ms;
    row.payload_size = t.payload_size;
  } else if (how == store::TaskRow::Write::Finish) {
    row.result_size = t.result_size;
    row.end_ms = t.end_ms;
    row.result = t.result;
    row.output = t.output;
    row.error_type = t.error_type;
    row.error_message = t.error_message;
    row.traceback = t.traceback;
  }
  core_.durable.batch(when).tasks.push_back(std::move(row));
}

void Tasks::enqueue(Task& t) { chooser_.enqueue(t.id, t.label, t.target, t.priority); }

void Tasks::requeue(Task& t, bool charge, const std::string& why) {
  if (auto it = engines_.find(t.engine); it != engines_.end() && it->second.running.erase(t.id))
    chooser_.finished(t.engine);
  if (!charge && t.attempts > 0)
    --t.attempts; // it never ran there
  log::debug("task {} queued again: {}", t.id, why);
  live_.erase(t.id); // followers see the next run's output from offset 0
  downloads_.erase(t.id);
  if (t.received > 0 && t.result_size == 0)
    core_.durable.batch().values_removed.emplace_back(t.id, 1); // a partial result of that run
  t.received = 0;
  t.state = TaskState::Queued;
  t.engine = 0;
  t.start_ms = 0;
  write(t, store::TaskRow::Write::Update);
  enqueue(t);
  request_dispatch();
}

void Tasks::finish(Task& t, TaskState to, pb::TaskResult* r, std::string error_type,
                   std::string message) {
  if (t.state == TaskState::Queued)
    chooser_.dequeue(t.id);
  if (t.state == TaskState::Running && to != TaskState::Done && t.result_size == 0 && t.received)
    core_.durable.batch().values_removed.emplace_back(t.id, 1); // a partial large result
  t.state = to;
  t.end_ms = core_.clock.now_ms();
  t.payload.reset();
  live_.erase(t.id);
  followers_.erase(t.id); // they are watchers too: the result brings the whole output
  if (r) {
    t.result = share(r->mutable_payload());
    t.output = share(r->mutable_stdout());
    t.error_type = std::move(*r->mutable_error_type());
    t.error_message = std::move(*r->mutable_error_message());
    t.traceback = std::move(*r->mutable_traceback());
    if (r->start_ms() > 0)
      t.start_ms = r->start_ms();
  } else {
    t.error_type = std::move(error_type);
    t.error_message = std::move(message);
  }
  // An engine's result need not be durable this turn: its engine keeps it until the commit is
  // acknowledged (handle_done), so it may join the next submission's commit.
  write(t, store::TaskRow::Write::Finish, r ? When::Soon : When::ThisTurn);
  if (t.payload_size > 0) { // its argument's file is not needed any more
    core_.durable.batch().values_removed.emplace_back(t.id, 0);
    downloads_.erase(t.id);
    uploaders_.erase(t.id);
  }
  ended_.emplace_back(t.end_ms, t.id);
  if (!r) { // the hub ended it: tell its watchers once that is durable
    core_.durable.after_commit([this, id = t.id](const Result<void>& committed) {
      if (committed.ok())
        notify({id});
    });
  }
}

void Tasks::handle_submit(const Sender& from, pb::TaskSubmit& req) {
  auto refuse = [&](ErrorCode code, std::string msg, std::string context = {}) {
    reply_error(from.peer, from.rid, make_error(code, std::move(msg), std::move(context)));
  };
  if (core_.state.stopping)
    return refuse(ErrorCode::Unavailable, "the hub is stopping: submit again once it is back");
  if (req.calls_size() == 0)
    return refuse(ErrorCode::InvalidArgument, "a task submission needs at least one call");
  if (static_cast<std::size_t>(req.calls_size()) > kMaxCalls)
    return refuse(ErrorCode::InvalidArgument,
                  fmt::format("{} calls in one submission: at most {} (split it)",
                              req.calls_size(), kMaxCalls));
  for (int i = 0; i < req.calls_size(); ++i) {
    const auto& c = req.calls(i);
    std::string ctx = fmt::format("call {} of the submission", i + 1);
    if (c.handler().size() > 256)
      return refuse(ErrorCode::InvalidArgument, "a handler name is at most 256 bytes", ctx);
    if (!c.label().empty() && !valid_label(c.label()))
      return refuse(ErrorCode::InvalidArgument,
                    fmt::format("invalid label '{}': letters, digits, '-', '_' and '.'",
                                c.label()),
                    ctx);
    if (c.retries() > 1000)
      return refuse(ErrorCode::InvalidArgument, "at most 1000 retries", ctx);
    if (c.timeout_ms() < 0)
      return refuse(ErrorCode::InvalidArgument, "a timeout cannot be negative", ctx);
    if (c.transient() && c.payload_size() > 0)
      return refuse(ErrorCode::InvalidArgument,
                    "a transient call cannot have a large argument (payload_size): the hub "
                    "stores large arguments; submit it as a stored task",
                    ctx);
    if (c.payload_size() > kMaxValue || (c.payload_size() > 0 && !c.payload().empty()))
      return refuse(ErrorCode::InvalidArgument,
                    fmt::format("an argument of {} bytes: at most {} bytes, sent in pieces after "
                                "the call (payload_size) and not inside it",
                                c.payload_size(), kMaxValue),
                    ctx);
    if (c.engine_id() != 0 && !engines_.contains(c.engine_id())) {
      std::vector<std::uint64_t> live;
      for (const auto& [id, e] : engines_)
        live.push_back(id);
      std::sort(live.begin(), live.end());
      return refuse(ErrorCode::NotFound,
                    fmt::format("engine {} does not exist; engines now: {}", c.engine_id(),
                                live.empty() ? std::string("none (start some with `sortie "
                                                           "engine start`)")
                                             : fmt::format("{}", fmt::join(live, ", "))),
                    ctx);
    }
  }
  std::int64_t now = core_.clock.now_ms();
  std::uint64_t first = next_task_id_;
  bool all_transient = std::all_of(req.calls().begin(), req.calls().end(),
                                   [](const pb::TaskCall& c) { return c.transient(); });
  for (auto& c : *req.mutable_calls()) {
    Task t;
    t.id = next_task_id_++;
    t.transient = c.transient();
    // Nothing to wait for: its result may be pushed at once (beside stored calls, once they are).
    t.stored = all_transient;
    t.handler = std::move(*c.mutable_handler());
    t.label = std::move(*c.mutable_label());
    t.payload = std::make_shared<const std::string>(std::move(*c.mutable_payload()));
    if (c.payload_size() > 0) { // its pieces follow (handle_chunk)
      t.payload_size = c.payload_size();
      t.state = TaskState::Uploading;
    }
    t.target = c.engine_id();
    t.retries = c.retries();
    t.timeout_ms = c.timeout_ms();
    t.priority = c.priority();
    t.submit_ms = now;
    auto& task = tasks_.emplace(t.id, std::move(t)).first->second;
    write(task, store::TaskRow::Write::Insert);
  }
  // Transient ids are not stored one by one: a block of them is reserved at a time, so that a
  // restarted hub never gives an id again that an engine may still hold a result for.
  if (next_task_id_ > reserved_task_ids_ || !all_transient) {
    if (next_task_id_ > reserved_task_ids_)
      reserved_task_ids_ = next_task_id_ + kTransientIdBlock;
    core_.durable.batch().next_task_id = std::max(next_task_id_, reserved_task_ids_);
  }
  // Queued (and sent) at once: the commit and the first run overlap. A hub that dies before the
  // commit acknowledged nothing; an engine that ran such a task reports a task the next hub does
  // not know, which is dropped.
  for (std::uint64_t id = first; id < next_task_id_; ++id) {
    Task& t = tasks_.at(id);
    if (t.state == TaskState::Uploading)
      uploaders_[id] = from.peer;
    else
      enqueue(t);
  }
  request_dispatch();
  auto count = static_cast<std::uint32_t>(req.calls_size());
  bool watch = req.watch();
  if (all_transient) { // acknowledged now: there is nothing to store
    pb::Envelope env;
    env.mutable_task_submit_reply()->set_first_id(first);
    env.mutable_task_submit_reply()->set_count(count);
    reply(from.peer, env, from.rid);
    for (std::uint64_t id = first; id < first + count; ++id)
      if (watch)
        watchers_[id].push_back(from.peer);
    return;
  }
  core_.durable.after_commit([this, peer = from.peer, rid = from.rid, first, count,
                              watch](const Result<void>& committed) {
    if (!committed.ok()) {
      for (std::uint64_t id = first; id < first + count; ++id)
        drop_unstored(id);
      reply_error(peer, rid,
                  make_error(ErrorCode::Io, fmt::format("the hub could not store the tasks: {}",
                                                        committed.error().message)));
      return;
    }
    pb::Envelope env;
    env.mutable_task_submit_reply()->set_first_id(first);
    env.mutable_task_submit_reply()->set_count(count);
    reply(peer, env, rid);
    // Their ids are durable: results may go to watchers from now on (before any of theirs).
    std::vector<std::uint64_t> ended;
    for (std::uint64_t id = first; id < first + count; ++id) {
      Task* t = find(id);
      if (!t)
        continue;
      t->stored = true;
      if (watch)
        watchers_[id].push_back(peer);
      if (t->ended())
        ended.push_back(id);
    }
    notify(ended);
  });
}

void Tasks::drop_unstored(std::uint64_t id) {
  Task* t = find(id);
  if (!t)
    return;
  uploaders_.erase(id);
  downloads_.erase(id);
  if (t->state == TaskState::Queued) {
    chooser_.dequeue(id);
  } else if (t->state == TaskState::Running) {
    if (auto e = engines_.find(t->engine); e != engines_.end() && e->second.running.erase(id))
      chooser_.finished(t->engine);
  }
  live_.erase(id);
  followers_.erase(id);
  tasks_.erase(id);
}

void Tasks::handle_watch(const Sender& from, const pb::TaskWatch& req) {
  reply_ok(from.peer, from.rid);
  for (auto id : req.task_ids()) {
    Task* t = find(id);
    if (!t || t->ended()) {
      push_later(from.peer, id); // its result, or UNKNOWN
      continue;
    }
    watchers_[id].push_back(from.peer);
    if (!req.follow_output())
      continue;
    followers_[id].push_back(from.peer);
    if (auto live = live_.find(id); live != live_.end() && !live->second.tail.empty())
      send_output(*from.peer, id, live->second.end - live->second.tail.size(), live->second.tail);
  }
  flush_pushes(from.peer.get());
}

void Tasks::handle_list(const Sender& from, const pb::TaskListRequest& req) {
  pb::Envelope env;
  auto* list = env.mutable_task_list_reply();
  auto add = [&](const Task& t) {
    auto* i = list->add_tasks();
    i->set_id(t.id);
    i->set_state(wire_state(t.state));
    i->set_running(t.state == TaskState::Running);
    i->set_engine_id(t.engine ? t.engine : t.target);
    i->set_label(t.label);
    i->set_handler(t.handler);
    i->set_submit_ms(t.submit_ms);
    i->set_start_ms(t.start_ms);
    i->set_end_ms(t.end_ms);
    i->set_error_type(t.error_type);
    i->set_error_message(t.error_message);
    i->set_attempts(t.attempts);
    i->set_payload_bytes(t.payload ? t.payload->size() : 0);
    i->set_result_bytes(t.result ? t.result->size() : 0);
  };
  if (req.ids_size() > 0) {
    for (auto id : req.ids())
      if (const Task* t = find(id))
        add(*t);
    list->set_matched(static_cast<std::uint64_t>(list->tasks_size()));
  } else {
    std::uint64_t limit = req.limit() ? req.limit() : 1000;
    std::vector<const Task*> newest;
    for (auto it = tasks_.rbegin(); it != tasks_.rend() && newest.size() < limit; ++it)
      newest.push_back(&it->second);
    for (auto it = newest.rbegin(); it != newest.rend(); ++it)
      add(**it);
    list->set_matched(tasks_.size());
  }
  reply(from.peer, env, from.rid);
}

void Tasks::handle_forget(const Sender& from, const pb::TaskForget& req) {
  pb::Envelope env;
  auto* r = env.mutable_task_forget_reply();
  auto& batch = core_.durable.batch();
  for (auto id : req.ids()) {
    auto it = tasks_.find(id);
    if (it == tasks_.end()) {
      r->set_not_found(r->not_found() + 1);
    } else if (!it->second.ended()) {
      r->set_not_ended(r->not_ended() + 1);
    } else {
      if (it->second.result_size > 0)
        batch.values_removed.emplace_back(id, 1);
      tasks_.erase(it);
      watchers_.erase(id);
      batch.tasks_forgotten.push_back(id);
      r->set_forgotten(r->forgotten() + 1);
    }
  }
  core_.durable.after_commit([peer = from.peer, rid = from.rid,
                              env = std::move(env)](const Result<void>& committed) mutable {
    if (committed.ok())
      reply(peer, env, rid);
    else
      reply_error(peer, rid, committed.error());
  });
}

void Tasks::handle_engines(const Sender& from, const pb::EngineListRequest& req) {
  std::vector<const Engine*> list;
  for (const auto& [id, e] : engines_)
    if (e.up && (req.label().empty() || e.label == req.label()))
      list.push_back(&e);
  std::sort(list.begin(), list.end(), [](auto* a, auto* b) { return a->id < b->id; });
  pb::Envelope env;
  auto* out = env.mutable_engine_list_reply();
  for (const Engine* e : list) {
    auto* i = out->add_engines();
    i->set_id(e->id);
    i->set_job_id(e->job.value);
    i->set_node(e->node);
    i->set_label(e->label);
    i->set_busy(!e->running.empty());
    i->set_rank(e->rank);
    i->set_size(e->size);
    i->set_pid(e->pid);
    i->set_tasks_done(e->tasks_done);
    i->set_running(static_cast<std::uint32_t>(e->running.size()));
    i->set_started_ms(e->started_ms);
    i->set_kind(e->kind);
    i->set_direct(e->direct != nullptr);
  }
  reply(from.peer, env, from.rid);
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
      const Task& t = *find(id);
      std::size_t size = t.payload ? t.payload->size() : 0;
      if (bytes > 0 && bytes + size > kFrameBudget) { // frames stay below the limit
        send_to(e->second, env);
        env.Clear();
        bytes = 0;
      }
      auto* task = env.mutable_task_run()->add_tasks();
      task->set_task_id(id);
      task->set_handler(t.handler);
      if (t.payload)
        task->set_payload(*t.payload);
      task->set_payload_size(t.payload_size);
      task->set_timeout_ms(t.timeout_ms);
      task->set_transient(t.transient);
      bytes += size + t.handler.size() + 32;
    }
    send_to(e->second, env);
    for (auto id : ids) // large arguments follow their TaskRun
      if (downloads_.contains(id))
        pump_download(id);
  }
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
  if (core_.config.task_retention_ms > 0) {
    auto& batch = core_.durable.batch();
    while (!ended_.empty() && ended_.front().first + core_.config.task_retention_ms < now) {
      auto id = ended_.front().second;
      ended_.pop_front();
      auto it = tasks_.find(id);
      if (it != tasks_.end() && it->second.ended()) {
        if (it->second.result_size > 0)
          batch.values_removed.emplace_back(id, 1);
        tasks_.erase(it);
        watchers_.erase(id);
        batch.tasks_forgotten.push_back(id);
      }
    }
  }
}

// -------------------------------------------------------------------------------------------
// Results to clients

void Tasks::fill_result(const Task& t, pb::TaskResult& r) {
  r.set_task_id(t.id);
  r.set_state(wire_state(t.state));
  if (t.result)
    r.set_payload(*t.result);
  if (t.output)
    r.set_stdout(*t.output);
  r.set_error_type(t.error_type);
  r.set_error_message(t.error_message);
  r.set_traceback(t.traceback);
  r.set_engine_id(t.engine);
  r.set_start_ms(t.start_ms);
  r.set_end_ms(t.end_ms);
  r.set_payload_size(t.result_size);
}

void Tasks::notify(const std::vector<std::uint64_t>& ids) {
  std::unordered_set<const Peer*> touched;
  for (auto id : ids) {
    auto it = watchers_.find(id);
    if (it == watchers_.end()) {
      forget_transient(id); // its caller is gone: nobody can ask for it any more
      continue;
    }
    for (const auto& w : it->second)
      if (auto peer = w.lock(); peer && !peer->closed()) {
        push_later(peer, id);
        touched.insert(peer.get());
      }
    watchers_.erase(it);
  }
  for (const Peer* p : touched)
    flush_pushes(p);
}

void Tasks::forget_transient(std::uint64_t id) {
  auto it = tasks_.find(id);
  if (it == tasks_.end() || !it->second.transient || !it->second.ended())
    return;
  if (it->second.result_size > 0) // a large result lives in a value file
    core_.durable.batch().values_removed.emplace_back(id, 1);
  tasks_.erase(it);
  watchers_.erase(id);
}

void Tasks::notify_soon(const std::vector<std::uint64_t>& ids) {
  if (ids.empty())
    return;
  bool post = to_notify_.empty();
  to_notify_.insert(to_notify_.end(), ids.begin(), ids.end());
  if (post)
    core_.post([this] {
      std::vector<std::uint64_t> ids2;
      ids2.swap(to_notify_);
      notify(ids2);
    });
}

void Tasks::push_later(const std::shared_ptr<Peer>& peer, std::uint64_t id) {
  auto& p = pushes_[peer.get()];
  p.peer = peer;
  p.ids.push_back(id);
}

Tasks::Pushes* Tasks::live_pushes(const Peer* key, std::shared_ptr<Peer>& peer) {
  auto it = pushes_.find(key);
  if (it == pushes_.end())
    return nullptr;
  peer = it->second.peer.lock();
  if (!peer || peer->closed()) {
    pushes_.erase(it);
    return nullptr;
  }
  return &it->second;
}

void Tasks::flush_pushes(const Peer* key) {
  std::shared_ptr<Peer> peer;
  Pushes* found = live_pushes(key, peer);
  if (!found)
    return;
  Pushes& p = *found;
  // A slow reader gets its results as its link drains: what waits here is ids, not copies.
  while (!p.ids.empty() && peer->queued_bytes() < kPushQueueLimit) {
    pb::Envelope env;
    auto* results = env.mutable_task_results();
    std::size_t bytes = 0;
    while (!p.ids.empty() && (bytes < kFrameBudget || results->results_size() == 0)) {
      auto id = p.ids.front();
      p.ids.pop_front();
      auto* r = results->add_results();
      if (const Task* t = find(id)) {
        fill_result(*t, *r);
        if (t->result_size > 0) // its pieces follow this frame
          p.streams.push_back(Stream{id, t->result_size, 0});
        else if (t->transient)
          forget_transient(id);
      } else {
        r->set_task_id(id);
        r->set_state(pb::TaskResult::UNKNOWN);
        r->set_error_type("TaskUnknown");
        r->set_error_message(fmt::format("there is no task {} (never submitted, or forgotten)", id));
      }
      bytes += r->payload().size() + r->stdout().size() + 64;
    }
    peer->send(env);
  }
  if (p.ids.empty()) {
    if (p.streams.empty())
      pushes_.erase(key);
    else
      pump_client(key); // pieces of large results, after the frames that announce them
    return;
  }
  if (!p.streams.empty())
    pump_client(key);
  if (!p.waiting) {
    p.waiting = true;
    peer->when_drained([this, key, alive = core_.alive] {
      if (!*alive)
        return;
      if (auto again = pushes_.find(key); again != pushes_.end()) {
        again->second.waiting = false;
        flush_pushes(key);
      }
    });
  }
}

// -------------------------------------------------------------------------------------------
// Large values: arguments from clients and results from engines arrive in pieces, are written
// to value files as they come (acknowledged once stored), and go on in pieces read back from
// those files: the hub holds a few pieces per transfer, never a whole value.

void Tasks::handle_chunk(const Sender& from, pb::ValueChunk& c) {
  auto fail = [&](std::string message) {
    Router::refuse(from, make_error(ErrorCode::InvalidArgument,
                                    fmt::format("value piece of task {}: {}", c.task_id(),
                                                std::move(message))));
  };
  Task* t = find(c.task_id());
  bool argument = c.part() == pb::ValueChunk::ARGUMENT;
  std::uint64_t expected_total = 0;
  if (from.role == Role::Client) {
    auto up = uploaders_.find(c.task_id());
    if (!t || !argument || t->state != TaskState::Uploading || up == uploaders_.end() ||
        up->second.lock() != from.peer)
      return fail("not a task whose argument this client is sending");
    expected_total = t->payload_size;
  } else {
    auto link = links_.find({from.agent->id.value, from.via});
    if (!t || argument || link == links_.end() || t->state != TaskState::Running ||
        t->engine != link->second)
      return; // a piece for a task that ended or moved meanwhile: dropped
    expected_total = c.total();
    if (expected_total > kMaxValue)
      return fail(fmt::format("a result of {} bytes: at most {}", expected_total, kMaxValue));
  }
  if (c.offset() != t->received || c.offset() + c.data().size() > expected_total)
    return fail(fmt::format("a piece at {} of {} bytes, after {} of {} bytes: pieces go in order",
                            c.offset(), c.data().size(), t->received, expected_total));
  t->received += c.data().size();
  core_.durable.batch().values.push_back(
      {t->id, argument ? 0 : 1, static_cast<std::int64_t>(c.offset()), std::move(*c.mutable_data())});
  std::uint64_t id = t->id, received = t->received;
  bool complete = argument && received == expected_total;
  if (complete) {
    uploaders_.erase(id);
    t->state = TaskState::Queued;
    write(*t, store::TaskRow::Write::Update);
  }
  core_.durable.after_commit([this, id, received, argument, complete, from](
                                 const Result<void>& committed) {
    Task* task = find(id);
    if (!committed.ok()) {
      if (task && !task->ended())
        finish(*task, TaskState::Failed, nullptr, "ValueIncomplete",
               fmt::format("the hub could not store its {}: {}",
                           argument ? "argument" : "result", committed.error().message));
      return;
    }
    pb::Envelope ack;
    ack.set_request_id(from.rid);
    auto* a = ack.mutable_value_chunk_ack();
    a->set_task_id(id);
    a->set_part(argument ? pb::ValueChunk::ARGUMENT : pb::ValueChunk::RESULT);
    a->set_received(received);
    if (from.role == Role::Client) {
      from.peer->send(ack);
    } else if (task) {
      if (auto e = engines_.find(task->engine); e != engines_.end())
        send_to(e->second, ack);
    }
    if (complete && task && task->state == TaskState::Queued) {
      enqueue(*task);
      request_dispatch();
    }
  });
}

void Tasks::handle_chunk_ack(const Sender& from, const pb::ValueChunkAck& ack) {
  auto d = downloads_.find(ack.task_id());
  auto link = links_.find({from.agent->id.value, from.via});
  if (d == downloads_.end() || link == links_.end() || d->second.engine != link->second)
    return;
  d->second.acked = std::max(d->second.acked, ack.received());
  if (d->second.acked >= d->second.total) {
    downloads_.erase(d);
    return;
  }
  pump_download(ack.task_id());
}

void Tasks::pump_download(std::uint64_t id) {
  auto d = downloads_.find(id);
  if (d == downloads_.end())
    return;
  Download& dl = d->second;
  while (dl.requested < dl.total && dl.requested - dl.acked < kWindow) {
    std::uint64_t offset = dl.requested;
    std::size_t size = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, dl.total - offset));
    dl.requested += size;
    core_.durable.store().read_value(
        id, 0, static_cast<std::int64_t>(offset), size,
        [this, alive = core_.alive, id, engine = dl.engine, offset,
         total = dl.total](Result<std::string> data) {
          if (!*alive)
            return;
          auto d2 = downloads_.find(id);
          auto e = engines_.find(engine);
          if (d2 == downloads_.end() || d2->second.engine != engine || e == engines_.end())
            return;
          Task* t = find(id);
          if (!data.ok() || data->empty()) {
            if (t && t->state == TaskState::Running)
              finish(*t, TaskState::Failed, nullptr, "ValueIncomplete",
                     fmt::format("the hub could not read its argument: {}",
                                 data.ok() ? "the file is short" : data.error().message));
            return;
          }
          pb::Envelope env;
          auto* c = env.mutable_value_chunk();
          c->set_task_id(id);
          c->set_part(pb::ValueChunk::ARGUMENT);
          c->set_offset(offset);
          c->set_total(total);
          c->set_data(std::move(*data));
          send_to(e->second, env);
        });
  }
}

void Tasks::pump_client(const Peer* key) {
  std::shared_ptr<Peer> peer;
  Pushes* found = live_pushes(key, peer);
  if (!found)
    return;
  Pushes& p = *found;
  if (p.reading || p.streams.empty())
    return;
  if (peer->queued_bytes() >= kPushQueueLimit) {
    if (!p.stream_waiting) {
      p.stream_waiting = true;
      peer->when_drained([this, key, alive = core_.alive] {
        if (!*alive)
          return;
        if (auto again = pushes_.find(key); again != pushes_.end()) {
          again->second.stream_waiting = false;
          pump_client(key);
        }
      });
    }
    return;
  }
  Stream& s = p.streams.front();
  std::size_t size = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, s.total - s.offset));
  p.reading = true;
  core_.durable.store().read_value(
      s.task, 1, static_cast<std::int64_t>(s.offset), size,
      [this, alive = core_.alive, key, task = s.task](Result<std::string> data) {
        if (!*alive)
          return;
        auto again = pushes_.find(key);
        if (again == pushes_.end())
          return;
        Pushes& q = again->second;
        q.reading = false;
        auto peer2 = q.peer.lock();
        if (!peer2 || peer2->closed() || q.streams.empty() || q.streams.front().task != task) {
          pushes_.erase(again);
          return;
        }
        Stream& st = q.streams.front();
        if (!data.ok() || data->empty()) {
          // The value is gone (forgotten meanwhile) or unreadable: the client's wait for the
          // rest ends with this link.
          peer2->close_with_error(make_error(ErrorCode::Io,
                                             fmt::format("cannot read the result of task {}: {}",
                                                         task, data.ok() ? "it was forgotten"
                                                                         : data.error().message)));
          pushes_.erase(again);
          return;
        }
        pb::Envelope env;
        auto* c = env.mutable_value_chunk();
        c->set_task_id(task);
        c->set_part(pb::ValueChunk::RESULT);
        c->set_offset(st.offset);
        c->set_total(st.total);
        st.offset += data->size();
        c->set_data(std::move(*data));
        peer2->send(env);
        if (st.offset >= st.total) {
          q.streams.pop_front();
          forget_transient(task);
        }
        if (q.streams.empty() && q.ids.empty() && !q.waiting)
          pushes_.erase(again);
        else
          pump_client(key);
      });
}

} // namespace sortie::hub
