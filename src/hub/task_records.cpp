// SPDX-License-Identifier: Apache-2.0
// Tasks in the hub: submission, their records (in memory while they run, then read back from the
// store), requeue and finish, and what clients ask of them (watch, list, forget, engines).
#include "hub/tasks.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/log.hpp"
#include "common/text.hpp"
#include "protocol/errors.hpp"

namespace sortie::hub {
namespace {

std::shared_ptr<const std::string> share(std::string* s) {
  if (s->empty())
    return nullptr;
  return std::make_shared<const std::string>(std::move(*s));
}

} // namespace

// -------------------------------------------------------------------------------------------
// Tasks

Task* Tasks::find(std::uint64_t id) {
  auto it = tasks_.find(id);
  return it == tasks_.end() ? nullptr : &it->second;
}

Task Tasks::from_row(store::TaskRow&& row) {
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
  if (!t.payload && !t.ended()) // read without values (load): its argument stays in the store
    t.in_store = row.payload_bytes;
  return t;
}

namespace {

/// What an ended task holds in memory beyond its fixed size.
std::size_t held_bytes(const Task& t) {
  auto size = [](const std::shared_ptr<const std::string>& p) { return p ? p->size() : 0; };
  return size(t.result) + size(t.output) + t.error_type.size() + t.error_message.size() +
         t.traceback.size();
}

} // namespace

void Tasks::erase(std::unordered_map<std::uint64_t, Task>::iterator it) {
  const Task& t = it->second;
  if (t.ended() && !t.transient) {
    --ended_held_;
    ended_bytes_ -= held_bytes(t);
  }
  tasks_.erase(it); // (its watchers, if any, are told from the store)
}

void Tasks::forget(std::uint64_t id, std::uint64_t result_size) {
  auto& batch = core_.durable.batch();
  if (result_size > 0) // a large result lives in a value file
    batch.values_removed.emplace_back(id, 1);
  batch.tasks_forgotten.push_back(id);
  watchers_.erase(id);
  if (auto it = tasks_.find(id); it != tasks_.end())
    erase(it);
}

void Tasks::ended(Task& t) {
  if (oldest_end_ms_ == 0 || t.end_ms < oldest_end_ms_)
    oldest_end_ms_ = t.end_ms;
  if (sweeping_ && (ended_since_sweep_ == 0 || t.end_ms < ended_since_sweep_))
    ended_since_sweep_ = t.end_ms;
  if (t.transient) // forgotten once its result is pushed
    return;
  ++ended_held_;
  ended_bytes_ += held_bytes(t);
  ended_.push_back(t.id);
  settle_after_commit(t.id);
}

void Tasks::settle_after_commit(std::uint64_t id) {
  // One completion per commit settles the tasks that ended into it (rows written When::Soon go
  // into the same batch as the others until it is flushed).
  if (!ending_ || ending_flush_ != core_.durable.flushes()) {
    ending_ = std::make_shared<std::vector<std::uint64_t>>();
    ending_flush_ = core_.durable.flushes();
    core_.durable.after_commit(
        [this, ids = ending_](const Result<void>& committed) { settle(*ids, committed); },
        When::Soon);
  }
  ending_->push_back(id);
}

void Tasks::settle(const std::vector<std::uint64_t>& ids, const Result<void>& committed) {
  for (auto id : ids) {
    Task* t = find(id);
    if (!t || !t->ended())
      continue;
    if (committed.ok()) {
      t->settled = true;
      continue;
    }
    // Not durable (the disk is full, say): written again, and held until it is. (`ids` is the
    // list of a batch already flushed, never the one this adds to.)
    write(*t, store::TaskRow::Write::Finish, When::Soon);
    settle_after_commit(id);
  }
  if (committed.ok())
    evict();
}

void Tasks::evict() {
  while (!ended_.empty()) {
    auto it = tasks_.find(ended_.front());
    if (it != tasks_.end() && it->second.ended()) {
      if (ended_held_ <= kHeldEnded && ended_bytes_ <= kHeldEndedBytes)
        break;
      if (!it->second.settled)
        break; // its end is not committed yet
      erase(it); // read back from the store when asked for
    }
    ended_.pop_front();
  }
  // Ids of tasks forgotten out of order do not pile up behind one that stays.
  if (ended_.size() > 2 * ended_held_ + 1024)
    std::erase_if(ended_, [this](std::uint64_t id) {
      const Task* t = find(id);
      return !t || !t->ended();
    });
}

void Tasks::sweep(std::int64_t now) {
  std::int64_t before = now - core_.config.task_retention_ms;
  // In memory: the oldest ended tasks first.
  while (!ended_.empty()) {
    auto it = tasks_.find(ended_.front());
    if (it != tasks_.end() && it->second.ended()) {
      if (it->second.end_ms >= before)
        break;
      forget(it->first, it->second.result_size);
    }
    ended_.pop_front();
  }
  // In the store, a bounded number per commit, from the oldest on.
  if (sweeping_ || oldest_end_ms_ == 0 || oldest_end_ms_ >= before)
    return;
  auto sweep = std::make_shared<store::TaskSweep>();
  sweep->before_ms = before;
  core_.durable.batch().task_sweep = sweep;
  sweeping_ = true;
  ended_since_sweep_ = 0;
  core_.durable.after_commit([this, sweep](const Result<void>& committed) {
    sweeping_ = false;
    if (!committed.ok())
      return; // tried again at the next tick
    oldest_end_ms_ = sweep->oldest_end_ms;
    if (ended_since_sweep_ != 0 && (oldest_end_ms_ == 0 || ended_since_sweep_ < oldest_end_ms_))
      oldest_end_ms_ = ended_since_sweep_;
    if (sweep->forgotten > 0)
      log::debug("task_retention: {} ended tasks forgotten", sweep->forgotten);
  });
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
  auto& rows = core_.durable.batch(when).tasks;
  if (rows.empty())
    rows.reserve(std::exchange(rows_hint_, 0));
  rows.push_back(std::move(row));
  rows_hint_ = std::max(rows_hint_, rows.size());
}

void Tasks::enqueue(Task& t) {
  std::size_t size = t.payload ? t.payload->size() : 0;
  if (size > 0 && queued_bytes_ + size > kQueuedArgBytes && shed(t))
    size = 0;
  queued_bytes_ += size;
  chooser_.enqueue(t.id, t.label, t.target, t.priority);
}

void Tasks::unqueue(Task& t, bool chosen) {
  if (!chosen)
    chooser_.dequeue(t.id);
  queued_bytes_ -= t.payload ? t.payload->size() : 0;
}

bool Tasks::shed(Task& t) {
  if (!t.stored || t.transient || !t.payload || t.payload->empty())
    return false;
  t.in_store = t.payload->size();
  t.payload.reset();
  return true;
}

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
    unqueue(t);
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
  if (!r) { // the hub ended it: tell its watchers once that is durable
    core_.durable.after_commit([this, id = t.id](const Result<void>& committed) {
      if (committed.ok())
        notify({id});
    });
  }
  ended(t);
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
  // Transient calls are never stored, so their arguments cannot leave memory: beyond
  // kQueuedArgBytes queued, the submission is stored as any other (05-tasks.md §5.8).
  std::size_t transient_bytes = 0;
  for (const auto& c : req.calls())
    if (c.transient())
      transient_bytes += c.payload().size();
  if (transient_bytes > 0 && queued_bytes_ + transient_bytes > kQueuedArgBytes)
    for (auto& c : *req.mutable_calls())
      c.set_transient(false);
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
      // Its argument is durable: it leaves memory once sent, or now if the queue holds too much.
      if (t->state == TaskState::Running ||
          (t->state == TaskState::Queued && queued_bytes_ > kQueuedArgBytes)) {
        std::size_t size = t->payload ? t->payload->size() : 0;
        if (shed(*t) && t->state == TaskState::Queued)
          queued_bytes_ -= size;
      }
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
    unqueue(*t);
  } else if (t->state == TaskState::Running) {
    if (auto e = engines_.find(t->engine); e != engines_.end() && e->second.running.erase(id))
      chooser_.finished(t->engine);
  }
  live_.erase(id);
  followers_.erase(id);
  watchers_.erase(id);
  erase(tasks_.find(id));
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
  store::TaskQuery q;
  q.values = false;
  if (req.ids_size() > 0) {
    for (auto id : req.ids())
      if (!find(id) && id < next_task_id_)
        q.ids.push_back(id);
    if (q.ids.empty())
      return reply_list(from, req, {}, 0);
  } else {
    q.newest = req.limit() ? req.limit() : 1000;
    core_.durable.flush(); // the store then has every task this hub stored, as it is now
  }
  core_.durable.store().read_tasks(
      std::move(q), [this, alive = core_.alive, from = Sender{from.peer, from.role, nullptr,
                                                              from.rid, from.via},
                     req](Result<store::TaskRows> rows) {
        if (!*alive)
          return;
        if (!rows.ok())
          return reply_error(from.peer, from.rid, rows.error());
        reply_list(from, req, std::move(rows->rows), rows->count);
      });
}

