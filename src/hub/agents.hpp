// SPDX-License-Identifier: Apache-2.0
// Agents: registration (a new agent gets an id and a session key), reconnection (it proves the
// key, and what it reports running is reconciled with what the hub believes), its job events
// (started, finished: the outcome of each attempt), its link ending (it may come back within its
// lease; its jobs wait) and its end for good (its jobs are lost or requeued). Takes AgentRegister
// (through the server) and JobEvents.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "hub/jobs.hpp"
#include "hub/placement.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"

namespace sortie::hub {

/// Past an agent's lease, the hub waits this much more before it takes the agent's jobs for
/// lost (time for its keeper's kill).
inline constexpr std::int64_t kReconnectMarginMs = 5'000;

class Agents {
public:
  Agents(Core& core, Jobs& jobs, Placement& placement)
      : core_(core), jobs_(jobs), placement_(placement) {}
  void register_with(Router& router);

  /// An agent's first frame after the handshake. Replies (after a commit) with AgentRegistered.
  /// `stdio`: the link is an ssh session of a remote pilot (it cannot reconnect).
  void on_register(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg, bool stdio);
  /// The agent's link ended: `goodbye` when the agent said it is leaving.
  void on_closed(const std::shared_ptr<Peer>& peer, const Error& reason, bool goodbye);
  /// A local agent's process died: its jobs are lost once its keeper has killed them.
  void local_agent_died(AgentId id, const std::string& why);
  /// The agent is gone for good. `orderly`: it left on purpose (goodbye, the hub stopping), so
  /// what it never reported started did not start.
  void gone(AgentId id, const std::string& why, bool orderly = false);
  /// How long an agent's keeper lets it live without a heartbeat the hub received.
  std::int64_t lease_ms(bool stdio) const;
  /// Agents whose lease is over, and dead local agents whose keepers are done.
  void tick();

private:
  void reconnect(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg, Agent& a);
  void add(const std::shared_ptr<Peer>& peer, const pb::AgentRegister& reg, bool stdio,
           std::vector<std::uint64_t> kill);
  void finish_registration(const std::shared_ptr<Peer>& peer, AgentId id,
                           const std::vector<std::uint64_t>& kill);
  void handle_job_events(Agent& agent, const pb::JobEvents& events);
  void apply_started(Agent& agent, const pb::JobEvent& ev);
  void apply_finished(Agent& agent, const pb::JobEvent& ev);
  /// The state a finished attempt ends in, with its reason set on the job.
  JobState outcome(Job& job, const pb::JobEvent& ev) const;

  Core& core_;
  Jobs& jobs_;
  Placement& placement_;
};

} // namespace sortie::hub
