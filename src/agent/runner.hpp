// SPDX-License-Identifier: Apache-2.0
// The job attempts of one node: the launch queue (started in order as slots free, the moment
// they free), each attempt's process tree in its own session with its output on pipes, reaping
// (a thread blocked in wait4 hands each exit to the loop), run timeouts, kills of whole trees,
// and every running job in the keeper's table. What happens is reported to the owner (the agent,
// or a test) as STARTED/FINISHED events and output chunks; it knows nothing of the hub or the link.
//
// "Attempt" is one run of a job on this node; "task" is kept for one call to an engine.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <boost/asio/posix/stream_descriptor.hpp>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/limits.hpp"
#include "agent/process.hpp"
#include "protocol/asio.hpp"
#include "protocol/sortie.pb.h"

namespace sortie::agent {

struct JobAttempt;
class Reaper;

/// What the runner needs to know of its node.
struct RunnerConfig {
  std::string node_name;
  std::string address;            ///< how other nodes reach this one (MPI hostfiles)
  std::uint32_t slots = 1;
  std::vector<std::uint32_t> gpus; ///< the node's GPUs (jobs see only theirs)
  int keeper_table_fd = -1;        ///< the memfd of the keeper's KeeperTable (-1: no keeper)
  std::string nonce;               ///< makes job tags unique to this agent process
  std::vector<std::string> base_env; ///< the node's environment, "NAME=VALUE"
  std::int64_t kill_grace_ms = 3000; ///< SIGTERM to SIGKILL at a run timeout
  /// Watch exits on pidfds where the kernel has them (false: always the reaper thread, as on
  /// kernels before 5.3; tests use it to run that path here).
  bool pidfds = true;
};

/// What the runner tells its owner.
struct RunnerHooks {
  /// A STARTED or FINISHED event. `urgent`: worth sending now (a start alone is not).
  std::function<void(pb::JobEvent, bool urgent)> event;
  /// Output of an attempt, in order per stream, within the credit given (add_credit).
  std::function<void(pb::OutputChunk)> output;
  /// After stop_all(): the last attempt has ended.
  std::function<void()> all_ended;
  /// An engine job is about to start: what its environment needs to reach its agent. An MPI
  /// engine job across nodes comes with the socket and key the hub chose for all its nodes.
  std::function<std::vector<std::string>(std::uint64_t job, std::uint32_t attempt,
                                         const std::string& socket, const std::string& key)>
      engine_env;
};

class JobRunner {
public:
  JobRunner(asio::io_context& io, RunnerConfig config, MemoryLimits& limits, RunnerHooks hooks);
  ~JobRunner();
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  /// Starts the reaper thread and the sweep of orphans.
  void start();
  /// Queues an assigned attempt (a duplicate of one held is ignored; a new attempt of a job whose
  /// old one is still ending waits for it).
  void assign(pb::Assignment& assignment);
  /// Starts queued attempts, in order, while slots are free.
  void start_queued();
  /// Kills the attempt (SIGTERM, SIGKILL after `grace_ms`; at once with 0) or drops it from the
  /// queue; it ends with a FINISHED event either way. `attempt` 0: whichever it holds.
  void cancel(std::uint64_t job, std::uint32_t attempt, std::int64_t grace_ms,
              const std::string& reason);
  /// Stops starting anything and cancels every attempt; all_ended() follows.
  void stop_all(std::int64_t grace_ms, const std::string& reason);
  /// SIGKILLs every running attempt's tree and stops the reaper (the agent is giving up).
  void kill_all();
  /// Stops the reaper thread: no callback after this returns.
  void stop_reaper();

  /// From the hub's registration reply.
  void set_kill_grace(std::int64_t ms) { config_.kill_grace_ms = ms; }
  /// Output bytes this runner may read before more credit comes.
  void set_credit(std::int64_t bytes);
  void add_credit(std::int64_t bytes);

  /// Attempts held (queued, running or ending), with whether each has started.
  void describe(pb::AgentRegister& reg) const;
  std::size_t held() const;
  bool queue_empty() const { return launch_queue_.empty(); }
  std::uint32_t used_slots() const { return used_slots_; }

private:
  void launch(JobAttempt& t);
  std::vector<std::string> job_env(JobAttempt& t); // (notes its engine variables in t)
  void arm_watch_timer();
  void watch(JobAttempt& t);
  void drain_unwatched(JobAttempt& t);
  void emit_output(JobAttempt& t, int stream, std::string data);
  Awaitable<void> read_stream(std::uint64_t job, int stream,
                              std::shared_ptr<asio::posix::stream_descriptor> pipe);
  /// Waits for the leader's exit on its pidfd (`pidfd`, or one opened here when it is -1), on
  /// the loop (false: none to be had: this kernel has no pidfds, or the descriptors ran out).
  bool watch_exit(pid_t pid, int pidfd);
  /// With pidfds, children that are not job leaders (orphans of jobs, which this process
  /// adopts as their subreaper) are reaped here: after a kill, and by the sweep.
  void reap_strays();
  /// The fallback: a thread blocked in wait4 that posts each exit to the loop.
  void start_reaper_thread();
  void reap(pid_t pid, std::shared_ptr<asio::posix::stream_descriptor> pidfd);
  void on_child_exit(pid_t pid, int status, const rusage& ru);
  void maybe_finish(JobAttempt& t);
  void emit_finished(const JobAttempt& t, const std::string& error,
                     std::optional<int> exit_code = {});
  void erase(std::uint64_t job);
  Awaitable<void> sweep_loop();
  const std::string& address() const { return config_.address; }

  asio::io_context& io_;
  RunnerConfig config_;
  MemoryLimits& limits_;
  RunnerHooks hooks_;
  std::unordered_map<std::uint64_t, std::unique_ptr<JobAttempt>> attempts_;
  /// New attempts of jobs whose old attempt is still ending here.
  std::unordered_map<std::uint64_t, pb::Assignment> next_attempts_;
  std::deque<std::uint64_t> launch_queue_;
  std::unordered_map<pid_t, std::uint64_t> by_pid_;
  std::uint32_t used_slots_ = 0;
  std::vector<std::string> pending_cgroups_; ///< job cgroups to remove once empty
  KeeperTable keeper_table_; ///< the jobs running, as the keeper will see them
  asio::steady_timer watch_timer_;
  bool watch_armed_ = false;
  std::deque<std::uint64_t> unwatched_; ///< started jobs whose pipes the loop does not watch yet
  std::unique_ptr<char[]> drain_buffer_; ///< drain_unwatched()'s reads (kReadChunk bytes)
  /// The node's environment with a submission's exported one and a job's own --env over it, as
  /// the last job started had them (an array's jobs share them); each name's entry.
  struct MergedEnv {
    std::shared_ptr<const pb::EnvList> exported;
    std::string own; ///< the job's own variables, as NAME\0VALUE\0...
    std::vector<std::string> env;
    std::unordered_map<std::string, std::size_t> at;
  };
  std::unique_ptr<MergedEnv> merged_env_;
  /// The exported environment the last assignment brought, as bytes and parsed.
  std::string parsed_env_bytes_;
  std::shared_ptr<const pb::EnvList> parsed_env_;
  std::int64_t budget_ = 0;             ///< output credit left
  asio::steady_timer credit_wakeup_;
  bool stopping_ = false;
  bool pidfds_ = false; ///< exits are watched on pidfds; else the reaper thread waits for them
  bool reaper_started_ = false;
  std::unique_ptr<Reaper> reaper_; // its thread must stop before what it posts about goes away
};

} // namespace sortie::agent
