// SPDX-License-Identifier: Apache-2.0
// The sortie client library: connect to a profile's hub, submit jobs, wait for them, read their
// state and output, manage pilots. The `sortie` CLI is a thin layer over it.
//
//   auto client = sortie::Client::connect();            // the default profile's hub
//   sortie::JobSpec spec;
//   spec.argv = {"python3", "simulate.py", "--seed", "7"};
//   auto submitted = client->submit(spec);              // durable once this returns
//   auto done = client->wait(sortie::JobSelector::range(submitted->first_id));
//
// A Client is one connection; its calls block the calling thread and it is not thread-safe (use
// one Client per thread). Every call returns a Result: errors carry a message that says what went
// wrong and how to fix it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <optional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sortie/ids.hpp"
#include "sortie/job.hpp"
#include "sortie/result.hpp"

namespace sortie {

/// A hub the library started (start_hub, or connect with start_if_needed).
struct HubStarted {
  std::string profile;
  int pid = 0;
  std::string address; ///< HOST:PORT it listens on (besides its unix socket)
};

struct StartHubOptions {
  std::string profile;              ///< empty: $SORTIE_PROFILE, else "default"
  std::filesystem::path sortie_exe; ///< the sortie program to run; empty: sortie_program()
  std::string listen;               ///< HOST[:PORT]; empty: config.toml's hub.listen, or loopback
  bool verbose = false;             ///< debug lines in hub.log
  std::int64_t timeout_ms = 120'000;
};

/// Starts the hub of a profile as a daemon (`sortie hub start`) and returns once it listens.
/// Errors: AlreadyExists when a hub runs for the profile already (the message names its pid);
/// FailedPrecondition with the hub's own words when it refuses to start (a damaged store, a bad
/// config.toml); Unavailable when it died starting (its hub.log says why).
Result<HubStarted> start_hub(const StartHubOptions& options = {});

/// The sortie program hubs are started with: $SORTIE_EXE, else this program if it is sortie,
/// else a sortie beside it, else the installed one, else the first on PATH.
Result<std::filesystem::path> sortie_program();

struct ConnectOptions {
  std::string profile;            ///< empty: $SORTIE_PROFILE, else "default"
  std::filesystem::path hub_file; ///< a hub.json to use instead of the profile's
  std::int64_t timeout_ms = 10'000;
  std::string client_name = "client";
  /// Connect-or-start: when no hub runs for the profile, start it (start_hub) and connect. Not
  /// with hub_file (another machine's hub cannot be started from here).
  bool start_if_needed = false;
  /// The program start_if_needed runs; empty: sortie_program().
  std::filesystem::path sortie_exe;
  /// Called when start_if_needed started a hub (the CLI says so on stderr).
  std::function<void(const HubStarted&)> on_hub_started;
};

/// Which jobs a call is about: the union of id ranges and groups, or every job.
struct JobSelector {
  std::vector<std::pair<JobId, JobId>> ranges; ///< inclusive
  std::vector<GroupId> groups;
  bool all = false;
  std::vector<std::string> group_names; ///< every group submitted with one of these names

