// SPDX-License-Identifier: Apache-2.0
// Job output: the agents' output batches written to the output files (credit back once written;
// a failed write kept and tried again for output_retry, then noted on the job), and the clients
// that read or follow a job's output (`job logs [-f]`), each reading the file, then taking live
// chunks, with at most a window queued on its connection. Takes OutputBatch and LogsRequest.
#pragma once

#include <memory>
#include <unordered_map>
#include <vector>

#include "hub/jobs.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"
#include "store/store.hpp"

namespace sortie::hub {

class Output {
public:
  Output(Core& core, Jobs& jobs);
  void register_with(Router& router);
  /// Writes that failed and are due to be tried again.
  void tick();

private:
  struct Follower {
    std::shared_ptr<Peer> peer;
    std::uint64_t rid = 0;
    JobId job;
    std::uint32_t attempt = 0; ///< 0 until the job starts
    int stream = 0;
    bool follow = false;
    bool catching_up = true; ///< reading the file; live chunks are found there later
    bool reading = false;    ///< a file read (or a wait for the client to read) is under way
    std::uint64_t awaited = 0; ///< output received when it last waited for a commit to reread
    bool ended = false;
    std::int64_t next_offset = 0;
  };
  struct Retry {
    AgentId agent;
    store::OutputWrite write;
    int tries = 0;
    std::int64_t due_ms = 0; ///< monotonic
  };

  void handle_output(Agent& agent, pb::OutputBatch& batch);
  void credit_agent(AgentId id, std::uint64_t bytes);
  /// An output write failed (`w.status` has the error and the data): tried again later, or,
  /// after output_retry, given up with a note on the job.
  void retry(AgentId agent, store::OutputWrite w, int tries);

  void handle_logs(const Sender& from, const pb::LogsRequest& req);
  void read_more(std::shared_ptr<Follower> f);
  void on_read(const std::shared_ptr<Follower>& f, Result<std::string> data);
  void deliver(const std::shared_ptr<Follower>& f, std::int64_t offset, const std::string& data);
  void drop(const std::shared_ptr<Follower>& f);
  /// What continues a follower that waited (for its client to read, or for a commit).
  std::function<void()> resume(const std::shared_ptr<Follower>& f);
  void maybe_end(const std::shared_ptr<Follower>& f);
  void attempt_ended(Job& job);

  Core& core_;
  Jobs& jobs_;
  std::unordered_map<JobId, std::vector<std::shared_ptr<Follower>>> followers_;
  std::vector<Retry> retries_;
};

} // namespace sortie::hub
