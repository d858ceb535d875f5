// SPDX-License-Identifier: Apache-2.0
// Logging: fmt-style formatting in the caller, spdlog behind one function so that only log.cpp
// pays for spdlog's headers. Never log the profile token (STYLE.md, README "Security").
#pragma once

#include <fmt/format.h>

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

} // namespace sortie::log
