// SPDX-License-Identifier: Apache-2.0
// Results to the clients that watch tasks, as their links drain, and large values in pieces.
#include "hub/tasks.hpp"

#include <fmt/format.h>

#include "common/log.hpp"
#include "protocol/errors.hpp"

namespace sortie::hub {

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
  watchers_.erase(id);
  erase(it);
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

namespace {

void unknown_task(pb::TaskResult& r, std::uint64_t id) {
  r.set_task_id(id);
  r.set_state(pb::TaskResult::UNKNOWN);
  r.set_error_type("TaskUnknown");
  r.set_error_message(fmt::format("there is no task {} (never submitted, or forgotten)", id));
}

} // namespace

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
      const Task* t = find(id);
      if (!t && id < next_task_id_) { // it left memory: read back from the store
        p.fetch.push_back(id);
        continue;
      }
      auto* r = results->add_results();
      if (t) {
        fill_result(*t, *r);
        if (t->result_size > 0) // its pieces follow this frame
          p.streams.push_back(Stream{id, t->result_size, 0});
        else if (t->transient)
          forget_transient(id);
      } else {
        unknown_task(*r, id);
      }
      bytes += r->payload().size() + r->stdout().size() + 64;
    }
    if (results->results_size() > 0)
      peer->send(env);
  }
  bool full = peer->queued_bytes() >= kPushQueueLimit;
  if (!full)
    fetch_results(key);
  bool more = !p.ids.empty() || !p.fetch.empty();
  if (!more && p.streams.empty() && !p.fetching) {
    pushes_.erase(key);
    return;
  }
  if (full && more && !p.waiting) {
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
  if (!p.streams.empty())
    pump_client(key); // pieces of large results, after the frames that announce them
}

void Tasks::fetch_results(const Peer* key) {
  std::shared_ptr<Peer> peer;
  Pushes* found = live_pushes(key, peer);
  if (!found || found->fetching || found->fetch.empty())
    return;
  Pushes& p = *found;
  store::TaskQuery q;
  while (!p.fetch.empty() && q.ids.size() < kFetchIds) {
    q.ids.push_back(p.fetch.front());
    p.fetch.pop_front();
  }
  q.max_bytes = kFrameBudget;
  p.fetching = true;
  std::vector<std::uint64_t> ids = q.ids;
  core_.durable.store().read_tasks(std::move(q), [this, alive = core_.alive, key,
                                                  ids = std::move(ids)](
                                                     Result<store::TaskRows> rows) {
    if (!*alive)
      return;
    std::shared_ptr<Peer> peer2;
    Pushes* again = live_pushes(key, peer2);
    if (!again)
      return;
    again->fetching = false;
    pb::Envelope env;
    auto* results = env.mutable_task_results();
    if (!rows.ok()) {
      for (auto id : ids) {
        auto* r = results->add_results();
        r->set_task_id(id);
        r->set_state(pb::TaskResult::UNKNOWN);
        r->set_error_type("StoreError");
        r->set_error_message(fmt::format("the hub could not read task {} from its store: {}", id,
                                         rows.error().message));
      }
    } else {
      // Those not reached (the frame's budget) are read next, before the others.
      for (auto it = rows->unread.rbegin(); it != rows->unread.rend(); ++it)
        again->fetch.push_front(*it);
      std::unordered_map<std::uint64_t, store::TaskRow*> by_id;
      for (auto& row : rows->rows)
        by_id.emplace(row.id, &row);
      std::unordered_set<std::uint64_t> unread(rows->unread.begin(), rows->unread.end());
      for (auto id : ids) {
        if (unread.contains(id))
          continue;
        auto* r = results->add_results();
        auto row = by_id.find(id);
        if (row == by_id.end()) {
          unknown_task(*r, id); // forgotten meanwhile
          continue;
        }
        Task t = from_row(std::move(*row->second));
        fill_result(t, *r);
        if (t.result_size > 0)
          again->streams.push_back(Stream{id, t.result_size, 0});
      }
    }
    if (results->results_size() > 0)
      peer2->send(env);
    flush_pushes(key); // the others, as the link drains
  });
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
        if (q.streams.empty() && q.ids.empty() && !q.waiting && q.fetch.empty() && !q.fetching)
          pushes_.erase(again);
        else
          pump_client(key);
      });
}

} // namespace sortie::hub

