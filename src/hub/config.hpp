// SPDX-License-Identifier: Apache-2.0
// Hub parameters, read from the profile's config.toml ([hub] table) with defaults for all.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <vector>

#include "common/profile.hpp"
#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::hub {

struct HubConfig {
  Profile profile;
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 0; ///< 0: the previous run's port if free, else any
  std::int64_t heartbeat_interval_ms = 5'000;
  std::int64_t heartbeat_deadline_ms = 20'000;
  /// How long an agent keeps its jobs running while it cannot reach the hub; the hub waits this
  /// long (plus a margin) before it declares a silent agent's jobs lost.
  std::int64_t agent_reconnect_window_ms = 60'000;
  std::int64_t kill_grace_ms = 3'000;   ///< SIGTERM to SIGKILL on cancel
  std::int64_t output_retry_ms = 60'000; ///< how long a failed output write is tried again
  /// Launch-queue depth per agent, in rounds of its slots; 0 (auto): enough rounds for about
  /// kLaunchBufferMs of work at the jobs' recent run time, between 1 and 16.
  std::uint32_t launch_queue = 0;
  std::uint64_t output_credit = 8u << 20; ///< output bytes an agent may have in flight
  bool store_sync_full = true;
  std::uint32_t lost_retries = 3;       ///< times a job is requeued after its agent was lost
  std::int64_t handshake_timeout_ms = 10'000;
  std::filesystem::path self_exe;       ///< the sortie binary, to start local agents
  std::int64_t batch_poll_interval_ms = 5'000; ///< how often squeue/qstat are asked
  /// Jobs that ended longer ago than this are forgotten: rows, output files (0: kept for ever).
  std::int64_t job_retention_ms = 30LL * 24 * 3600 * 1000;
  /// Tasks that ended longer ago than this are forgotten with their results (0: kept for ever).
  std::int64_t task_retention_ms = 7LL * 24 * 3600 * 1000;
  /// Tasks an engine may be sent ahead of its results; up to engine_prefetch_max while its
  /// tasks are short (scheduler::PrefetchPace).
  std::uint32_t engine_prefetch = 4;
  std::uint32_t engine_prefetch_max = 32;
  /// A submission of more jobs than this must be confirmed (`--yes`; 0: never asked).
  std::uint64_t confirm_above = 100'000;
  /// Pilots this close to their walltime's end drain: they take no new jobs (at least 5 s, at
  /// most 1 min; a tenth of the walltime in between).
  std::vector<pb::ResourceSpec> resources; ///< [resources.NAME] tables
  std::vector<pb::PilotSpec> pilots;       ///< [[pilots]] tables, started at hub start
};

/// How long before its walltime ends a pilot of that walltime drains.
std::int64_t drain_margin_ms(std::int64_t walltime_ms);

/// Reads `path` if it exists (a missing file means defaults) into `config`. Errors name the file,
/// line and key, and say what is expected.
/// The same from the file's text (`path` names it in errors).
Result<void> parse_config(const std::string& content, const std::filesystem::path& path,
                          HubConfig& config);
Result<void> load_config_file(const std::filesystem::path& path, HubConfig& config);
/// Parses "host:port", "[v6]:port" or "host" (port 0).
Result<void> parse_listen(const std::string& text, HubConfig& config);

} // namespace sortie::hub
