// SPDX-License-Identifier: Apache-2.0
// The hub's domain state and its handlers: jobs, agents, pilots, waiters and output followers.
//
// Design. One event-loop thread owns everything here (no locks). The server hands each decoded
// frame to a handler; handlers validate, then mutate state and queue messages on peers. Durable
// changes go into the current WriteBatch, flushed to the store once per loop turn; whatever must
// not be said before it is durable (submission acks, assignments, event acks, output credit) is
// sent from the batch's commit completion. Scheduling runs once per loop turn after a change that
// could enable it, in bounded steps.
//
// Recovery. At start the hub reloads every job. Jobs assigned to or running on an agent wait for
// that agent to reconnect and report what it runs (its reconnect window plus a margin); an agent
// that does not come back loses its jobs, which are requeued while retries remain. Queued jobs
// were never handed out (assignments are committed before they are sent), so they are scheduled
// at once and a job never runs twice at the same time.
#pragma once

#include <cstdint>
#include <functional>
#include <queue>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/chunked_vector.hpp"
#include "common/clock.hpp"
#include "hub/config.hpp"
#include "hub/peer.hpp"
#include "launch/launcher.hpp"
#include "protocol/asio.hpp"
#include "protocol/sortie.pb.h"
#include "launch/drivers.hpp"
#include "scheduler/scheduler.hpp"
#include "store/store.hpp"

namespace sortie::hub {

/// One job in memory (about 170 bytes; the spec is shared through the spec table).
struct Job {
  std::uint64_t id = 0; ///< 0: no job has this id (a submission that failed to commit)
  std::uint32_t spec = 0;
  std::uint32_t group = 0;
  std::int64_t array_index = 0;
  std::int64_t submit_ms = 0;
  std::int64_t start_ms = 0;
  std::int64_t end_ms = 0;
  std::uint64_t agent = 0;
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
  std::vector<std::uint64_t> after;
  std::uint32_t rank_slots = 1; ///< an MPI job's slots per rank
  std::uint64_t jobs = 0;         ///< jobs that use it (forgotten when none is left)
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
  std::uint64_t credit_owed = 0;  ///< output bytes written but not yet credited back
  std::int64_t reconnect_deadline = 0; ///< monotonic ms; while disconnected
  std::string away_reason;             ///< why its link ended, while disconnected
  std::string session_key;             ///< a reconnect must prove it holds this
  std::uint64_t epoch = 0;             ///< registrations so far; the next proof names this one
  bool local = false; ///< started by this hub's local launcher on this machine
  bool stdio = false; ///< its link is an ssh session the hub started: it cannot reconnect
  double runtime_ms = -1; ///< moving average of its jobs' run times (-1: none yet)
  std::uint32_t queue_rounds = 1; ///< current launch-queue depth, in rounds of its slots
};

struct Pilot {
  PilotId id;
  pb::PilotSpec spec;
  std::string state; ///< submitting, pending, running, draining, ended, failed, cancelled
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

struct HubStats {
  std::unordered_map<std::string, std::uint64_t> jobs_by_state;
  std::uint32_t agents = 0;
  std::uint32_t pilots = 0;
  std::uint64_t slots_total = 0;
  std::uint64_t slots_used = 0;
};

class Hub {
public:
  Hub(asio::any_io_executor executor,
      HubConfig config,
      store::Store& store,
      launch::Launcher& launcher,
      const Clock& clock);
  ~Hub();

  /// Rebuilds state from the store. Call once, before start().
  Result<void> load(store::LoadedState state);
  /// Starts the periodic tick (progress frames, reconnect deadlines).
  void start();

  // Client connections ---------------------------------------------------------------------
  /// Handles one request from an authenticated client.
  void on_client_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env);
  void on_client_closed(const std::shared_ptr<Peer>& peer);

  // Agent connections ----------------------------------------------------------------------
  /// An agent's first frame after the handshake. Replies (after a commit) with AgentRegistered.
  /// `stdio`: the link is an ssh session of a remote pilot (it cannot reconnect).
  void on_agent_register(const std::shared_ptr<Peer>& peer,
                         const pb::AgentRegister& reg,
                         bool stdio = false);
  void on_agent_frame(const std::shared_ptr<Peer>& peer, pb::Envelope& env);
  /// The agent's link ended: `goodbye` when the agent said it is leaving.
  void on_agent_closed(const std::shared_ptr<Peer>& peer, const Error& reason, bool goodbye);

  // Local processes ------------------------------------------------------------------------
  /// A process started by the local launcher exited (from the hub's SIGCHLD handler).
  void on_local_process_exit(int pid, int status);

