// SPDX-License-Identifier: Apache-2.0
// Sessions: task calls and their pushed results, one I/O thread per session.
#include "sortie/tasks.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "client/connect.hpp"
#include "client/values.hpp"
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

constexpr std::size_t kOutputKept = 16u << 20; // followed output not taken yet, per session

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

// A compiled engine's handler errors travel as the error_type "sortie::Error(<code>)".
std::string engine_error_type(ErrorCode code) {
  return fmt::format("sortie::Error({})", error_code_name(code));
}

std::optional<ErrorCode> engine_error_code(std::string_view type) {
  for (int c = static_cast<int>(ErrorCode::InvalidArgument); c <= static_cast<int>(ErrorCode::Internal); ++c)
    if (type == engine_error_type(static_cast<ErrorCode>(c)))
      return static_cast<ErrorCode>(c);
  return std::nullopt;
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
  std::deque<pb::Envelope> outgoing; ///< for the I/O thread to send (TLS links)
  std::unordered_map<std::uint64_t, std::optional<Result<pb::Envelope>>> replies;
  std::vector<TaskResult> results;
  std::deque<TaskOutputPiece> output;
  std::size_t output_bytes = 0;
  std::unordered_map<std::uint64_t, std::pair<TaskResult, std::uint64_t>> partial; ///< large
  bool ended = false;
  Error end_error;
  std::uint64_t next_rid = 1;
  /// Plain links: callers write their requests themselves (no wake-up of the I/O thread).
  std::mutex send_mu;
  std::string send_buffer; ///< guarded by send_mu
  /// Set once, before results arrive: results go to it on the I/O thread (Session::on_results).
  ResultHandler on_results;
  bool told_end = false; ///< on_results was given the end; guarded by mu
  /// Who reads the link (guarded by mu): the I/O thread, unless threads in wait_until() want to
  /// (plain links); it parks meanwhile.
  int foreground_wanted = 0;
  bool foreground_reading = false;
  bool io_parked = false;
  std::thread::id reader; ///< the thread in read_here(), whose requests' replies it reads
  /// Submissions whose caller takes the results that come with their reply (submit()'s
  /// `arrived`), by request id: their ids once replied, and the results kept for the caller.
  /// The results thread is not woken for them: one thread hand-over fewer per round trip.
  struct Claim {
    std::uint64_t first = 0, count = 0;
    std::vector<TaskResult> results;
  };
  std::unordered_map<std::uint64_t, Claim> claims; ///< guarded by mu

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
      cv.notify_all(); // a parked I/O thread, threads in wait_until()
    }
    poke();
    if (io.joinable())
      io.join();
    {
      // A thread reading in await() leaves the link before it closes.
      std::unique_lock lock(mu);
      while (foreground_reading) {
        poke();
        cv.wait(lock);
      }
    }
    for (int& fd : wake)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
    {
      std::lock_guard lock(send_mu);
      link.close();
    }
    cv.notify_all();
    tell_end();
  }

  /// Gives on_results the error the session ended with, once.
  void tell_end() {
    Error e;
    {
      std::lock_guard lock(mu);
      if (!on_results || told_end || !ended)
        return;
      told_end = true;
      e = end_error;
    }
    on_results(e);
  }

  void poke() {
    if (wake[1] >= 0) {
      char c = 1;
      [[maybe_unused]] auto n = ::write(wake[1], &c, 1);
    }
  }

  void fail(const Error& e) {
    {
      std::lock_guard lock(mu);
      if (!ended) {
        ended = true;
        end_error = e;
      }
      cv.notify_all();
    }
    tell_end();
  }

  static bool woken(const Error& e) {
    return e.code == ErrorCode::Cancelled && e.message == "woken";
  }

  void drain_wake() {
    char buf[64];
    while (::read(wake[0], buf, sizeof buf) > 0) {
    }
  }

  /// The I/O thread: sends what callers queued, receives replies and pushed results.
  void run() {
    while (true) {
      std::deque<pb::Envelope> out;
      {
        std::unique_lock lock(mu);
        if (ended)
          return;
        if (foreground_wanted > 0) { // a thread in wait_until() reads meanwhile
          io_parked = true;
          cv.notify_all();
          cv.wait(lock, [&] { return ended || (foreground_wanted == 0 && !foreground_reading); });
          io_parked = false;
          continue;
        }
        out.swap(outgoing);
      }
      for (auto& env : out)
        if (auto r = link.send(env); !r.ok())
          return fail(r.error());
      auto frame = link.receive(-1);
      if (!frame.ok()) {
        if (woken(frame.error())) {
          drain_wake();
          continue;
        }
        return fail(frame.error());
      }
      std::unique_lock lock(mu);
      handle(*frame, lock);
    }
  }

  /// A result for `done`, or for the submitter that claimed its id.
  void arrive(TaskResult r, std::vector<TaskResult>& done) {
    for (auto& [rid, claim] : claims)
      if (r.id >= claim.first && r.id - claim.first < claim.count) {
        claim.results.push_back(std::move(r));
        return;
      }
    done.push_back(std::move(r));
  }

  /// Takes one frame from the hub; called and returns with `lock` (on mu) held, which it lets
  /// go while it gives results to on_results.
  void handle(pb::Envelope& env, std::unique_lock<std::mutex>& lock) {
    auto* frame = &env;
    std::vector<TaskResult> arrived; // for on_results, given outside the lock
    auto& done = on_results ? arrived : results;
    if (frame->request_id() == 0) {
      if (frame->has_task_output()) {
        auto& o = *frame->mutable_task_output();
        output_bytes += o.data().size();
        output.push_back({o.task_id(), o.offset(), std::move(*o.mutable_data())});
        while (output_bytes > kOutputKept && output.size() > 1) { // not taken: a gap
          output_bytes -= output.front().data.size();
          output.pop_front();
        }
      } else if (frame->has_task_results()) {
        for (auto& r : *frame->mutable_task_results()->mutable_results()) {
          std::uint64_t size = r.payload_size();
          if (size == 0) {
            arrive(from_pb(r), done);
          } else { // its value follows in pieces
            auto& [res, want] = partial[r.task_id()];
            res = from_pb(r);
            res.value.reserve(size);
            want = size;
          }
        }
      } else if (frame->has_value_chunk()) {
        auto& c = *frame->mutable_value_chunk();
        auto it = partial.find(c.task_id());
        if (it != partial.end() && c.offset() == it->second.first.value.size()) {
          it->second.first.value += c.data();
          if (it->second.first.value.size() >= it->second.second) {
            arrive(std::move(it->second.first), done);
            partial.erase(it);
          }
        }
      }
    } else if (auto it = replies.find(frame->request_id()); it != replies.end()) {
      if (auto c = claims.find(frame->request_id());
          c != claims.end() && frame->has_task_submit_reply()) {
        c->second.first = frame->task_submit_reply().first_id();
        c->second.count = frame->task_submit_reply().count();
      }
      if (frame->has_error())
        it->second = Result<pb::Envelope>(net::error_from_pb(frame->error()));
      else
        it->second = Result<pb::Envelope>(std::move(*frame));
    }
    cv.notify_all();
    if (!arrived.empty()) {
      lock.unlock();
      on_results(std::move(arrived));
      lock.lock();
      cv.notify_all(); // for await()s whose done() on_results made true
    }
  }

  using Clock = std::chrono::steady_clock;

  /// Waits, `lock` held, until done() or the session ended (true) or `deadline` (false; none:
  /// Clock::time_point::max()). On a plain link this thread reads and handles what arrives
  /// meanwhile, the I/O thread parked: the thread that waits is woken by the frame itself, not
  /// by the I/O thread after it.
  bool await(std::unique_lock<std::mutex>& lock, const std::function<bool()>& done,
             Clock::time_point deadline) {
    auto finished = [&] { return ended || done(); };
    if (!link.can_send_alongside()) {
      if (deadline == Clock::time_point::max()) {
        cv.wait(lock, finished);
        return true;
      }
      return cv.wait_until(lock, deadline, finished);
    }
    ++foreground_wanted;
    poke(); // the I/O thread leaves receive() and parks
    bool in_time = true;
    while (!finished()) {
      std::int64_t left = -1;
      if (deadline != Clock::time_point::max()) {
        left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now())
                   .count();
        if (left <= 0) {
          in_time = false;
          break;
        }
      }
      if (!io_parked || foreground_reading) { // not yet, or another thread reads
        if (left < 0)
          cv.wait(lock);
        else
          cv.wait_for(lock, std::chrono::milliseconds(left));
        continue;
      }
      foreground_reading = true;
      lock.unlock();
      auto frame = link.receive(left, left);
      lock.lock();
      foreground_reading = false;
      if (frame.ok()) {
        handle(*frame, lock);
      } else if (woken(frame.error())) {
        drain_wake();
      } else if (frame.error().code != ErrorCode::Timeout) {
        cv.notify_all();
        lock.unlock();
        fail(frame.error());
        lock.lock();
      }
      cv.notify_all();
    }
    --foreground_wanted;
    cv.notify_all();
    return in_time;
  }

  /// Sends a request and waits for its reply. `claim`: the request's results are kept for the
  /// caller (claims[*claim], which the caller erases).
  Result<pb::Envelope> call(pb::Envelope env, std::uint64_t* claim = nullptr) {
    std::unique_lock lock(mu);
    if (ended)
      return end_error;
    std::uint64_t rid = next_rid++;
    env.set_request_id(rid);
    replies.emplace(rid, std::nullopt);
    if (claim) {
      claims.emplace(rid, Claim{});
      *claim = rid;
    }
    if (link.can_send_alongside()) {
      lock.unlock();
      Result<void> sent = [&] {
        std::lock_guard send_lock(send_mu);
        return link.send_alongside(env, send_buffer);
      }();
      lock.lock();
      if (!sent.ok()) { // the I/O thread sees the link end too
        replies.erase(rid);
        return sent.error();
      }
    } else {
      outgoing.push_back(std::move(env));
      poke();
    }
    // Requests that store something are answered after a commit; allow for a loaded hub.
    auto deadline = Clock::now() + std::chrono::milliseconds(std::max<std::int64_t>(timeout_ms, 60'000));
    auto replied = [&] { return ended || replies[rid].has_value(); };
    // Read here only in read_here(): else the I/O thread's hand-over costs more than it saves.
    bool answered = reader == std::this_thread::get_id() ? await(lock, replied, deadline)
                                                         : cv.wait_until(lock, deadline, replied);
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

void Session::wait_until(const std::function<bool()>& done) {
  std::unique_lock lock(impl_->mu);
  impl_->await(lock, done, Impl::Clock::time_point::max());
}

void Session::read_here(const std::function<void()>& fn) {
  {
    std::lock_guard lock(impl_->mu);
    ++impl_->foreground_wanted;
    impl_->reader = std::this_thread::get_id();
  }
  impl_->poke();
  fn();
  std::lock_guard lock(impl_->mu);
  --impl_->foreground_wanted;
  impl_->reader = {};
  impl_->cv.notify_all();
}

void Session::on_results(ResultHandler handler) {
  std::vector<TaskResult> kept;
  {
    std::lock_guard lock(impl_->mu);
    impl_->on_results = std::move(handler);
    kept.swap(impl_->results);
  }
  if (!kept.empty())
    impl_->on_results(std::move(kept));
  impl_->tell_end();
}

Result<std::vector<std::uint64_t>> Session::submit(std::vector<TaskCall> calls, bool watch,
                                                   std::vector<TaskResult>* arrived) {
  std::uint64_t claim = 0;
  auto ids = submit_claiming(std::move(calls), watch, arrived && watch ? &claim : nullptr);
  if (claim) {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->claims.find(claim);
    *arrived = std::move(it->second.results);
    impl_->claims.erase(it);
  }
  return ids;
}

Result<std::vector<std::uint64_t>> Session::submit_claiming(std::vector<TaskCall> calls,
                                                           bool watch, std::uint64_t* claim) {
  if (calls.empty())
    return make_error(ErrorCode::InvalidArgument, "nothing to submit: no calls");
  pb::Envelope env;
  auto* req = env.mutable_task_submit();
  req->set_watch(watch);
  std::size_t bytes = 0;
  std::vector<std::pair<std::size_t, std::string>> large; // (call index, argument)
  for (auto& c : calls) {
    auto* call = req->add_calls();
    if (c.payload.size() > kMaxValueBytes)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("an argument of {} MiB: at most {} MiB", c.payload.size() >> 20,
                                    kMaxValueBytes >> 20));
    call->set_handler(std::move(c.handler));
    if (c.transient && c.payload.size() > kInlineValue)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("a transient call's argument is at most {} MiB (this one: "
                                    "{} MiB): submit it as a stored task",
                                    kInlineValue >> 20, c.payload.size() >> 20));
    call->set_transient(c.transient);
    if (c.payload.size() > kInlineValue) { // sent in pieces once the task has its id
      call->set_payload_size(c.payload.size());
      large.emplace_back(static_cast<std::size_t>(req->calls_size() - 1), std::move(c.payload));
    } else {
      bytes += c.payload.size();
      call->set_payload(std::move(c.payload));
    }
    call->set_engine_id(c.engine);
    call->set_label(std::move(c.label));
    call->set_retries(c.retries);
    call->set_timeout_ms(c.timeout_ms);
    call->set_priority(c.priority);
  }
  if (bytes > (60u << 20))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} MiB of small arguments in one submission: at most 60 MiB "
                                  "(submit in parts)",
                                  bytes >> 20));
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env), claim));
  if (!reply.has_task_submit_reply())
    return unexpected("a task submission");
  std::vector<std::uint64_t> ids;
  for (std::uint32_t i = 0; i < reply.task_submit_reply().count(); ++i)
    ids.push_back(reply.task_submit_reply().first_id() + i);
  // Large arguments, a piece at a time: each is stored before the next goes (the hub holds no
  // more than a piece of it in memory).
  for (const auto& [index, value] : large) {
    for (std::size_t offset = 0; offset < value.size(); offset += kValueChunk) {
      pb::Envelope piece;
      auto* c = piece.mutable_value_chunk();
      c->set_task_id(ids.at(index));
      c->set_part(pb::ValueChunk::ARGUMENT);
      c->set_offset(offset);
      c->set_total(value.size());
      c->set_data(value.data() + offset, std::min(kValueChunk, value.size() - offset));
      SORTIE_ASSIGN_OR_RETURN(ack, impl_->call(std::move(piece)));
      if (!ack.has_value_chunk_ack())
        return unexpected("a piece of an argument");
    }
  }
  return ids;
}

