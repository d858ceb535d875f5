// SPDX-License-Identifier: Apache-2.0
// Sessions (task calls and their pushed results, one I/O thread per session) and the engine's
// link to its agent.
#include "sortie/tasks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "client/connect.hpp"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"

namespace sortie {
namespace {

TaskOutcome outcome_of(pb::TaskResult::State s) {
  switch (s) {
  case pb::TaskResult::DONE:
    return TaskOutcome::Done;
  case pb::TaskResult::FAILED:
    return TaskOutcome::Failed;
  case pb::TaskResult::LOST:
    return TaskOutcome::Lost;
  default:
    return TaskOutcome::Unknown;
  }
}

TaskResult from_pb(pb::TaskResult& r) {
  TaskResult out;
  out.id = r.task_id();
  out.state = outcome_of(r.state());
  out.value = std::move(*r.mutable_payload());
  out.error_type = std::move(*r.mutable_error_type());
  out.error_message = std::move(*r.mutable_error_message());
  out.traceback = std::move(*r.mutable_traceback());
  out.output = std::move(*r.mutable_stdout());
  out.engine = r.engine_id();
  out.start_ms = r.start_ms();
  out.end_ms = r.end_ms();
  return out;
}

Error unexpected(const char* what) {
  return make_error(ErrorCode::Internal, fmt::format("unexpected reply from the hub to {}", what));
}

} // namespace

const char* task_outcome_name(TaskOutcome outcome) {
  switch (outcome) {
  case TaskOutcome::Done:
    return "done";
  case TaskOutcome::Failed:
    return "failed";
  case TaskOutcome::Lost:
    return "lost";
  case TaskOutcome::Unknown:
    return "unknown";
  }
  return "unknown";
}

// -------------------------------------------------------------------------------------------
// Session

struct Session::Impl {
  net::BlockingLink link;
  std::int64_t timeout_ms = 10'000;
  int wake[2] = {-1, -1};
  std::thread io;
  std::mutex mu;
  std::condition_variable cv;
  // Guarded by mu:
  std::deque<pb::Envelope> outgoing;
  std::unordered_map<std::uint64_t, std::optional<Result<pb::Envelope>>> replies;
  std::deque<TaskResult> results;
  bool ended = false;
  Error end_error;
  std::uint64_t next_rid = 1;

  ~Impl() { stop(); }

  void start() {
    if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0)
      wake[0] = wake[1] = -1;
    link.set_wake_fd(wake[0]);
    io = std::thread([this] { run(); });
  }

  void stop() {
    {
      std::lock_guard lock(mu);
      if (!ended) {
        ended = true;
        end_error = make_error(ErrorCode::Unavailable, "the session was closed");
      }
    }
    poke();
    if (io.joinable())
      io.join();
    for (int& fd : wake)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
    link.close();
    cv.notify_all();
  }

  void poke() {
    if (wake[1] >= 0) {
      char c = 1;
      [[maybe_unused]] auto n = ::write(wake[1], &c, 1);
    }
  }

  void fail(const Error& e) {
    std::lock_guard lock(mu);
    if (!ended) {
      ended = true;
      end_error = e;
    }
    cv.notify_all();
  }

  /// The I/O thread: sends what callers queued, receives replies and pushed results.
  void run() {
    while (true) {
      std::deque<pb::Envelope> out;
      {
        std::lock_guard lock(mu);
        if (ended)
          return;
        out.swap(outgoing);
      }
      for (auto& env : out)
        if (auto r = link.send(env); !r.ok())
          return fail(r.error());
      auto frame = link.receive(-1);
      if (!frame.ok()) {
        if (frame.error().code == ErrorCode::Cancelled && frame.error().message == "woken") {
          char buf[64];
          while (::read(wake[0], buf, sizeof buf) > 0) {
          }
          continue;
        }
        return fail(frame.error());
      }
      std::lock_guard lock(mu);
      if (frame->request_id() == 0) {
        if (frame->has_task_results())
          for (auto& r : *frame->mutable_task_results()->mutable_results())
            results.push_back(from_pb(r));
      } else if (auto it = replies.find(frame->request_id()); it != replies.end()) {
        if (frame->has_error())
          it->second = Result<pb::Envelope>(net::error_from_pb(frame->error()));
        else
          it->second = Result<pb::Envelope>(std::move(*frame));
      }
      cv.notify_all();
    }
  }

