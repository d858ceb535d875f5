// SPDX-License-Identifier: Apache-2.0
// A clock that moves only when a test says so.
#pragma once

#include "common/clock.hpp"

namespace sortie::testing {

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