  static JobSelector one(JobId id) { return JobSelector{{{id, id}}, {}, false, {}}; }
  static JobSelector range(JobId first, std::uint64_t count = 1) {
    return JobSelector{{{first, JobId(first.value + count - 1)}}, {}, false, {}};
  }
  static JobSelector group(GroupId g) { return JobSelector{{}, {g}, false, {}}; }
  static JobSelector named(std::string name) { return JobSelector{{}, {}, false, {std::move(name)}}; }
  static JobSelector every() { return JobSelector{{}, {}, true, {}}; }
};

struct WaitProgress {
  std::uint64_t total = 0;
  std::uint64_t finished = 0;
  std::uint64_t succeeded = 0;
  std::uint64_t failed = 0; ///< failed, timed out or lost
  std::uint64_t cancelled = 0;
  bool done = false;
  std::vector<JobId> failed_ids; ///< the first 100 jobs that did not succeed (when done)
  bool all_succeeded() const { return done && succeeded == total; }
};

struct JobPage {
  std::vector<JobInfo> jobs;          ///< oldest first
  std::uint64_t matched = 0;          ///< jobs that matched, beyond the limit too
  std::map<JobState, std::uint64_t> counts; ///< matched jobs by state
};

struct ForgetSummary {
  std::uint64_t forgotten = 0;
  std::uint64_t not_ended = 0;
  std::uint64_t not_found = 0;
};

struct CancelSummary {
  std::uint64_t cancelled = 0;
  std::uint64_t already_finished = 0;
  std::uint64_t not_found = 0;
};

struct HubStatus {
  std::string version;
  std::string profile;
  int pid = 0;
  std::int64_t started_ms = 0;
  std::string address;
  std::map<std::string, std::uint64_t> jobs_by_state;
  std::uint32_t agents = 0;
  std::uint32_t pilots = 0;
  std::uint64_t slots_total = 0;
  std::uint64_t slots_used = 0;
  std::string store_path;
  std::uint64_t store_commits = 0; ///< transactions committed since the hub started
};

/// Where pilots run (docs/resources.md).
struct ResourceSpec {
  std::string name;
  std::string type; ///< ssh, slurm, sge, local
  std::string location; ///< ssh: [user@]host[:port][,...]; slurm/sge: login host ("": here)
  std::string install_dir; ///< the sortie tree on that side; "": this sortie's own path
  std::string tmp_dir;
  std::string gateway; ///< an ssh resource to hop through
  std::vector<std::string> ssh_options;
  std::string machinefile; ///< ssh: host[:N] lines
  bool from_config = false;
};

struct PilotSpec {
  std::string resource = "local";
  std::uint32_t nodes = 0; ///< 0: one (local, batch) or one per host (ssh)
  std::uint32_t slots_per_node = 0; ///< 0: the number of cores
  std::string label;
  std::vector<std::string> node_names; ///< one per node; empty: generated
  std::uint32_t gpus_per_node = 0;  ///< declared GPUs; 0: detected
  std::uint64_t memory_per_node = 0; ///< bytes jobs may reserve per node; 0: the node's memory
  std::int64_t walltime_ms = 0;      ///< the pilot ends this long after it starts; 0: never
  std::string queue;                 ///< batch queue or partition
  std::vector<std::string> batch_options; ///< raw sbatch/qsub flags, one element each
};

struct PilotInfo {
  PilotId id;
  PilotSpec spec;
  std::string state;
  std::uint32_t nodes_up = 0;
  std::uint64_t slots_used = 0;
  std::uint64_t slots_total = 0;
  std::int64_t created_ms = 0;
  std::string reason;
  std::vector<std::string> nodes;
  std::int64_t end_ms = 0; ///< when its walltime ends; 0: never
  std::string batch_id;    ///< the batch system's job id
};

enum class OutputStream { Stdout, Stderr };

/// The variables a submission exports (JobSpec::export_env, `--export`), from this process's
/// environment: "ALL" is every variable except those bound to this session or machine (PWD,
/// SHLVL, SSH_*, DISPLAY, TMUX, XDG_RUNTIME_DIR, ... and sortie's, Slurm's and MPI's own);
/// "NONE" none; a comma-separated list names variables (NAME: its value here, if set) or sets
/// them (NAME=VALUE), and may include ALL. Errors name the bad item.
Result<std::vector<std::pair<std::string, std::string>>> exported_environment(
    const std::string& spec);

/// Where and how a call to an engine's handler runs (Client::call).
struct CallOptions {
  std::string label;          ///< only engines with this label ("": any)
  std::uint64_t engine = 0;   ///< only this engine (0: the least loaded that matches)
  std::uint32_t retries = 0;  ///< times it runs again elsewhere if its engine dies
  std::int64_t timeout_ms = 0; ///< fails with Timeout after running this long (0: none)
  std::int32_t priority = 0;  ///< higher first
};

class Client {
public:
  /// Connects and authenticates to the hub of a profile (with start_if_needed, starting it
  /// first when none runs). Without a hub: Unavailable, with the way to start one.
  static Result<Client> connect(const ConnectOptions& options = {});
  /// The same for a named profile: `Client::connect("cluster", {.start_if_needed = true})`.
  static Result<Client> connect(const std::string& profile, ConnectOptions options);

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  /// Submits one job. On success it is durable in the hub's store. A `group_name` joins other
  /// submissions of that name (selections by name, max_per_node).
  Result<Submitted> submit(const JobSpec& spec, const std::string& group_name = {});
  /// Submits one job per index of `range`; each sees SORTIE_ARRAY_INDEX.
  Result<Submitted> submit_array(const JobSpec& spec,
                                 const ArrayRange& range,
                                 const std::string& group_name = {},
                                 bool confirmed = false);
  /// Submits many jobs at once, as one group, in one transaction.
  Result<Submitted> submit_batch(const std::vector<JobSpec>& specs,
                                 const std::string& group_name = {},
                                 bool confirmed = false);
  /// One item of a batch: a job, or an array of jobs (one per index).
  using BatchItem = SubmitItem;
  /// Submits jobs and arrays at once, as one group, in one transaction (job files).
  /// `confirmed`: more jobs than the hub's confirm_above are meant (else FailedPrecondition).
  Result<Submitted> submit_items(const std::vector<BatchItem>& items,
                                 const std::string& group_name = {},
                                 bool confirmed = false);

