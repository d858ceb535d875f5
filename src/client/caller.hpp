// SPDX-License-Identifier: Apache-2.0
// Calls to engines' handlers for Client::call: a Session of its own whose I/O thread hands each
// result to the promise of its call.
#pragma once

#include <future>
#include <memory>
#include <string>

#include "sortie/client.hpp"
#include "sortie/tasks.hpp"

namespace sortie::detail {

class Caller {
public:
  static Result<std::unique_ptr<Caller>> open(const ConnectOptions& options);
  ~Caller();
  std::future<Result<std::string>> call(const std::string& handler, std::string payload,
                                        const CallOptions& options);
  /// call(), waited for on this thread, which reads the reply itself (Session::wait_until).
  Result<std::string> call_and_wait(const std::string& handler, std::string payload,
                                    const CallOptions& options);

private:
  struct Impl;
  explicit Caller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// What a caller gets for a task's result: its value, or the error it ended with.
Result<std::string> call_outcome(const std::string& handler, TaskResult result);

} // namespace sortie::detail
