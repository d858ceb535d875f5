// SPDX-License-Identifier: Apache-2.0
// What the hub writes to its store, and when it may speak of it. Every change of a loop turn goes
// into one WriteBatch, flushed once per turn (group commit); what must not be said before it is
// durable (submission acks, assignments, event acks, output credit) runs after the commit, from
// after_commit. A row nobody waits for (a task's result, which its engine keeps until the commit
// is acknowledged) may wait a little for the next turn's commit (When::Soon), so that one
// commit carries both. Each row <-> object conversion is written here once.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "hub/state.hpp"
#include "protocol/asio.hpp"
#include "store/store.hpp"

namespace sortie::hub {

/// When the rows written now must be committed: in this turn's commit, or soon (in the next commit
/// that another turn makes, or after kSoon at the latest).
enum class When { ThisTurn, Soon };

class Durable {
public:
  /// How long a row written When::Soon may wait for another turn's commit.
  static constexpr std::chrono::milliseconds kSoon{2};

  Durable(asio::any_io_executor executor, store::Store& store, HubState& state,
          std::shared_ptr<bool> alive)
      : executor_(executor), store_(store), state_(state), alive_(std::move(alive)),
        soon_(executor) {}

  /// The batch being gathered; the first use in a turn posts its flush (When::Soon: arms the
  /// timer that flushes it, unless a flush is posted already).
  store::WriteBatch& batch(When when = When::ThisTurn);
  /// Runs `fn` once the rows written so far are committed (or failed to), unless the hub is gone
  /// by then.
  void after_commit(std::function<void(const Result<void>&)> fn, When when = When::ThisTurn);
  /// after_commit, run after that commit's other completions: for what no client waits on (an
  /// engine's acknowledgement), so that the replies clients wait for are sent first.
  void after_commit_last(std::function<void(const Result<void>&)> fn, When when);
  /// The job's row is written with this turn's batch.
  void mark_dirty(Job& job);
  /// Writes the rows of dirty jobs into the batch and hands it to the store.
  void flush();
  store::Store& store() { return store_; }
  /// Batches handed to the store so far: rows written while this stays the same go in one commit.
  std::uint64_t flushes() const { return flushes_; }

  // Rows and objects, both ways.
  static store::JobRow job_row(const Job& job);
  /// A job as stored; the counters kept from its history (lost, failed) included.
  static void job_from_row(store::JobRow& row, Job& job);
  static store::AgentRow agent_row(const Agent& agent, bool connected);
  static Agent agent_from_row(const store::AgentRow& row);
  static store::PilotRow pilot_row(const Pilot& pilot);
  static Pilot pilot_from_row(const store::PilotRow& row);

private:
  /// `fn`, run only if the hub is still there when the commit ends.
  std::function<void(const Result<void>&)>
  while_alive(std::function<void(const Result<void>&)> fn) const;

  asio::any_io_executor executor_;
  store::Store& store_;
  HubState& state_;
  std::shared_ptr<bool> alive_;
  store::WriteBatch batch_;
  std::vector<std::function<void(const Result<void>&)>> last_; ///< batch_'s last completions
  std::vector<JobId> dirty_;
  bool flush_posted_ = false;
  asio::steady_timer soon_;
  bool soon_armed_ = false;
  std::uint64_t soon_generation_ = 0;
  std::uint64_t flushes_ = 0;
};

} // namespace sortie::hub
