// SPDX-License-Identifier: Apache-2.0
// Drivers start a remote pilot's agents and follow it until it is gone: an ssh driver keeps one
// `ssh host sortie agent --stdio` process per node and hands its pipes to the hub as an agent
// link; batch drivers (Slurm, Grid Engine) submit a batch script whose job starts one agent per
// node, poll the batch system for the job's state, and cancel it. They tell the hub what happened
// through DriverHooks; the hub decides the pilot's state from that and from its agents.
//
// Local pilots (agents on this machine) have a driver too (local_driver.hpp): every pilot is
// started, followed and cancelled the same way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "launch/process.hpp"
#include "launch/remote.hpp"
#include "protocol/link.hpp"
#include "protocol/sortie.pb.h"
#include "sortie/ids.hpp"

namespace sortie::launch {

/// What a driver reports about its pilot.
struct PilotReport {
  enum class Kind {
    Submitted, ///< the batch system took the job (batch_id set), or the ssh processes started
    Pending,   ///< waiting in the batch queue (detail: the scheduler's reason)
    Running,   ///< the batch job runs (agents may not have registered yet)
    Gone,      ///< every process or the batch job has ended (detail: how)
    Failed,    ///< it could not be started (detail: the error, e.g. sbatch's message)
    NodeGone,  ///< one node's process ended while others run (detail: how)
  };
  Kind kind;
  std::string detail;
  std::string batch_id;
  std::vector<int> pids; ///< Submitted, local pilots: the agent processes started
  int pid = 0;           ///< NodeGone/Gone, local pilots: the agent process that exited
  int status = 0;        ///< and its wait status
};

struct DriverHooks {
  std::function<void(PilotId, const PilotReport&)> report;
  /// An agent link over a process's pipes, to be authenticated with `key` (raw bytes).
  std::function<void(PilotId, std::unique_ptr<net::ByteStream>, std::string key)> agent_link;
};

struct DriverContext {
  asio::any_io_executor executor;
  ChildWatch* watch = nullptr;
  PilotId pilot;
  pb::PilotSpec spec;
  pb::ResourceSpec resource;
  std::vector<pb::ResourceSpec> gateways; ///< outermost first
  std::filesystem::path sortie_exe;       ///< this hub's binary
  std::filesystem::path profile_dir;
  std::filesystem::path log_dir;          ///< agent and batch logs
  std::int64_t poll_interval_ms = 5000;   ///< batch: squeue/qstat period
  std::int64_t command_timeout_ms = 60'000;
  std::int64_t kill_grace_ms = 3000;
  std::string batch_id;                   ///< resuming after a hub restart
  std::int64_t walltime_end_ms = 0;       ///< local pilots: when the agents' walltime ends
};

class Driver {
public:
  virtual ~Driver() = default;
  /// Starts the pilot (or, with ctx.batch_id, resumes following it).
  virtual void start() = 0;
  /// Stops it: the hub has already asked its agents to shut down; this removes what is left
  /// (the batch job, ssh processes that do not end by themselves).
  virtual void cancel() = 0;
};

/// A driver for the resource's type (local, ssh, slurm, sge), or an error naming what is wrong.
Result<std::unique_ptr<Driver>> make_driver(DriverContext ctx, DriverHooks hooks);

/// Checks a resource definition (type, location, gateway names are the caller's).
Result<void> check_resource(const pb::ResourceSpec& spec);

} // namespace sortie::launch
