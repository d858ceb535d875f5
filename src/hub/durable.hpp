// SPDX-License-Identifier: Apache-2.0
// What the hub writes to its store, and when it may speak of it. Every change of a loop turn goes
// into one WriteBatch, flushed once per turn (group commit); what must not be said before it is
// durable (submission acks, assignments, event acks, output credit) runs after the commit, from
// after_commit. Each row <-> object conversion is written here once.
#pragma once

#include <functional>
#include <memory>

#include "hub/state.hpp"
#include "protocol/asio.hpp"
#include "store/store.hpp"

namespace sortie::hub {

class Durable {
public:
  Durable(asio::any_io_executor executor, store::Store& store, HubState& state,
          std::shared_ptr<bool> alive)
      : executor_(std::move(executor)), store_(store), state_(state), alive_(std::move(alive)) {}

  /// This turn's batch; the first use in a turn posts its flush.
  store::WriteBatch& batch();
  /// Runs `fn` once this turn's batch is committed (or failed to), unless the hub is gone by then.
  void after_commit(std::function<void(const Result<void>&)> fn);
  /// The job's row is written with this turn's batch.
  void mark_dirty(Job& job);
  /// Writes the rows of dirty jobs into the batch and hands it to the store.
  void flush();
  store::Store& store() { return store_; }

  // Rows and objects, both ways.
  static store::JobRow job_row(const Job& job);
  /// A job as stored; the counters kept from its history (lost, failed) included.
  static void job_from_row(store::JobRow& row, Job& job);
  static store::AgentRow agent_row(const Agent& agent, bool connected);
  static Agent agent_from_row(const store::AgentRow& row);
  static store::PilotRow pilot_row(const Pilot& pilot);
  static Pilot pilot_from_row(const store::PilotRow& row);

private:
  asio::any_io_executor executor_;
  store::Store& store_;
  HubState& state_;
  std::shared_ptr<bool> alive_;
  store::WriteBatch batch_;
  std::vector<JobId> dirty_;
  bool flush_posted_ = false;
};

} // namespace sortie::hub
