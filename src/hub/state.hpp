// SPDX-License-Identifier: Apache-2.0
// The hub's data: jobs, their specs and groups, agents, pilots, and the tables that hold them.
// Data only, with lookups: what changes it lives in the rooms (jobs, agents, pilots, ...), each
// of which says which of these fields it owns. See docs/architecture.md, "The hub's rooms".
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>

#include "common/chunked_vector.hpp"
#include "hub/peer.hpp"
#include "protocol/sortie.pb.h"
#include "scheduler/scheduler.hpp"
#include "sortie/ids.hpp"
#include "sortie/job.hpp"

template <typename Tag>
struct fmt::formatter<sortie::StrongId<Tag>> : fmt::formatter<std::uint64_t> {
  auto format(const sortie::StrongId<Tag>& id, format_context& ctx) const {
    return fmt::formatter<std::uint64_t>::format(id.value, ctx);
  }
};

namespace sortie::hub {

/// One job in memory (about 170 bytes; the spec is shared through the spec table).
struct Job {
  JobId id; ///< invalid: no job has this id (forgotten, or a submission that failed to commit)
  std::uint32_t spec = 0;
  std::uint32_t group = 0;
  std::int64_t array_index = 0;
  std::int64_t submit_ms = 0;
  std::int64_t start_ms = 0;
  std::int64_t end_ms = 0;
  AgentId agent;
  std::uint64_t out_bytes[2] = {0, 0}; ///< output received for the current attempt
  std::vector<StateChange> history;
  std::string reason;
  ResourceUsage usage;
  std::int32_t exit_code = 0;
  std::int16_t signal = 0;
  std::uint64_t gpu_mask = 0; ///< GPU device ids of the current or last attempt, as bits
  std::uint64_t out_lost = 0; ///< output bytes of the current attempt that could not be written
  std::uint16_t attempt = 0;
  std::uint16_t lost_count = 0;
  std::uint16_t fail_count = 0;   ///< failures retried (retry_on_failure)
  std::uint16_t deps_pending = 0; ///< --after jobs not yet succeeded
  std::uint8_t limits = 0;        ///< how memory was enforced (limits_name)
  JobState state = JobState::Queued;
  bool is_array = false;
  bool has_exit_code = false;
  bool has_signal = false;
  bool dirty = false;
  bool cancel_requested = false;
  bool queue_timed_out = false; ///< killed in its agent's launch queue by its queue timeout
  bool started = false; ///< the current attempt's process started
};

/// What the hub needs of a spec besides its bytes (decoded once, shared by its jobs).
struct Spec {
  std::string bytes; ///< serialized pb::JobSpec, sent to agents as is
  scheduler::Requirements req;
  std::string name;
  std::int64_t queue_timeout_ms = 0;
  std::int32_t retries = -1; ///< -1: the hub's lost_retries, no retry on failure
  bool retry_on_failure = false;
  bool engine = false;  ///< kind "engine": serves tasks (tasks room)
  bool restart = false; ///< an engine started again whenever it ends, until cancelled
  std::vector<JobId> after;
  std::uint32_t rank_slots = 1; ///< an MPI job's slots per rank
  std::uint64_t jobs = 0;       ///< jobs that use it (forgotten when none is left)
};

struct Group {
  std::uint64_t id = 0;
  scheduler::Symbol key = 0; ///< max_per_node group: the name, or "#id" for unnamed groups
  std::string name;
  std::int64_t created_ms = 0;
  std::uint64_t first_job = 0;
  std::uint64_t count = 0;
  std::uint64_t live = 0; ///< its jobs not yet forgotten
  /// The submission's exported environment (a serialized pb::EnvList; null: none), shared by
  /// every group that exported the same one.
  std::shared_ptr<const std::string> env;
};

struct Agent {
  AgentId id;
  PilotId pilot;
  std::string node;
  std::string hostname;
  std::string address; ///< how other nodes reach it (MPI hostfiles)
  int pid = 0;
  int keeper_pid = 0;           ///< its keeper, which kills its jobs when it dies
  bool awaiting_keeper = false; ///< dead; its jobs are lost once its keeper has exited
  std::uint32_t slots = 0;
  std::uint32_t cores = 0;
  std::uint64_t memory = 0;
  std::string label;
  std::vector<std::uint32_t> gpus;
  std::int64_t walltime_end_ms = 0;
  std::string limits;
  std::int64_t registered_ms = 0;
  std::shared_ptr<Peer> peer; ///< null while disconnected
  std::unordered_set<JobId> jobs; ///< assigned or running here
  std::unordered_set<JobId> held; ///< MPI jobs run by another node that hold slots here
  std::int64_t reconnect_deadline = 0; ///< monotonic ms; while disconnected
  std::string away_reason;             ///< why its link ended, while disconnected
  std::string session_key;             ///< a reconnect must prove it holds this
  std::uint64_t epoch = 0;             ///< registrations so far; the next proof names this one
  bool local = false; ///< started by this hub's local launcher on this machine
  bool stdio = false; ///< its link is an ssh session the hub started: it cannot reconnect
  double runtime_ms = -1; ///< moving average of its jobs' run times (-1: none yet)
  std::uint32_t queue_rounds = 1; ///< current launch-queue depth, in rounds of its slots
};

/// A pilot's life: submitting -> pending -> running [-> draining] -> ended | failed | cancelled.
enum class PilotState : std::uint8_t {
  Submitting, ///< stored; its agents or batch job are being started
  Pending,    ///< started (or queued in the batch system); no agent registered yet
  Running,    ///< at least one agent is up
  Draining,   ///< its walltime nears: its agents take no new jobs
  Ended,
  Failed,
  Cancelled,
};
const char* pilot_state_name(PilotState s);
/// From a store row; unknown text (a newer hub's) reads as Failed.
PilotState parse_pilot_state(std::string_view s);
inline bool is_over(PilotState s) { return s >= PilotState::Ended; }

struct Pilot {
  PilotId id;
  pb::PilotSpec spec;
  PilotState state = PilotState::Submitting;
  std::int64_t created_ms = 0;
  std::int64_t ended_ms = 0;
  std::string reason;
  std::vector<int> pids; ///< local agent processes started for it
  std::unordered_set<AgentId> agents;
  bool cancel_requested = false;   ///< stopping: cancelled, walltime over, hub stopping
  bool cancelled_by_user = false;
  std::int64_t end_ms = 0; ///< walltime end (0: none)
  bool remote = false;      ///< started by a driver (ssh, slurm, sge), not the local launcher
  bool batch_alive = false; ///< its batch job or ssh processes exist, as far as the driver knows
  std::string batch_id;     ///< the batch system's job id
};

/// Letters, digits, '-', '_' and '.' (at most 64): labels, and node names (not empty).
bool valid_label(const std::string& s);
bool valid_node_name(const std::string& s);

/// How an agent enforced a job's memory: stored as text, kept as a code per job.
const char* limits_name(std::uint8_t code);
std::uint8_t limits_code(const std::string& name);
std::uint64_t gpu_mask_of(const std::vector<std::uint32_t>& gpus);
std::vector<std::uint32_t> gpus_of(std::uint64_t mask);

/// Every table of the hub. Rooms share it; each field's comment names the room that changes it.
struct HubState {
  ChunkedVector<Job> jobs;   ///< jobs; index = id - 1
  std::vector<Spec> specs;   ///< jobs, submit; index = id - 1
  std::vector<Group> groups; ///< jobs, submit; index = id - 1
  std::unordered_map<std::string, std::vector<std::uint64_t>> groups_by_name; ///< jobs, submit
  /// One copy of each distinct exported environment, by its hash (Group::env): jobs.
  std::unordered_map<std::size_t, std::vector<std::weak_ptr<const std::string>>> envs;
  std::unordered_map<JobState, std::uint64_t> state_counts; ///< jobs
  std::unordered_map<AgentId, Agent> agents;                ///< agents
  std::unordered_map<const Peer*, AgentId> agent_by_peer;   ///< agents
  std::unordered_map<PilotId, Pilot> pilots;                ///< pilots
  /// Local agent processes: which pilot started each, and those seen exiting (pilots).
  std::unordered_map<int, PilotId> pilot_by_pid;
  std::unordered_set<int> dead_pids;
  /// Jobs across nodes: every node each one holds, with its slots there (the first runs it):
  /// placement.
  std::unordered_map<JobId, std::vector<std::pair<AgentId, std::uint32_t>>> spans;
  /// Jobs across nodes that lost one of their nodes: killed, lost when their end is reported.
  std::unordered_map<JobId, std::string> span_lost;

