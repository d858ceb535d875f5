// SPDX-License-Identifier: Apache-2.0
// Time sources. Domain code takes times as arguments or from an injected Clock so that tests
// control them (STYLE.md §5, Envoy time sources).
#pragma once

#include <chrono>
#include <cstdint>

namespace sortie {

/// Milliseconds since the Unix epoch: the unit of every time stored or sent.
using TimeMs = std::int64_t;

class Clock {
public:
  virtual ~Clock() = default;
  /// Wall-clock time, for records users read.
  virtual TimeMs now_ms() const = 0;
  /// Monotonic time in milliseconds, for deadlines.
  virtual std::int64_t monotonic_ms() const = 0;
};

class SystemClock final : public Clock {
public:
  TimeMs now_ms() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  std::int64_t monotonic_ms() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

inline TimeMs wall_now_ms() { return SystemClock().now_ms(); }

} // namespace sortie
