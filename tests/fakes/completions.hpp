// SPDX-License-Identifier: Apache-2.0
// A stand-in for the event loop that receives the store thread's completions, so store tests
// can wait for them without an io_context.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

namespace sortie::testing {

class Completions {
public:
  std::function<void(std::function<void()>)> poster() {
    return [this](std::function<void()> f) {
      std::lock_guard l(mu_);
      q_.push_back(std::move(f));
      cv_.notify_all();
    };
  }
  /// Runs completions until `done()` holds; false after 10 s without it.
  template <typename Pred>
  bool run_until(Pred done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      std::unique_lock l(mu_);
      if (!cv_.wait_until(l, deadline, [&] { return !q_.empty(); }))
        return false;
      auto f = std::move(q_.front());
      q_.pop_front();
      l.unlock();
      f();
    }
    return true;
  }

private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> q_;
};

} // namespace sortie::testing
