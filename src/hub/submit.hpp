// SPDX-License-Identifier: Apache-2.0
// Submissions: every job spec checked (errors name the job and what to do), ids taken from the
// reservation, one commit for the whole submission, and only then the jobs made live and the
// client answered. Takes SubmitRequest.
#pragma once

#include "hub/jobs.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"

namespace sortie::hub {

class Submit {
public:
  Submit(Core& core, Jobs& jobs) : core_(core), jobs_(jobs) {}
  void register_with(Router& router);

private:
  void handle_submit(const Sender& from, pb::SubmitRequest& req);
  /// Creates the submission's groups, specs and jobs in the store; the jobs go live once
  /// committed. Returns before that.
  void commit(const Sender& from, pb::SubmitRequest& req, std::uint64_t total,
              std::string env_blob);

  Core& core_;
  Jobs& jobs_;
};

/// Validates a spec from a client and fills in defaults; errors say which job and what to do.
Result<void> check_spec(pb::JobSpec& spec, std::size_t item);

} // namespace sortie::hub
