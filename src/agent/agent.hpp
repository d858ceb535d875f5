// SPDX-License-Identifier: Apache-2.0
// `sortie agent`: the process on each node of a pilot. It connects to the hub, registers its
// capacity, and runs the jobs it is assigned.
//
// Design. One event loop owns everything. Assigned jobs wait in a launch queue and start, in
// order, the moment slots are free (no round trip to the hub per job). Each job runs in its own
// session with its stdout and stderr on pipes; output is read in chunks against a credit the hub
// returns once it has written them, so a chatty job blocks instead of growing our memory. Events
// (started, finished) and output leave in the order they happened, batched per loop turn.
// Finished results are kept until the hub acknowledges them as durable; if the link drops, jobs
// keep running while the agent reconnects (for the reconnect window), then it reports what runs
// and what finished meanwhile. If it cannot reconnect in time, it kills its jobs and exits. If the
// agent itself dies, its keeper process kills the jobs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace sortie::agent {

struct AgentOptions {
  std::filesystem::path hub_file; ///< hub.json of the hub to join
  std::uint64_t pilot = 0;
  std::string node_name; ///< empty: this host's name
  std::string address;   ///< how other nodes reach this one (MPI hostfiles); empty: host name
  std::uint32_t slots = 0; ///< 0: the number of cores
  std::string label;
  std::int64_t connect_window_ms = 60'000; ///< how long to try the first connection
  std::vector<std::uint32_t> gpus; ///< declared GPU devices; empty: detected
  bool gpus_declared = false;
  std::uint64_t memory = 0;        ///< bytes jobs may reserve; 0: the node's memory
  std::int64_t walltime_end_ms = 0;
  /// auto (cgroups if writable, else rlimit), cgroup, rlimit or none; SORTIE_AGENT_MEMORY_LIMITS.
  std::string memory_limits = "auto";
  /// --stdio: the link runs over these descriptors (an ssh session's), authenticated with
  /// `stdio_key`; there is no reconnecting: when the link ends, the agent kills its jobs and exits.
  int stdio_in = -1;
  int stdio_out = -1;
  std::string stdio_key;
};

/// NVIDIA GPUs of this node (/proc/driver/nvidia/gpus), as device ids 0..N-1.
std::vector<std::uint32_t> detect_gpus();

/// Runs the agent until the hub shuts it down (exit code 0) or it gives up (non-zero).
int run_agent(const AgentOptions& options);

} // namespace sortie::agent