  /// One job with its spec, state history and resource usage.
  Result<JobInfo> job(JobId id);
  /// Jobs matching `selector` (all by default), optionally only in `states`.
  Result<std::vector<JobInfo>> jobs(const JobSelector& selector = JobSelector::every(),
                                    const std::vector<JobState>& states = {});
  /// The newest `limit` of those jobs (0: all), with how many matched in each state.
  Result<JobPage> jobs_page(const JobSelector& selector,
                            const std::vector<JobState>& states,
                            std::uint64_t limit);

  /// Blocks until every selected job is final. `on_progress` (optional) is called as jobs finish.
  /// timeout_ms < 0 waits forever; on timeout the error code is Timeout.
  Result<WaitProgress> wait(const JobSelector& selector,
                            const std::function<void(const WaitProgress&)>& on_progress = {},
                            std::int64_t timeout_ms = -1);

  Result<CancelSummary> cancel(const JobSelector& selector, const std::string& reason = {});
  /// Forgets ended jobs (records and output files), as job_retention does; queued and running
  /// ones are kept and counted.
  Result<ForgetSummary> forget(const JobSelector& selector);

  /// Streams an attempt's output (0: the latest) to `sink` as it is read. With `follow`, keeps
  /// streaming until the attempt ends. `sink` returning false stops early.
  Result<void> output(JobId id,
                      OutputStream stream,
                      bool follow,
                      const std::function<bool(std::string_view)>& sink,
                      std::uint32_t attempt = 0);

  Result<HubStatus> hub_status();
  /// Asks the hub to stop (it stops its local pilots and requeues what ran on them).
  /// With `restart`, the hub exits without stopping its pilots: agents and their running jobs
  /// carry on and reconnect to the next hub (`sortie hub restart`).
  Result<void> stop_hub(bool restart = false);

  Result<PilotId> add_pilot(const PilotSpec& spec);
  Result<std::vector<PilotInfo>> pilots();
  Result<void> cancel_pilot(PilotId id);

  /// Defines a resource (`replace`: overwrite one of the same name).
  Result<void> add_resource(const ResourceSpec& spec, bool replace = false);
  Result<std::vector<ResourceSpec>> resources();
  Result<void> remove_resource(const std::string& name);

  /// Calls the handler `handler` of a compiled engine (sortie::Engine, docs/engines.md) with
  /// `payload`: its reply, or the sortie::Error it returned (its code; the message names the
  /// handler, engine and task), Timeout (options.timeout_ms), Unavailable (EngineLost), Internal
  /// (it threw). The call is a transient task: not stored (docs/engines.md), it fails with
  /// Unavailable if the hub stops meanwhile. This thread reads the reply itself.
  Result<std::string> call(const std::string& handler, std::string payload,
                           const CallOptions& options = {});
  /// The same, returning at once; the future is ready when the call ended. Calls run
  /// concurrently on as many engines as match.
  std::future<Result<std::string>> call_async(const std::string& handler, std::string payload,
                                              const CallOptions& options = {});

  /// The hub's heartbeat interval from the handshake.
  std::int64_t heartbeat_interval_ms() const;

private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace sortie