  /// Called when a client asked the hub to stop (or restart); the server then calls shutdown().
  std::function<void(bool restart)> on_stop_requested;
  /// Set by the server: runs an agent session over a remote pilot's ssh pipes, authenticated
  /// with `key` instead of the profile's token; `failed` is called if the link ends before its
  /// agent registered (ssh printed something else, hung, or was refused).
  std::function<void(std::unique_ptr<net::ByteStream>, std::string key,
                     std::function<void(const Error&)> failed)>
      on_agent_link;
  /// Set by the server: where drivers wait for the commands they run.
  launch::ChildWatch* child_watch = nullptr;
  /// Stops every pilot's agents and waits (at most kill_grace + 10 s) until their jobs have
  /// ended and they left; what ran counts a lost attempt and is requeued. Then flushes the store
  /// and runs `done`. With `restart`, only flushes: pilots, agents and jobs carry on.
  void shutdown(std::function<void()> done, bool restart = false);

  HubStats stats() const;
  const HubConfig& config() const { return config_; }
  std::string listen_address; ///< for status, set by the server
  std::int64_t started_ms = 0;

  /// For tests: the job with this id, or null.
  const Job* job_for_test(std::uint64_t id) const { return find_job(id); }
  /// For tests: one round of the periodic work.
  void tick_for_test() { tick(); }

private:
  // Client requests.
  void handle_submit(const std::shared_ptr<Peer>& peer, std::uint64_t rid, pb::SubmitRequest& req);
  void handle_list(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::ListJobsRequest& req);
  void handle_get(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::GetJobRequest& req);
  void handle_wait(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::WaitRequest& req);
  void handle_cancel(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::CancelRequest& req);
  void handle_forget(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::ForgetRequest& req);
  /// Forgets these ended jobs: rows, output files, and the specs and groups left unused.
  void forget_jobs(const std::vector<std::uint64_t>& ids);
  /// job_retention: forgets jobs that ended longer ago (a bounded number per call).
  void forget_expired();
  /// "job N does not exist", saying when it may have been forgotten.
  Error missing_job(std::uint64_t id) const;
  /// Calls fn for each job the selector names (ids, groups, or all); ids that name no job are
  /// counted in *missing when given.
  template <typename Fn>
  void for_each_selected(const pb::JobSelector& sel, const std::vector<std::uint64_t>& named,
                         Fn fn, std::uint64_t* missing = nullptr);
  void handle_logs(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::LogsRequest& req);
  void handle_status(const std::shared_ptr<Peer>& peer, std::uint64_t rid);
  void handle_pilot_add(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::PilotAddRequest& req);
  void handle_pilot_list(const std::shared_ptr<Peer>& peer, std::uint64_t rid);
  void handle_pilot_cancel(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::PilotCancelRequest& req);
  void handle_resource_add(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::ResourceAddRequest& req);
  void handle_resource_list(const std::shared_ptr<Peer>& peer, std::uint64_t rid);
  void handle_resource_remove(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const pb::ResourceRemoveRequest& req);

  // Agent messages.
  void handle_job_events(Agent& agent, const pb::JobEvents& events);
  void handle_output(Agent& agent, pb::OutputBatch& batch);
  void credit_agent(AgentId id, std::uint64_t bytes);
  /// An output write failed (`w.status` has the error and the data): tried again later, or,
  /// after output_retry, given up with a note on the job.
  void output_retry(AgentId agent, store::OutputWrite w, int tries);
  void output_retries_due(std::int64_t now);
  std::string output_loss_note(const Job& job) const;
  void apply_started(Agent& agent, const pb::JobEvent& ev);
  void apply_finished(Agent& agent, const pb::JobEvent& ev);
  void finish_registration(const std::shared_ptr<Peer>& peer, AgentId id, std::vector<std::uint64_t> kill);
  /// The agent is gone for good. `orderly`: it left on purpose (goodbye, the hub stopping), so
  /// what it never reported started did not start.
  void agent_gone(AgentId id, const std::string& why, bool orderly = false);
  store::AgentRow agent_row(const Agent& a, bool connected) const;
  /// A local agent's process died: its jobs are lost once its keeper has killed them.
  void local_agent_died(AgentId id, const std::string& why);
  /// How long an agent's keeper lets it live without a heartbeat the hub received.
  std::int64_t lease_ms(bool stdio) const;
  scheduler::NodeInfo node_info(const Agent& agent) const;
  /// Adds the agent to the scheduler with its current launch-queue depth.
  void schedule_on(const Agent& agent);
  /// Updates an agent's launch-queue depth from a finished job's run time (auto mode).
  void learn_runtime(Agent& agent, std::int64_t runtime_ms);

