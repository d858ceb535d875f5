// SPDX-License-Identifier: Apache-2.0
// Read-only views of the hub: jobs (with why a queued job waits, as squeue's REASON), pilots and
// the hub's status. Shared by the protocol's replies and, later, the HTTP server. Takes
// ListJobsRequest, GetJobRequest, HubStatusRequest and PilotListRequest.
#pragma once

#include <string>
#include <unordered_map>

#include "hub/jobs.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"

namespace sortie::hub {

struct HubStats {
  std::unordered_map<std::string, std::uint64_t> jobs_by_state;
  std::uint32_t agents = 0;
  std::uint32_t pilots = 0;
  std::uint64_t slots_total = 0;
  std::uint64_t slots_used = 0;
};

/// What the status reply says of the hub's process.
struct HubIdentity {
  std::string listen_address;
  std::int64_t started_ms = 0;
};

class Queries {
public:
  Queries(Core& core, Jobs& jobs, const HubIdentity& identity)
      : core_(core), jobs_(jobs), identity_(identity) {}
  void register_with(Router& router);

  HubStats stats() const;
  void fill_info(const Job& job, pb::JobInfo& info, bool detail) const;
  /// Why a queued job waits (for listings): no node could ever run it and why, or free room.
  void fill_pilots(pb::PilotList& list) const;

private:
  void handle_list(const Sender& from, const pb::ListJobsRequest& req);
  void handle_get(const Sender& from, const pb::GetJobRequest& req);
  void handle_status(const Sender& from);
  std::string node_of(const Job& job) const;

  Core& core_;
  Jobs& jobs_;
  const HubIdentity& identity_;
  /// The jobs of an array share their spec: one answer serves a listing's run of them.
  struct WhyCache {
    std::uint32_t spec = 0;
    std::int64_t at_ms = -1;
    std::string reason;
  };
  mutable WhyCache why_cache_;
};

} // namespace sortie::hub