  std::uint64_t next_job_id = 1, next_spec_id = 1, next_group_id = 1;
  std::uint64_t next_agent_id = 1, next_pilot_id = 1;
  /// Ids below these are reserved in the profile's ids file (store.hpp, WriteBatch).
  std::uint64_t reserved_job_ids = 0, reserved_group_ids = 0;
  bool stopping = false; ///< the hub is stopping: nothing new starts

  Job* find_job(JobId id) {
    if (id.value == 0 || id.value > jobs.size())
      return nullptr;
    Job* j = jobs.find(id.value - 1); // null: its chunk of ids was forgotten
    return j && j->id.valid() ? j : nullptr;
  }
  const Job* find_job(JobId id) const { return const_cast<HubState*>(this)->find_job(id); }
  Spec& spec_of(const Job& j) { return specs[j.spec - 1]; }
  const Spec& spec_of(const Job& j) const { return specs[j.spec - 1]; }
  /// The job's group, or null (a job stored before groups existed).
  const Group* group_of(const Job& j) const {
    return j.group && j.group <= groups.size() ? &groups[j.group - 1] : nullptr;
  }
  Agent* find_agent(AgentId id) {
    auto it = agents.find(id);
    return it == agents.end() ? nullptr : &it->second;
  }
  const Agent* find_agent(AgentId id) const { return const_cast<HubState*>(this)->find_agent(id); }
  Agent* agent_of(const Peer* peer) {
    auto it = agent_by_peer.find(peer);
    return it == agent_by_peer.end() ? nullptr : find_agent(it->second);
  }
  Pilot* find_pilot(PilotId id) {
    auto it = pilots.find(id);
    return it == pilots.end() ? nullptr : &it->second;
  }
  /// Whether some pilot is not over (submitting, pending, running or draining).
  bool any_live_pilot() const;
};

} // namespace sortie::hub