  // Job state.
  Job* find_job(std::uint64_t id);
  const Job* find_job(std::uint64_t id) const;
  void transition(Job& job, JobState to, std::int64_t now_ms);
  void mark_dirty(Job& job);
  void requeue(Job& job, bool front);
  /// The job's agent is gone: requeue it while retries remain, else it stays lost.
  void job_lost(Job& job, const std::string& why);
  /// The job reached a final state: tell waiters and followers.
  void job_final(Job& job);
  void cancel_job(Job& job, const std::string& reason);
  /// A queued job becomes schedulable (no dependencies left) or waits for them.
  /// `at_load`: a dependency that no longer exists was forgotten after it succeeded (one that
  /// failed would have cancelled this job in the same commit).
  void make_ready(Job& job, bool at_load = false);
  /// Decodes what the hub needs of a spec; the group (for max_per_node) is bound by the caller.
  Spec make_spec(std::string bytes, const pb::JobSpec& spec);
  /// Takes a queued job out of the scheduler (it is there unless it waits for dependencies).
  void unqueue(Job& job);
  /// Dependents of a job that reached a final state: released, or cancelled if it failed.
  void settle_dependents(const Job& job);
  /// Retries left for a job (lost or, with retry_on_failure, failed).
  bool may_retry(const Job& job, bool failure) const;
  Result<void> check_after(const pb::JobSpec& spec, std::size_t item) const;
  /// The run timeout of a spec (kept in its bytes only: the agent enforces it).
  static std::int64_t run_timeout_of(const Spec& spec);
  /// The groups a selector names by name; an error if it names a group (by id or name) that
  /// does not exist.
  Result<std::vector<std::uint64_t>> groups_named(const pb::JobSelector& sel) const;
  void detach_from_agent(Job& job);
  /// Tells the agent running `job` to kill it.
  void send_kill(const Job& job, const std::string& reason);
  void fill_info(const Job& job, pb::JobInfo& info, bool detail) const;
  /// Why a queued job waits (for listings): no node could ever run it and why, or free room.
  std::string why_waiting(const scheduler::Requirements& req) const;
  struct WhyCache {
    std::uint32_t spec = 0;
    std::int64_t at_ms = -1;
    std::string reason;
  };
  mutable WhyCache why_cache_;
  bool selected(const pb::JobSelector& sel, const Job& job) const;
  bool selected(const pb::JobSelector& sel, const std::vector<std::uint64_t>& named, const Job& job) const;
  std::string node_of(const Job& job) const;

  // Batching and scheduling.
  store::WriteBatch& batch();
  void flush();
  void request_schedule();
  void schedule();

  // Periodic work.
  Awaitable<void> tick_loop();
  void tick();

  // Followers of job output.
  struct Follower;
  void follower_read_more(std::shared_ptr<Follower> f);
  void follower_deliver(const std::shared_ptr<Follower>& f, std::int64_t offset,
                        const std::string& data);
  void follower_drop(const std::shared_ptr<Follower>& f);
  /// What continues a follower that waited (for its client to read, or for a commit).
  std::function<void()> follower_resume(const std::shared_ptr<Follower>& f);
  void follower_maybe_end(const std::shared_ptr<Follower>& f);
  void followers_attempt_ended(Job& job);

  // Pilots.
  void pilot_changed(Pilot& pilot);
  /// Shuts a pilot's agents down (their running jobs are requeued).
  void stop_pilot(Pilot& pilot, const std::string& reason);
  void update_pilot_state(Pilot& pilot);
  store::PilotRow pilot_row(const Pilot& pilot) const;
  /// Stores a new pilot (state submitting); once committed, runs `start` and answers the
  /// requester with the pilot's id or `start`'s error.
  void store_pilot(Pilot pilot,
                   const std::shared_ptr<Peer>& peer,
                   std::uint64_t rid,
                   std::function<Result<void>(Pilot&)> start);
  /// Validates a pilot request for a remote resource and fills defaults.
  Result<void> check_remote_pilot(pb::PilotSpec& spec, const pb::ResourceSpec& resource) const;
  /// Creates the pilot's driver and starts it (or, with a batch id, resumes following it).
  void start_driver(Pilot& pilot);
  void on_pilot_report(PilotId id, const launch::PilotReport& report);
  /// An ssh link of the pilot ended before its agent registered: the pilot says why, and fails
  /// when none of its agents is up.
  void pilot_link_failed(PilotId id, const std::string& link, const Error& error);
  /// Enters or leaves draining as the walltime nears; ends pilots whose walltime is over.
  void pilot_walltimes(std::int64_t wall);
  const pb::ResourceSpec* find_resource(const std::string& name) const;
  /// The gateways to hop through to reach `resource`, outermost first.
  Result<std::vector<pb::ResourceSpec>> gateway_chain(const pb::ResourceSpec& resource) const;
  Result<void> check_resource(const pb::ResourceSpec& spec) const;
  /// Resources from the store, then config.toml's (which win).
  void load_resources(std::vector<store::ResourceRow>& rows);
  /// After a restart: batch pilots are followed again; ssh pilots ended with the old hub.
  void resume_pilots();
  /// config.toml's [[pilots]] that do not run yet.
  void start_configured_pilots();

