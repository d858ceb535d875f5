// SPDX-License-Identifier: Apache-2.0
// The engine's link to its agent (or, directly, to the hub): tasks in, results out, large values
// in pieces both ways.
#include "sortie/tasks.hpp"

#include <chrono>
#include <deque>
#include <unordered_map>

#include <fmt/format.h>

#include "client/connect.hpp"
#include "client/values.hpp"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"

namespace sortie {

namespace {

void to_pb(const TaskResult& r, std::uint64_t engine, bool inline_value, pb::TaskResult& d) {
  d.set_task_id(r.id);
  d.set_state(r.state == TaskOutcome::Done ? pb::TaskResult::DONE : pb::TaskResult::FAILED);
  if (inline_value)
    d.set_payload(r.value);
  else
    d.set_payload_size(r.value.size()); // sent in pieces before this
  d.set_error_type(r.error_type);
  d.set_error_message(r.error_message);
  d.set_traceback(r.traceback);
  d.set_stdout(r.output);
  d.set_engine_id(engine);
  d.set_start_ms(r.start_ms);
  d.set_end_ms(r.end_ms);
}

} // namespace

struct EngineLink::Impl {
  net::BlockingLink link;
  std::uint64_t id = 0;
  std::string label;
  std::uint32_t rank = 0, size = 1;
  std::string kind;
  std::unordered_set<std::uint64_t> running;        ///< taken, not yet answered
  std::unordered_map<std::uint64_t, TaskResult> unacked; ///< answered, not yet stored
  std::unordered_set<std::uint64_t> transient; ///< taken, never stored: results not kept
  /// Tasks received, in order; one with a large argument is complete once all its pieces came.
  struct Incoming {
    Task task;
    std::uint64_t size = 0; ///< a large argument's size (0: complete on arrival)
  };
  std::deque<Incoming> incoming;
  std::unordered_map<std::uint64_t, std::uint64_t> acked; ///< pieces of results the hub stored
  std::optional<Error> failed;                             ///< what the hub said, or the link
  std::mutex send_mu; ///< send_output may come from another thread
  std::string send_buffer; ///< guarded by send_mu
  /// On the hub's direct socket (05-tasks.md §5.9): when that link ends, the engine goes on
  /// through its agent's socket, `agent_socket` with `agent_key`.
  bool direct = false;
  std::string agent_socket, agent_key;
  std::uint64_t generation = 0; ///< links used so far: an upload that sees it change stops

  Result<void> send(const pb::Envelope& env) {
    std::lock_guard lock(send_mu);
    if (direct) { // a failed write leaves the link open: receive() sees it end, and switches
      [[maybe_unused]] auto sent = link.send_alongside(env, send_buffer);
      return ok_result();
    }
    return link.send(env);
  }

  /// Connects and authenticates to `socket`, trying again (`retry`) for up to `timeout_ms` (an
  /// MPI rank may come before its agent listens).
  static Result<net::BlockingLink> open(const std::string& socket, const std::string& key,
                                        std::int64_t timeout_ms, bool retry = true) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (true) {
      auto link = net::BlockingLink::connect_unix(socket, timeout_ms);
      if (link.ok()) {
        SORTIE_TRY(link->handshake(key, pb::ROLE_ENGINE, "engine", timeout_ms));
        return link;
      }
      if (!retry || std::chrono::steady_clock::now() >= deadline)
        return link.error();
      std::this_thread::sleep_for(std::chrono::milliseconds(50)); // a retry's backoff
    }
  }