void Tasks::reply_list(const Sender& from, const pb::TaskListRequest& req,
                       std::vector<store::TaskRow> rows, std::uint64_t stored) {
  pb::Envelope env;
  auto* list = env.mutable_task_list_reply();
  auto add = [&](const Task& t, std::uint64_t payload_bytes, std::uint64_t result_bytes) {
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
    i->set_payload_bytes(payload_bytes);
    i->set_result_bytes(result_bytes);
  };
  // What is in memory is the latest; the others as the store has them.
  std::map<std::uint64_t, store::TaskRow> read;
  for (auto& row : rows)
    read.emplace(row.id, std::move(row));
  auto add_id = [&](std::uint64_t id) {
    if (const Task* t = find(id))
      return add(*t, t->payload ? t->payload->size() : t->in_store,
                 t->result ? t->result->size() : 0);
    if (auto it = read.find(id); it != read.end()) {
      std::uint64_t payload_bytes = it->second.payload_bytes, result_bytes = it->second.result_bytes;
      add(from_row(std::move(it->second)), payload_bytes, result_bytes);
    }
  };
  if (req.ids_size() > 0) {
    for (auto id : req.ids())
      add_id(id);
    list->set_matched(static_cast<std::uint64_t>(list->tasks_size()));
  } else {
    // The newest stored tasks, and the transient ones (never stored) among them.
    std::uint64_t limit = req.limit() ? req.limit() : 1000;
    std::uint64_t transient = 0;
    for (const auto& [id, t] : tasks_)
      if (t.transient) {
        ++transient;
        read.try_emplace(id);
      }
    std::vector<std::uint64_t> newest;
    for (auto it = read.rbegin(); it != read.rend() && newest.size() < limit; ++it)
      newest.push_back(it->first);
    for (auto it = newest.rbegin(); it != newest.rend(); ++it)
      add_id(*it);
    list->set_matched(stored + transient);
  }
  reply(from.peer, env, from.rid);
}