  Result<pb::Envelope> call(pb::Envelope env) {
    std::unique_lock lock(mu);
    if (ended)
      return end_error;
    std::uint64_t rid = next_rid++;
    env.set_request_id(rid);
    replies.emplace(rid, std::nullopt);
    outgoing.push_back(std::move(env));
    poke();
    // Requests that store something are answered after a commit; allow for a loaded hub.
    bool answered = cv.wait_for(lock, std::chrono::milliseconds(std::max<std::int64_t>(timeout_ms, 60'000)), [&] {
      return ended || replies[rid].has_value();
    });
    auto it = replies.find(rid);
    std::optional<Result<pb::Envelope>> got = std::move(it->second);
    replies.erase(it);
    if (got)
      return std::move(*got);
    if (!answered)
      return make_error(ErrorCode::Timeout, "no answer from the hub in time");
    return end_error;
  }
};

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;

Result<std::unique_ptr<Session>> Session::connect(const ConnectOptions& options) {
  ConnectOptions o = options;
  if (o.client_name == "client")
    o.client_name = "session";
  SORTIE_ASSIGN_OR_RETURN(opened, detail::open_hub_link(o));
  auto impl = std::make_unique<Impl>();
  impl->link = std::move(opened.link);
  impl->timeout_ms = options.timeout_ms;
  impl->start();
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

void Session::close() { impl_->stop(); }

Result<std::vector<std::uint64_t>> Session::submit(std::vector<TaskCall> calls, bool watch) {
  if (calls.empty())
    return make_error(ErrorCode::InvalidArgument, "nothing to submit: no calls");
  pb::Envelope env;
  auto* req = env.mutable_task_submit();
  req->set_watch(watch);
  std::size_t bytes = 0;
  for (auto& c : calls) {
    auto* call = req->add_calls();
    bytes += c.payload.size();
    call->set_handler(std::move(c.handler));
    call->set_payload(std::move(c.payload));
    call->set_engine_id(c.engine);
    call->set_label(std::move(c.label));
    call->set_retries(c.retries);
    call->set_timeout_ms(c.timeout_ms);
    call->set_priority(c.priority);
  }
  if (bytes > (60u << 20))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} MiB of arguments in one submission: at most 60 MiB in all "
                                  "(submit in parts; a larger value goes in a shared file whose "
                                  "path the task gets)",
                                  bytes >> 20));
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env)));
  if (!reply.has_task_submit_reply())
    return unexpected("a task submission");
  std::vector<std::uint64_t> ids;
  for (std::uint32_t i = 0; i < reply.task_submit_reply().count(); ++i)
    ids.push_back(reply.task_submit_reply().first_id() + i);
  return ids;
}

Result<void> Session::watch(const std::vector<std::uint64_t>& ids) {
  pb::Envelope env;
  for (auto id : ids)
    env.mutable_task_watch()->add_task_ids(id);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env)));
  (void)reply;
  return ok_result();
}

Result<std::vector<TaskResult>> Session::next_results(std::int64_t timeout_ms) {
  std::unique_lock lock(impl_->mu);
  auto ready = [&] { return !impl_->results.empty() || impl_->ended; };
  if (timeout_ms < 0)
    impl_->cv.wait(lock, ready);
  else
    impl_->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready);
  std::vector<TaskResult> out;
  while (!impl_->results.empty()) {
    out.push_back(std::move(impl_->results.front()));
    impl_->results.pop_front();
  }
  if (out.empty() && impl_->ended)
    return impl_->end_error;
  return out;
}