  /// The direct link ended (the hub stopped or restarted): on through the agent's socket, where
  /// the engine announces itself again when the hub is there (EngineRejoin) and now.
  Result<void> fall_back(const Error& why) {
    if (!direct)
      return why;
    SORTIE_ASSIGN_OR_RETURN(fresh, open(agent_socket, agent_key, 30'000));
    {
      std::lock_guard lock(send_mu);
      link = std::move(fresh);
      direct = false;
      ++generation;
    }
    return send_ready();
  }

  bool large(const TaskResult& r) const { return r.value.size() > kInlineValue; }

  Result<void> send_ready() {
    pb::Envelope env;
    auto* r = env.mutable_engine_ready();
    r->set_rank(rank);
    r->set_size(size);
    r->set_pid(::getpid());
    r->set_engine_id(id);
    r->set_kind(kind);
    for (auto t : running)
      r->add_running(t);
    for (const auto& in : incoming) // received and waiting here: held too
      if (in.size == 0)
        r->add_running(in.task.id);
    std::vector<std::uint64_t> resend;
    for (const auto& [tid, res] : unacked) {
      if (large(res)) { // held as running, and sent again in pieces below
        r->add_running(tid);
        resend.push_back(tid);
      } else {
        to_pb(res, id, true, *r->add_unacked());
      }
    }
    // Tasks whose argument was still arriving are gone with the old hub: it sends them again.
    std::erase_if(incoming, [](const Incoming& i) { return i.size > 0; });
    SORTIE_TRY(send(env));
    for (auto tid : resend)
      SORTIE_TRY(upload(unacked.at(tid)));
    return ok_result();
  }

  void welcomed(const pb::EngineWelcome& w) {
    id = w.engine_id();
    label = w.label();
    for (auto t : w.drop()) {
      running.erase(t);
      transient.erase(t);
    }
  }

  /// Whatever comes from the hub (or the agent), while waiting for tasks or for acks.
  Result<void> handle(pb::Envelope& env) {
    switch (env.body_case()) {
    case pb::Envelope::kTaskRun:
      for (auto& t : *env.mutable_task_run()->mutable_tasks()) {
        if (unacked.contains(t.task_id()) || running.contains(t.task_id()) ||
            std::any_of(incoming.begin(), incoming.end(),
                        [&](const Incoming& in) { return in.task.id == t.task_id(); }))
          continue; // here already; the hub will hear of it again
        if (t.transient())
          transient.insert(t.task_id());
        Incoming in;
        in.task = {t.task_id(), std::move(*t.mutable_handler()), std::move(*t.mutable_payload()),
                   t.timeout_ms()};
        in.size = t.payload_size();
        if (in.size > 0)
          in.task.payload.reserve(in.size);
        incoming.push_back(std::move(in));
      }
      return ok_result();
    case pb::Envelope::kValueChunk: {
      auto& c = *env.mutable_value_chunk();
      for (auto& in : incoming)
        if (in.task.id == c.task_id() && in.size > 0 && c.offset() == in.task.payload.size()) {
          in.task.payload += c.data();
          pb::Envelope ack;
          ack.mutable_value_chunk_ack()->set_task_id(c.task_id());
          ack.mutable_value_chunk_ack()->set_received(in.task.payload.size());
          if (in.task.payload.size() >= in.size)
            in.size = 0; // complete
          return send(ack);
        }
      return ok_result();
    }
    case pb::Envelope::kValueChunkAck:
      acked[env.value_chunk_ack().task_id()] = env.value_chunk_ack().received();
      return ok_result();
    case pb::Envelope::kTaskDoneAck:
      for (auto tid : env.task_done_ack().task_ids()) {
        unacked.erase(tid);
        acked.erase(tid);
      }
      return ok_result();
    case pb::Envelope::kEngineRejoin:
      return send_ready();
    case pb::Envelope::kEngineWelcome:
      welcomed(env.engine_welcome());
      return ok_result();
    case pb::Envelope::kError:
      return net::error_from_pb(env.error());
    default:
      return ok_result();
    }
  }

  /// Receives and handles one frame (Timeout when none came in time).
  Result<void> pump(std::int64_t timeout_ms) {
    auto env = link.receive(timeout_ms);
    if (!env.ok())
      return env.error().code == ErrorCode::Timeout ? env.error() : fall_back(env.error());
    return handle(*env);
  }

  /// A large result's pieces, at most kValueWindow bytes unacknowledged.
  Result<void> upload(const TaskResult& r) {
    const std::string& v = r.value;
    std::uint64_t sent = 0;
    acked[r.id] = 0;
    std::uint64_t on = generation;
    while (sent < v.size()) {
      while (sent - acked[r.id] >= kValueWindow) {
        auto got = pump(60'000);
        if (!got.ok())
          return got.error();
        if (generation != on)
          return ok_result(); // the link changed: send_ready sent it again on the new one
      }
      std::size_t n = std::min<std::size_t>(kValueChunk, v.size() - sent);
      pb::Envelope env;
      auto* c = env.mutable_value_chunk();
      c->set_task_id(r.id);
      c->set_part(pb::ValueChunk::RESULT);
      c->set_offset(sent);
      c->set_total(v.size());
      c->set_data(v.data() + sent, n);
      SORTIE_TRY(send(env));
      sent += n;
    }
    pb::Envelope done;
    to_pb(r, id, false, *done.mutable_task_done()->add_results());
    return send(done);
  }
};

EngineLink::EngineLink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EngineLink::~EngineLink() = default;
std::uint64_t EngineLink::id() const { return impl_->id; }
const std::string& EngineLink::label() const { return impl_->label; }

Result<std::unique_ptr<EngineLink>> EngineLink::connect(const std::string& socket,
                                                        const std::string& key,
                                                        std::uint32_t rank, std::uint32_t size,
                                                        const std::string& kind,
                                                        std::int64_t timeout_ms,
                                                        const DirectSocket& direct) {
  if (socket.empty() || key.empty())
    return make_error(ErrorCode::InvalidArgument,
                      "no engine socket: an engine runs as a job of kind \"engine\" (`sortie "
                      "engine start`), which sets SORTIE_ENGINE_SOCKET and SORTIE_ENGINE_KEY");
  auto impl = std::make_unique<Impl>();
  // The hub's own socket first, when it gave one (a local pilot's engine); else, or when that
  // fails, the agent's. An MPI rank on another node may come before the hub has told the agent
  // there to listen (EngineHost): it tries again for a while.
  if (!direct.socket.empty()) {
    if (auto link = Impl::open(direct.socket, direct.key, 10'000, false); link.ok()) {
      impl->link = std::move(*link);
      impl->direct = true;
      impl->agent_socket = socket;
      impl->agent_key = key;
    }
  }
  if (!impl->direct) {
    SORTIE_ASSIGN_OR_RETURN(link, Impl::open(socket, key, timeout_ms));
    impl->link = std::move(link);
  }
  impl->rank = rank;
  impl->size = size;
  impl->kind = kind;
  SORTIE_TRY(impl->send_ready());
  while (impl->id == 0) {
    SORTIE_ASSIGN_OR_RETURN(env, impl->link.receive(timeout_ms));
    SORTIE_TRY(impl->handle(env));
  }
  return std::unique_ptr<EngineLink>(new EngineLink(std::move(impl)));
}

Result<std::vector<EngineLink::Task>> EngineLink::next(std::int64_t timeout_ms) {
  std::vector<Task> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    // Complete tasks, in the order they came.
    while (!impl_->incoming.empty() && impl_->incoming.front().size == 0) {
      impl_->running.insert(impl_->incoming.front().task.id);
      out.push_back(std::move(impl_->incoming.front().task));
      impl_->incoming.pop_front();
    }
    if (!out.empty())
      return out;
    std::int64_t left = -1;
    if (timeout_ms >= 0) {
      left = std::chrono::duration_cast<std::chrono::milliseconds>(
                 deadline - std::chrono::steady_clock::now())
                 .count();
      if (left <= 0)
        return out;
    }
    auto got = impl_->pump(left);
    if (!got.ok()) {
      if (got.error().code == ErrorCode::Timeout)
        return out;
      return got.error();
    }
  }
}

Result<void> EngineLink::send(std::vector<TaskResult> results) {
  // Frames stay below the protocol's limit: small results go many per frame, each large one in
  // pieces the hub acknowledges, then its TaskDone.
  constexpr std::size_t kFrameBudget = 16u << 20;
  pb::Envelope env;
  std::size_t bytes = 0;
  auto flush = [&]() -> Result<void> {
    if (!env.has_task_done())
      return ok_result();
    auto r = impl_->send(env);
    env.Clear();
    bytes = 0;
    return r;
  };
  for (auto& r : results) {
    if (r.value.size() + r.output.size() > kMaxValueBytes) {
      std::size_t size = r.value.size() + r.output.size();
      r = TaskResult{r.id, TaskOutcome::Failed, {}, "ValueTooLarge",
                     fmt::format("the task's result and output are {} MiB: at most {} MiB (write "
                                 "larger values to a shared file and return its path)",
                                 size >> 20, kMaxValueBytes >> 20),
                     {}, {}, 0, r.start_ms, r.end_ms};
    }
    impl_->running.erase(r.id);
    r.engine = impl_->id;
    bool keep = !impl_->transient.erase(r.id); // until the hub has stored it
    if (impl_->large(r)) {
      SORTIE_TRY(flush()); // in the order they ended
      if (!keep) {
        SORTIE_TRY(impl_->upload(r));
        impl_->acked.erase(r.id); // no TaskDoneAck comes for it
        continue;
      }
      auto& kept = impl_->unacked[r.id] = std::move(r);
      SORTIE_TRY(impl_->upload(kept));
      continue;
    }
    std::size_t size = r.value.size() + r.output.size() + r.traceback.size() + 64;
    if (bytes > 0 && bytes + size > kFrameBudget)
      SORTIE_TRY(flush());
    bytes += size;
    to_pb(r, impl_->id, true, *env.mutable_task_done()->add_results());
    if (keep)
      impl_->unacked.emplace(r.id, std::move(r));
  }
  return flush();
}


Result<void> EngineLink::send_output(std::uint64_t task, std::uint64_t offset,
                                     std::string_view data) {
  if (data.size() > kValueChunk)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} bytes of output in one piece: at most {}", data.size(),
                                  kValueChunk));
  pb::Envelope env;
  auto* o = env.mutable_task_output();
  o->set_task_id(task);
  o->set_offset(offset);
  o->set_data(data.data(), data.size());
  return impl_->send(env);
}

} // namespace sortie
