// SPDX-License-Identifier: Apache-2.0
// Launchers start a pilot's agents somewhere and stop them. This is the local one's shape; ssh,
// Slurm, Grid Engine and MPI launchers implement the same interface (submit N agents, cancel, and
// say whether a process is alive) in later work.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sortie/ids.hpp"
#include "sortie/result.hpp"

namespace sortie::launch {

struct AgentRequest {
  std::string node_name;
  std::uint32_t slots = 1;
  std::string label;
  std::vector<std::uint32_t> gpus; ///< declared GPU devices; empty: the agent detects them
  std::uint64_t memory = 0;        ///< bytes jobs may reserve; 0: the node's memory
  std::int64_t walltime_end_ms = 0;
};

struct PilotRequest {
  PilotId pilot;
  std::vector<AgentRequest> agents;
};

/// What a launcher started: for local pilots, one process per agent.
struct Allocation {
  std::vector<int> pids;
};

class Launcher {
public:
  virtual ~Launcher() = default;
  /// Starts the pilot's agents. On error nothing is left running.
  virtual Result<Allocation> submit(const PilotRequest& request) = 0;
  /// Asks the allocation's processes to stop (they kill their jobs first).
  virtual void cancel(const Allocation& allocation) = 0;
  /// True while the process exists and is not a zombie.
  virtual bool process_alive(int pid) const = 0;
};

} // namespace sortie::launch