Result<std::vector<EngineInfo>> Session::engines(const std::string& label) {
  pb::Envelope env;
  env.mutable_engine_list()->set_label(label);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env)));
  if (!reply.has_engine_list_reply())
    return unexpected("an engine list");
  std::vector<EngineInfo> out;
  for (const auto& e : reply.engine_list_reply().engines())
    out.push_back({e.id(), JobId(e.job_id()), e.node(), e.label(), e.busy(), e.rank(), e.size(),
                   e.pid(), e.tasks_done(), e.running(), e.started_ms(), e.kind()});
  return out;
}

Result<std::vector<TaskInfo>> Session::tasks(const std::vector<std::uint64_t>& ids,
                                             std::uint64_t limit) {
  pb::Envelope env;
  auto* req = env.mutable_task_list();
  for (auto id : ids)
    req->add_ids(id);
  req->set_limit(limit);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env)));
  if (!reply.has_task_list_reply())
    return unexpected("a task list");
  std::vector<TaskInfo> out;
  for (const auto& t : reply.task_list_reply().tasks()) {
    TaskInfo i;
    i.id = t.id();
    i.state = t.running() ? "running"
              : t.state() == pb::TaskResult::STATE_UNSPECIFIED
                  ? "queued"
                  : task_outcome_name(outcome_of(t.state()));
    i.engine = t.engine_id();
    i.label = t.label();
    i.handler = t.handler();
    i.submit_ms = t.submit_ms();
    i.start_ms = t.start_ms();
    i.end_ms = t.end_ms();
    i.error_type = t.error_type();
    i.error_message = t.error_message();
    i.attempts = t.attempts();
    i.payload_bytes = t.payload_bytes();
    i.result_bytes = t.result_bytes();
    out.push_back(std::move(i));
  }
  return out;
}

Result<TaskForgetSummary> Session::forget(const std::vector<std::uint64_t>& ids) {
  pb::Envelope env;
  for (auto id : ids)
    env.mutable_task_forget()->add_ids(id);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env)));
  if (!reply.has_task_forget_reply())
    return unexpected("a task forget");
  const auto& r = reply.task_forget_reply();
  return TaskForgetSummary{r.forgotten(), r.not_ended(), r.not_found()};
}

// -------------------------------------------------------------------------------------------
// EngineLink

struct EngineLink::Impl {
  net::BlockingLink link;
  std::uint64_t id = 0;
  std::string label;
  std::uint32_t rank = 0, size = 1;
  std::string kind;
  std::unordered_set<std::uint64_t> running;        ///< taken, not yet answered
  std::unordered_map<std::uint64_t, TaskResult> unacked; ///< answered, not yet stored

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
    for (const auto& [tid, res] : unacked) {
      auto* u = r->add_unacked();
      u->set_task_id(tid);
      u->set_state(res.state == TaskOutcome::Done ? pb::TaskResult::DONE : pb::TaskResult::FAILED);
      u->set_payload(res.value);
      u->set_error_type(res.error_type);
      u->set_error_message(res.error_message);
      u->set_traceback(res.traceback);
      u->set_stdout(res.output);
      u->set_engine_id(id);
      u->set_start_ms(res.start_ms);
      u->set_end_ms(res.end_ms);
    }
    return link.send(env);
  }

  void welcomed(const pb::EngineWelcome& w) {
    id = w.engine_id();
    label = w.label();
    for (auto t : w.drop())
      running.erase(t);
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
                                                        std::int64_t timeout_ms) {
  if (socket.empty() || key.empty())
    return make_error(ErrorCode::InvalidArgument,
                      "no engine socket: an engine runs as a job of kind \"engine\" (`sortie "
                      "engine start`), which sets SORTIE_ENGINE_SOCKET and SORTIE_ENGINE_KEY");
  auto impl = std::make_unique<Impl>();
  SORTIE_ASSIGN_OR_RETURN(link, net::BlockingLink::connect_unix(socket, timeout_ms));
  impl->link = std::move(link);
  SORTIE_TRY(impl->link.handshake(key, pb::ROLE_ENGINE, "engine", timeout_ms));
  impl->rank = rank;
  impl->size = size;
  impl->kind = kind;
  SORTIE_TRY(impl->send_ready());
  while (true) {
    SORTIE_ASSIGN_OR_RETURN(env, impl->link.receive(timeout_ms));
    if (env.has_error())
      return net::error_from_pb(env.error());
    if (env.has_engine_welcome()) {
      impl->welcomed(env.engine_welcome());
      break;
    }
  }
  return std::unique_ptr<EngineLink>(new EngineLink(std::move(impl)));
}