  void reply_error(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const Error& error);
  void send_to(const std::shared_ptr<Peer>& peer, pb::Envelope& env, std::uint64_t rid);

  asio::any_io_executor executor_;
  HubConfig config_;
  store::Store& store_;
  launch::Launcher& launcher_;
  const Clock& clock_;

  ChunkedVector<Job> jobs_; ///< index = id - 1
  std::vector<Spec> specs_;  ///< index = id - 1
  std::vector<Group> groups_; ///< index = id - 1
  /// One copy of each distinct exported environment, by its hash (Group::env).
  std::unordered_map<std::size_t, std::vector<std::weak_ptr<const std::string>>> envs_;
  std::shared_ptr<const std::string> intern_env(std::string bytes);
  std::uint64_t next_job_id_ = 1;
  std::uint64_t next_spec_id_ = 1;
  std::uint64_t next_group_id_ = 1;
  std::int64_t next_retention_sweep_ms_ = 0;
  /// Ids below these are reserved in the profile's ids file (store.hpp, WriteBatch).
  std::uint64_t reserved_job_ids_ = 0, reserved_group_ids_ = 0;
  std::uint64_t next_agent_id_ = 1;
  std::uint64_t next_pilot_id_ = 1;

  std::unordered_map<AgentId, Agent> agents_;
  std::unordered_map<const Peer*, AgentId> agent_by_peer_;
  std::unordered_map<PilotId, Pilot> pilots_;
  std::map<std::string, pb::ResourceSpec> resources_;
  std::unordered_map<PilotId, std::unique_ptr<launch::Driver>> drivers_;
  std::unordered_map<int, PilotId> pilot_by_pid_;
  std::unordered_set<int> dead_pids_; ///< local agent processes seen exiting
  scheduler::Scheduler scheduler_;
  std::unordered_map<JobState, std::uint64_t> state_counts_;
  /// Queue timeouts, earliest first: (deadline in Unix ms, job).
  std::priority_queue<std::pair<std::int64_t, std::uint64_t>,
                      std::vector<std::pair<std::int64_t, std::uint64_t>>, std::greater<>>
      queue_deadlines_;
  /// Jobs waiting for a job (--after), by the job they wait for.
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> dependents_;
  /// Jobs across nodes: every node each one holds, with its slots there (the first runs it).
  std::unordered_map<std::uint64_t, std::vector<std::pair<AgentId, std::uint32_t>>> spans_;
  /// Jobs across nodes that lost one of their nodes: killed, lost when their end is reported.
  std::unordered_map<std::uint64_t, std::string> span_lost_;
  std::unordered_map<std::string, std::vector<std::uint64_t>> groups_by_name_;

  struct OutputRetry {
    AgentId agent;
    store::OutputWrite write;
    int tries = 0;
    std::int64_t due_ms = 0; ///< monotonic
  };
  std::vector<OutputRetry> output_retries_;
  store::WriteBatch batch_;
  std::vector<std::uint64_t> dirty_;
  bool flush_posted_ = false;
  bool schedule_posted_ = false;
  std::int64_t recovery_deadline_ = 0; ///< monotonic ms; agents from before a restart may return

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
  };
  std::vector<std::shared_ptr<Waiter>> waiters_;
  void waiter_count(Waiter& w, const Job& job);
  void waiter_send(Waiter& w, bool done);

  struct Follower {
    std::shared_ptr<Peer> peer;
    std::uint64_t rid = 0;
    std::uint64_t job = 0;
    std::uint32_t attempt = 0; ///< 0 until the job starts
    int stream = 0;
    bool follow = false;
    bool catching_up = true; ///< reading the file; live chunks are found there later
    bool reading = false;    ///< a file read (or a wait for the client to read) is under way
    std::uint64_t awaited = 0; ///< output received when it last waited for a commit to reread
    bool ended = false;
    std::int64_t next_offset = 0;
  };
  std::unordered_map<std::uint64_t, std::vector<std::shared_ptr<Follower>>> followers_;

  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  asio::steady_timer tick_timer_;
  bool stopping_ = false;
  std::function<void()> shutdown_done_;
  std::int64_t shutdown_deadline_ = 0; ///< monotonic ms
  bool agents_stopped() const;
  void shutdown_step();
};

} // namespace sortie::hub
