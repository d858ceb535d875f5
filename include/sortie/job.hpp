// SPDX-License-Identifier: Apache-2.0
// The public description of jobs: what a client submits (JobSpec) and what it reads back
// (JobInfo). These mirror the protocol's messages (docs/protocol/03-messages.md) without exposing
// protobuf to users of the library.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sortie/ids.hpp"

namespace sortie {

/// The states of a job (docs/architecture.md, "Life of a job"). Values match the wire enum.
enum class JobState : std::uint8_t {
  Queued = 1,
  Assigned = 2,
  Running = 3,
  Succeeded = 4,
  Failed = 5,
  Cancelled = 6,
  TimedOut = 7,
  Lost = 8,
};

/// "queued", "running", ... as printed by the CLI and used in JSON.
const char* job_state_name(JobState state);
/// Parses a name printed by job_state_name; nullopt when unknown.
std::optional<JobState> parse_job_state(const std::string& name);
/// True for succeeded, failed, cancelled, timed_out and lost: the job will not change again. (A
/// lost job that is retried goes back to queued at once, so one at rest in `lost` is final.)
bool is_terminal(JobState state);

/// What to run. argv[0] is looked up in PATH when it has no slash; nothing goes through a shell.
struct JobSpec {
  std::vector<std::string> argv;
  std::vector<std::pair<std::string, std::string>> env; ///< added over the exported ones
  /// What of the submitter's environment the job gets, as sbatch's --export: "ALL" (all but the
  /// variables bound to this session or machine), "NONE", or "NAME,NAME=VALUE,..." (may include
  /// ALL). One value for every job of a submission. See exported_environment().
  std::string export_env = "ALL";
  std::string cwd; ///< working directory; empty: the submitter's current directory (as sbatch)
  std::uint32_t slots = 1;                              ///< threads; sets OMP_NUM_THREADS
  std::string label;                                    ///< empty: any pilot
  std::string name;                                     ///< free text shown in listings
  std::uint64_t memory_bytes = 0; ///< reserved on the node and enforced; 0: neither
  std::uint32_t gpus = 0;         ///< GPUs; the job sees them in CUDA_VISIBLE_DEVICES
  std::vector<std::string> hosts;        ///< run only on one of these nodes
  std::vector<std::string> prefer_hosts; ///< run there if they can take it, else anywhere
  std::uint32_t max_per_node = 0; ///< at most this many of its group on one node (0: no limit)
  std::int32_t priority = 0;      ///< higher first; FIFO within a priority
  std::int64_t queue_timeout_ms = 0; ///< timed_out if not started this long after submission
  std::int64_t run_timeout_ms = 0;   ///< killed and timed_out after running this long
  std::int64_t time_request_ms = 0;  ///< start only on a pilot with this much walltime left
  std::optional<std::uint32_t> retries; ///< runs again when lost (default: the hub's setting)
  bool retry_on_failure = false;        ///< retries also cover non-zero exits and signals
  std::vector<JobId> after;             ///< start only after these succeeded
  /// An MPI job: the agent starts `argv` with mpiexec as this many ranks, each with `slots`
  /// slots, over a hostfile of the slots it was given. 0: not MPI.
  std::uint32_t mpi_ranks = 0;
  std::uint32_t ranks_per_node = 0; ///< 0: all ranks on one node
  /// "engine": a worker serving tasks (docs/engines.md); "" or "command": runs to completion.
  std::string kind;
  bool restart = false; ///< an engine: started again whenever it ends, until cancelled
};

/// first..last inclusive, every step-th value: `--array 1-1000:2`.
struct ArrayRange {
  std::int64_t first = 0;
  std::int64_t last = 0;
  std::int64_t step = 1;
  std::uint64_t count() const {
    // Unsigned: the span of INT64_MIN..INT64_MAX does not fit a signed difference.
    return last < first || step <= 0
               ? 0
               : (static_cast<std::uint64_t>(last) - static_cast<std::uint64_t>(first)) /
                         static_cast<std::uint64_t>(step) +
                     1;
  }
};

/// One item of a submission: a job, or an array of jobs (one per index, each seeing
/// SORTIE_ARRAY_INDEX).
struct SubmitItem {
  JobSpec spec;
  std::optional<ArrayRange> array;
};

/// Acknowledgement of a submission: the jobs are durable in the hub's store and have the
/// consecutive ids first_id .. first_id + count - 1.
struct Submitted {
  JobId first_id;
  std::uint64_t count = 0;
  GroupId group;
  std::string warning; ///< something the submitter should know (no pilot runs), or empty
};

struct StateChange {
  JobState state;
  std::int64_t time_ms = 0; ///< Unix time in milliseconds
};

struct ResourceUsage {
  std::int64_t user_cpu_us = 0;
  std::int64_t system_cpu_us = 0;
  std::int64_t max_rss_kib = 0;
};

struct JobInfo {
  JobId id;
  JobState state = JobState::Queued;
  std::optional<int> exit_code; ///< set when the process exited normally
  std::optional<int> signal;    ///< set when the process was killed by a signal
  std::string node;             ///< node of the current or last attempt
  std::vector<std::string> nodes; ///< an MPI job across nodes: all it holds, while it does
  std::uint32_t attempt = 0;    ///< 1 for the first run; 0 when it never started
  std::optional<std::int64_t> array_index;
  GroupId group;
  std::string name;
  std::int64_t submit_ms = 0;
  std::int64_t start_ms = 0;
  std::int64_t end_ms = 0;
  std::string reason; ///< why it failed, was cancelled or lost, when known
  std::string limits; ///< how its memory was enforced ("cgroup v1", "rlimit", ...)
  std::vector<std::uint32_t> gpus; ///< GPUs of the current or last attempt
  std::string group_name;
  // Filled by Client::job() only:
  std::optional<JobSpec> spec;
  std::vector<StateChange> history;
  ResourceUsage usage;
};

} // namespace sortie