Result<void> Session::watch(const std::vector<std::uint64_t>& ids) {
  return watch_ids(*impl_, ids, false);
}

Result<void> Session::follow(const std::vector<std::uint64_t>& ids) {
  return watch_ids(*impl_, ids, true);
}

Result<void> Session::watch_ids(Impl& impl, const std::vector<std::uint64_t>& ids, bool follow) {
  pb::Envelope env;
  env.mutable_task_watch()->set_follow_output(follow);
  for (auto id : ids)
    env.mutable_task_watch()->add_task_ids(id);
  SORTIE_ASSIGN_OR_RETURN(reply, impl.call(std::move(env)));
  (void)reply;
  return ok_result();
}

Result<std::vector<TaskResult>> Session::next_results(std::int64_t timeout_ms) {
  SORTIE_ASSIGN_OR_RETURN(events, next_events(timeout_ms, false));
  return std::move(events.results);
}

Result<TaskEvents> Session::next_events(std::int64_t timeout_ms) {
  return next_events(timeout_ms, true);
}

Result<TaskEvents> Session::next_events(std::int64_t timeout_ms, bool with_output) {
  std::unique_lock lock(impl_->mu);
  auto ready = [&] {
    return !impl_->results.empty() || (with_output && !impl_->output.empty()) || impl_->ended;
  };
  if (timeout_ms < 0)
    impl_->cv.wait(lock, ready);
  else
    impl_->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready);
  TaskEvents out;
  out.results.swap(impl_->results);
  if (with_output) {
    out.output.assign(std::make_move_iterator(impl_->output.begin()),
                      std::make_move_iterator(impl_->output.end()));
    impl_->output.clear();
    impl_->output_bytes = 0;
  }
  if (out.results.empty() && out.output.empty() && impl_->ended)
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
                   e.pid(), e.tasks_done(), e.running(), e.started_ms(), e.kind(),
                   e.direct() ? "direct" : "agent"});
  return out;
}

Result<std::vector<TaskInfo>> Session::tasks(const std::vector<std::uint64_t>& ids,
                                             std::uint64_t limit, std::uint64_t* matched) {
  pb::Envelope env;
  auto* req = env.mutable_task_list();
  for (auto id : ids)
    req->add_ids(id);
  req->set_limit(limit);
  SORTIE_ASSIGN_OR_RETURN(reply, impl_->call(std::move(env)));
  if (!reply.has_task_list_reply())
    return unexpected("a task list");
  if (matched)
    *matched = reply.task_list_reply().matched();
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

} // namespace sortie
