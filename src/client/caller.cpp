// SPDX-License-Identifier: Apache-2.0
// Client::call's machinery: submit a handler call; its result fulfils its promise on arrival.
#include "client/caller.hpp"

#include <mutex>
#include <unordered_map>

#include <fmt/format.h>

namespace sortie {

namespace detail {

namespace {
constexpr std::size_t kTransientArgument = 4u << 20; // Session sends larger ones in pieces
} // namespace

Result<std::string> call_outcome(const std::string& handler, TaskResult r) {
  switch (r.state) {
  case TaskOutcome::Done:
    return std::move(r.value);
  case TaskOutcome::Unknown:
    return make_error(ErrorCode::NotFound, fmt::format("task {} does not exist (forgotten)", r.id));
  case TaskOutcome::Lost:
    return make_error(ErrorCode::Unavailable,
                      fmt::format("{}: {} (call of '{}', task {})", r.error_type, r.error_message,
                                  handler, r.id));
  case TaskOutcome::Failed:
    break;
  }
  if (auto code = engine_error_code(r.error_type))
    return make_error(*code, fmt::format("{} (handler '{}' on engine {}, task {})",
                                         r.error_message, handler, r.engine, r.id));
  ErrorCode code = r.error_type == "TaskTimeout" ? ErrorCode::Timeout : ErrorCode::Internal;
  return make_error(code, fmt::format("{}: {} (handler '{}' on engine {}, task {})", r.error_type,
                                      r.error_message, handler, r.engine, r.id));
}

struct Caller::Impl {
  std::unique_ptr<Session> session;
  std::mutex mu;
  struct Pending {
    std::string handler;
    std::promise<Result<std::string>> promise;
  };
  std::unordered_map<std::uint64_t, Pending> pending;  ///< guarded by mu
  std::unordered_map<std::uint64_t, TaskResult> early; ///< results before their call returned
  bool ended = false;
  Error end_error;

  /// On the session's I/O thread: each result fulfils its call's promise at once.
  void arrived(Result<std::vector<TaskResult>> got) {
    std::lock_guard lock(mu);
    if (!got.ok()) {
      ended = true;
      end_error = got.error();
      for (auto& [id, p] : pending)
        p.promise.set_value(make_error(got.error().code,
                                       fmt::format("the link to the hub ended before task {} "
                                                   "finished: {}",
                                                   id, got.error().message)));
      pending.clear();
      return;
    }
    for (auto& r : *got) {
      auto it = pending.find(r.id);
      if (it == pending.end()) {
        early.emplace(r.id, std::move(r));
        continue;
      }
      it->second.promise.set_value(call_outcome(it->second.handler, std::move(r)));
      pending.erase(it);
    }
  }
};

Caller::Caller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Caller::~Caller() { impl_->session->close(); }

Result<std::unique_ptr<Caller>> Caller::open(const ConnectOptions& options) {
  ConnectOptions o = options;
  o.start_if_needed = false;
  SORTIE_ASSIGN_OR_RETURN(session, Session::connect(o));
  auto impl = std::make_unique<Impl>();
  impl->session = std::move(session);
  Impl* raw = impl.get();
  impl->session->on_results([raw](Result<std::vector<TaskResult>> got) {
    raw->arrived(std::move(got));
  });
  return std::unique_ptr<Caller>(new Caller(std::move(impl)));
}

std::future<Result<std::string>> Caller::call(const std::string& handler, std::string payload,
                                              const CallOptions& options) {
  std::promise<Result<std::string>> promise;
  auto future = promise.get_future();
  if (handler.empty()) {
    promise.set_value(make_error(ErrorCode::InvalidArgument,
                                 "no handler named: call(\"evolve\", payload) calls the handler "
                                 "\"evolve\" of a compiled engine"));
    return future;
  }
  // A call is a remote procedure call: its caller waits on this link, so it is not stored
  // (transient), unless its argument is too large to travel inline.
  bool transient = payload.size() <= kTransientArgument;
  TaskCall c{handler,         std::move(payload), options.engine,   options.label,
             options.retries, options.timeout_ms, options.priority, transient};
  auto ids = impl_->session->submit({std::move(c)});
  if (!ids.ok()) {
    promise.set_value(ids.error());
    return future;
  }
  std::uint64_t id = ids->front();
  std::lock_guard lock(impl_->mu);
  if (auto it = impl_->early.find(id); it != impl_->early.end()) {
    promise.set_value(call_outcome(handler, std::move(it->second)));
    impl_->early.erase(it);
  } else if (impl_->ended) {
    promise.set_value(impl_->end_error);
  } else {
    impl_->pending.emplace(id, Impl::Pending{handler, std::move(promise)});
  }
  return future;
}

Result<std::string> Caller::call_and_wait(const std::string& handler, std::string payload,
                                          const CallOptions& options) {
  std::future<Result<std::string>> future;
  impl_->session->read_here([&] {
    future = call(handler, std::move(payload), options);
    impl_->session->wait_until(
        [&] { return future.wait_for(std::chrono::seconds(0)) == std::future_status::ready; });
  });
  return future.get();
}

} // namespace detail
} // namespace sortie
