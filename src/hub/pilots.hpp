// SPDX-License-Identifier: Apache-2.0
// Pilots, the whole state machine in one place: local pilots (agents started on this machine)
// and remote ones, each followed by its driver (local processes, ssh, Slurm, Grid Engine), their
// states from what their
// drivers report and what their agents do, walltimes (draining, then the end), cancellation,
// config.toml's pilots, and following batch pilots again after a restart. Takes PilotAddRequest
// and PilotCancelRequest.
#pragma once

#include <functional>
#include <memory>
#include <unordered_map>

#include "hub/agents.hpp"
#include "hub/host.hpp"
#include "hub/resources.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"
#include "launch/drivers.hpp"

namespace sortie::hub {

class Pilots {
public:
  Pilots(Core& core, Agents& agents, Resources& resources, HubHost& host);
  void register_with(Router& router);

  /// After a restart: batch pilots are followed again; ssh pilots ended with the old hub; pilots
  /// that were starting have no agents coming back. Then config.toml's pilots that do not run.
  void resume();
  /// Walltimes: draining as the end nears, then the end.
  void tick();
  /// Shuts a pilot's agents down (their running jobs are requeued).
  void stop(Pilot& pilot, const std::string& reason);
  /// The hub is stopping: every pilot's agents and drivers are told.
  void stop_all();
  /// Decides the pilot's state from its agents, processes and driver.
  void update_state(Pilot& pilot);

private:
  void handle_add(const Sender& from, const pb::PilotAddRequest& req);
  void add_local(const Sender& from, pb::PilotSpec spec);
  void handle_cancel(const Sender& from, const pb::PilotCancelRequest& req);
  void changed(Pilot& pilot);
  void set_state(Pilot& pilot, PilotState to, std::string reason = {});
  /// Stores a new pilot (state submitting); once committed, runs `start` and answers the
  /// requester with the pilot's id or `start`'s error.
  void store(Pilot pilot, const Sender& from, std::function<Result<void>(Pilot&)> start);
  /// Validates a pilot request for a remote resource and fills defaults.
  Result<void> check_remote(pb::PilotSpec& spec, const pb::ResourceSpec& resource) const;
  /// Creates the pilot's driver and starts it (or, with a batch id, resumes following it).
  void start_driver(Pilot& pilot);
  void on_report(PilotId id, const launch::PilotReport& report);
  /// A local pilot's agent process exited: if its link already closed, its jobs are lost now.
  void local_process_exit(Pilot& pilot, int pid, int status);
  /// An ssh link of the pilot ended before its agent registered: the pilot says why, and fails
  /// when none of its agents is up.
  void link_failed(PilotId id, const std::string& link, const Error& error);
  /// Whether any of the pilot's agents is connected.
  bool any_up(const Pilot& pilot) const;
  /// Removes what the pilot's driver runs (its batch job, its ssh processes).
  void cancel_driver(Pilot& pilot);
  void start_configured();
  void on_agent_up(Agent& agent);
  void on_agent_gone(Agent& agent, const std::string& why);

  Core& core_;
  Agents& agents_;
  Resources& resources_;
  HubHost& host_;
  std::unordered_map<PilotId, std::unique_ptr<launch::Driver>> drivers_;
};

} // namespace sortie::hub