Result<std::vector<EngineLink::Task>> EngineLink::next(std::int64_t timeout_ms) {
  std::vector<Task> out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (out.empty()) {
    std::int64_t left = timeout_ms < 0 ? -1
                                       : std::max<std::int64_t>(
                                             0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                    deadline - std::chrono::steady_clock::now())
                                                    .count());
    auto env = impl_->link.receive(left);
    if (!env.ok()) {
      if (env.error().code == ErrorCode::Timeout)
        return out;
      return env.error();
    }
    switch (env->body_case()) {
    case pb::Envelope::kTaskRun:
      for (auto& t : *env->mutable_task_run()->mutable_tasks()) {
        if (impl_->unacked.contains(t.task_id()) || impl_->running.contains(t.task_id()))
          continue; // ran here already; the hub will hear of it again
        impl_->running.insert(t.task_id());
        out.push_back({t.task_id(), std::move(*t.mutable_handler()), std::move(*t.mutable_payload()),
                       t.timeout_ms()});
      }
      break;
    case pb::Envelope::kTaskDoneAck:
      for (auto id : env->task_done_ack().task_ids())
        impl_->unacked.erase(id);
      break;
    case pb::Envelope::kEngineRejoin:
      SORTIE_TRY(impl_->send_ready());
      break;
    case pb::Envelope::kEngineWelcome:
      impl_->welcomed(env->engine_welcome());
      break;
    case pb::Envelope::kError:
      return net::error_from_pb(env->error());
    default:
      break;
    }
    if (timeout_ms >= 0 && std::chrono::steady_clock::now() >= deadline)
      break;
  }
  return out;
}

Result<void> EngineLink::send(std::vector<TaskResult> results) {
  // Frames stay below the protocol's limit: results are sent in several when large, and one
  // result too large to send at all fails its task saying so.
  constexpr std::size_t kFrameBudget = 16u << 20;
  constexpr std::size_t kMaxValue = 60u << 20;
  pb::Envelope env;
  std::size_t bytes = 0;
  for (auto& r : results) {
    if (r.value.size() + r.output.size() > kMaxValue) {
      std::size_t size = r.value.size() + r.output.size();
      r = TaskResult{r.id, TaskOutcome::Failed, {}, "ValueTooLarge",
                     fmt::format("the task's result and output are {} MiB: at most {} MiB go "
                                 "back in one result (write larger values to a shared file "
                                 "and return its path)",
                                 size >> 20, kMaxValue >> 20),
                     {}, {}, 0, r.start_ms, r.end_ms};
    }
    std::size_t size = r.value.size() + r.output.size() + r.traceback.size() + 64;
    if (bytes > 0 && bytes + size > kFrameBudget) {
      SORTIE_TRY(impl_->link.send(env));
      env.Clear();
      bytes = 0;
    }
    bytes += size;
    impl_->running.erase(r.id);
    auto* d = env.mutable_task_done()->add_results();
    d->set_task_id(r.id);
    d->set_state(r.state == TaskOutcome::Done ? pb::TaskResult::DONE : pb::TaskResult::FAILED);
    d->set_payload(r.value);
    d->set_error_type(r.error_type);
    d->set_error_message(r.error_message);
    d->set_traceback(r.traceback);
    d->set_stdout(r.output);
    d->set_engine_id(impl_->id);
    d->set_start_ms(r.start_ms);
    d->set_end_ms(r.end_ms);
    r.engine = impl_->id;
    impl_->unacked.emplace(r.id, std::move(r));
  }
  return env.has_task_done() ? impl_->link.send(env) : ok_result();
}

} // namespace sortie