void Tasks::handle_forget(const Sender& from, const pb::TaskForget& req) {
  auto summary = std::make_shared<pb::TaskForgetReply>();
  store::TaskQuery q;
  q.values = false;
  std::unordered_set<std::uint64_t> seen;
  for (auto id : req.ids()) {
    Task* t = find(id);
    if (!seen.insert(id).second || (!t && id >= next_task_id_)) {
      summary->set_not_found(summary->not_found() + 1);
    } else if (!t) {
      q.ids.push_back(id); // ended a while ago: the store says whether it is still there
    } else if (!t->ended()) {
      summary->set_not_ended(summary->not_ended() + 1);
    } else {
      forget(id, t->result_size);
      summary->set_forgotten(summary->forgotten() + 1);
    }
  }
  auto answer = [this, peer = from.peer, rid = from.rid, summary] {
    core_.durable.after_commit([peer, rid, summary](const Result<void>& committed) {
      if (!committed.ok())
        return reply_error(peer, rid, committed.error());
      pb::Envelope env;
      *env.mutable_task_forget_reply() = *summary;
      reply(peer, env, rid);
    });
  };
  if (q.ids.empty())
    return answer();
  std::size_t asked = q.ids.size();
  core_.durable.store().read_tasks(
      std::move(q), [this, alive = core_.alive, peer = from.peer, rid = from.rid, summary, asked,
                     answer](Result<store::TaskRows> rows) {
        if (!*alive)
          return;
        if (!rows.ok())
          return reply_error(peer, rid, rows.error());
        summary->set_not_found(summary->not_found() + asked - rows->rows.size());
        for (const auto& row : rows->rows) {
          if (find(row.id) || row.state < static_cast<int>(TaskState::Done) ||
              row.state > static_cast<int>(TaskState::Lost)) {
            summary->set_not_ended(summary->not_ended() + 1);
            continue;
          }
          forget(row.id, row.result_size);
          summary->set_forgotten(summary->forgotten() + 1);
        }
        answer();
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

} // namespace sortie::hub
