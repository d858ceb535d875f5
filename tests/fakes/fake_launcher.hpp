// SPDX-License-Identifier: Apache-2.0
// A Launcher that starts nothing: handler tests play the agents themselves.
#pragma once

#include <unordered_set>
#include <vector>

#include "launch/launcher.hpp"

namespace sortie::testing {

class FakeLauncher final : public launch::Launcher {
public:
  // launch::Launcher
  Result<launch::Allocation> submit(const launch::PilotRequest& request) override {
    requests.push_back(request);
    launch::Allocation a;
    for (std::size_t i = 0; i < request.agents.size(); ++i) {
      a.pids.push_back(next_pid);
      alive.insert(next_pid++);
    }
    return a;
  }
  void cancel(const launch::Allocation& allocation) override {
    for (int pid : allocation.pids)
      cancelled.push_back(pid);
  }
  bool process_alive(int pid) const override { return alive.contains(pid); }

  std::vector<launch::PilotRequest> requests;
  std::vector<int> cancelled;
  std::unordered_set<int> alive;
  int next_pid = 50'000;
};

class ManualClock final : public Clock {
public:
  TimeMs now_ms() const override { return wall; }
  std::int64_t monotonic_ms() const override { return mono; }
  void advance(std::int64_t ms) {
    wall += ms;
    mono += ms;
  }
  TimeMs wall = 1'700'000'000'000;
  std::int64_t mono = 1'000;
};

} // namespace sortie::testing
