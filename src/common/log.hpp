// SPDX-License-Identifier: Apache-2.0
// Logging: fmt-style formatting in the caller, spdlog behind one function so that only log.cpp
// pays for spdlog's headers. Never log the profile token (STYLE.md, README "Security").
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace sortie::log {

enum class Level { Debug, Info, Warn, Error };

/// Sends logs to stderr ("-") or appends them to a file. Call once at process start.
void init(const std::string& process_name, const std::string& file, Level level);
void set_level(Level level);
bool enabled(Level level);
void write(Level level, std::string_view message);
void flush();

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Debug))
    write(Level::Debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Info))
    write(Level::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Warn))
    write(Level::Warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  if (enabled(Level::Error))
    write(Level::Error, fmt::format(f, std::forward<Args>(args)...));
}

/// A line that may repeat fast (accept failures, rejected connections): written at most once a
/// second, with how many were left out since. One instance per kind of line; one thread.
class RateLimited {
public:
  void warn(std::string_view message);

private:
  std::int64_t last_ms_ = -1'000'000;
  std::uint64_t suppressed_ = 0;
};

} // namespace sortie::log
