// SPDX-License-Identifier: Apache-2.0
// Logging through spdlog: per-process files, levels, and rate-limited repeated warnings.
#include "common/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "common/assert.hpp"

namespace sortie::log {
namespace {

std::shared_ptr<spdlog::logger>& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    auto lg = std::make_shared<spdlog::logger>("sortie", std::move(sink));
    lg->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    lg->set_level(spdlog::level::warn);
    return lg;
  }();
  return l;
}

std::atomic<int> g_level{static_cast<int>(Level::Warn)};

spdlog::level::level_enum to_spd(Level level) {
  switch (level) {
  case Level::Debug:
    return spdlog::level::debug;
  case Level::Info:
    return spdlog::level::info;
  case Level::Warn:
    return spdlog::level::warn;
  case Level::Error:
    return spdlog::level::err;
  }
  return spdlog::level::info;
}

} // namespace

void init(const std::string& process_name, const std::string& file, Level level) {
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (file.empty() || file == "-") {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    try {
      sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file, false);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sortie: cannot open log file %s: %s; logging to stderr\n",
                   file.c_str(), e.what());
      sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    }
  }
  auto lg = std::make_shared<spdlog::logger>(process_name, std::move(sink));
  lg->set_pattern("%Y-%m-%dT%H:%M:%S.%e %n[%P] %^%l%$ %v");
  lg->flush_on(spdlog::level::info);
  logger() = std::move(lg);
  set_level(level);
}

void set_level(Level level) {
  g_level.store(static_cast<int>(level), std::memory_order_relaxed);
  logger()->set_level(to_spd(level));
}

bool enabled(Level level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void write(Level level, std::string_view message) { logger()->log(to_spd(level), message); }

void flush() { logger()->flush(); }

void RateLimited::warn(std::string_view message) {
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now().time_since_epoch())
                 .count();
  if (now - last_ms_ < 1000) {
    ++suppressed_;
    return;
  }
  last_ms_ = now;
  if (suppressed_ > 0)
    write(Level::Warn, fmt::format("{} ({} more like it left out)", message, suppressed_));
  else
    write(Level::Warn, message);
  suppressed_ = 0;
}

} // namespace sortie::log

namespace sortie::detail {
void check_failed(const char* file, int line, const char* condition, const char* why) {
  log::error("check failed at {}:{}: {} ({})", file, line, condition, why);
  log::flush();
  std::fprintf(stderr, "sortie: check failed at %s:%d: %s (%s)\n", file, line, condition, why);
  std::abort();
}
} // namespace sortie::detail
