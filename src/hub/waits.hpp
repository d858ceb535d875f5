// SPDX-License-Identifier: Apache-2.0
// Clients waiting for jobs to end (`job wait`, the library's wait): counts by outcome, progress
// frames at most once per tick, and the last frame with the failed jobs' ids once every job it
// waits for has ended. Takes WaitRequest.
#pragma once

#include <memory>
#include <vector>

#include "hub/jobs.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"

namespace sortie::hub {

class Waits {
public:
  Waits(Core& core, Jobs& jobs);
  void register_with(Router& router);
  /// Progress frames of waits that asked for them.
  void tick();
  /// The hub is stopping: every waiter is told and dropped.
  void close_all(const Error& why);

private:
  struct Waiter {
    std::shared_ptr<Peer> peer;
    std::uint64_t rid = 0;
    pb::JobSelector selector;
    std::uint64_t total = 0;
    std::uint64_t succeeded = 0, failed = 0, cancelled = 0;
    std::vector<std::uint64_t> failed_ids;
    bool progress = false;
    bool dirty = false;
    std::uint64_t max_id = 0; ///< jobs above this id were submitted later and do not count
    std::vector<std::uint64_t> named; ///< ids of the groups named in the selector
    bool done() const { return succeeded + failed + cancelled >= total; }
  };

  void handle_wait(const Sender& from, const pb::WaitRequest& req);
  void count(Waiter& w, const Job& job);
  void send(Waiter& w, bool done);
  void job_final(const Job& job);

  Core& core_;
  Jobs& jobs_;
  std::vector<std::shared_ptr<Waiter>> waiters_;
};

} // namespace sortie::hub
