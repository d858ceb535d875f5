// SPDX-License-Identifier: Apache-2.0
// The scheduler's adapter: nodes as the scheduler sees them (slots, launch-queue depth learnt from
// run times), one scheduling turn per loop turn after anything schedulable happened, and the
// assignments it decides: committed first, sent to agents after the commit (so a job the store
// calls queued was never handed out), with the nodes of a job across nodes.
#pragma once

#include "hub/jobs.hpp"
#include "hub/resources.hpp"
#include "hub/room.hpp"

namespace sortie::hub {

/// Rounds of its slots an agent's launch queue holds for jobs that run about `runtime_ms`: about
/// 50 ms of work per slot, between 1 and 48 rounds.
std::uint32_t launch_rounds(double runtime_ms);

class Placement {
public:
  Placement(Core& core, Jobs& jobs, Resources& resources);

  /// A scheduling turn runs later in this loop turn (once, however often this is called).
  void request_schedule();
  /// The agent's node joins the scheduler (or comes back) with its current launch-queue depth.
  void schedule_on(const Agent& agent);
  /// Updates an agent's launch-queue depth from a finished job's run time (launch_queue = auto).
  void learn_runtime(Agent& agent, std::int64_t runtime_ms);

private:
  void schedule();
  /// Sends the committed assignments of one turn (`r`: how the commit went).
  void send_assignments(
      const std::unordered_map<AgentId, std::vector<std::pair<JobId, std::uint32_t>>>& per_agent,
      const Result<void>& r);
  void fill_span(const Job& job, const Agent* agent, pb::Assignment& out) const;
  /// An engine job of a local pilot: its direct socket and key (DirectEngines).
  void offer_direct(const Job& job, const Agent* agent, pb::Assignment& out);

  Core& core_;
  Jobs& jobs_;
  Resources& resources_;
  bool posted_ = false;
};

} // namespace sortie::hub
