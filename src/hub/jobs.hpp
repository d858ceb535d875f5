// SPDX-License-Identifier: Apache-2.0
// A job's life: its states and their history, requeues, losses and retries, dependencies (--after),
// queue timeouts, cancellation, the final state, and forgetting ended jobs (job_retention, `job
// forget`). What other rooms care about is emitted as events (started elsewhere; attempt ended,
// final, schedulable, forgotten here). Takes CancelRequest and ForgetRequest.
#pragma once

#include <functional>
#include <queue>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "hub/room.hpp"
#include "hub/router.hpp"

namespace sortie::hub {

class Jobs {
public:
  explicit Jobs(Core& core);
  void register_with(Router& router);

  // Lookups and selectors -----------------------------------------------------------------
  Job* find(JobId id) { return core_.state.find_job(id); }
  const Job* find(JobId id) const { return core_.state.find_job(id); }
  /// "job N does not exist", saying when it may have been forgotten.
  Error missing(JobId id) const;
  /// A selector's id ranges: each first..last with 1 <= first <= last (last 0: just first).
  static Result<void> check_ranges(const pb::JobSelector& sel);
  /// The groups a selector names by name; an error if it names a group (by id or name) that
  /// does not exist.
  Result<std::vector<std::uint64_t>> groups_named(const pb::JobSelector& sel) const;
  /// `named`: groups_named(sel).
  bool selected(const pb::JobSelector& sel, const std::vector<std::uint64_t>& named,
                const Job& job) const;
  /// Calls fn for each job the selector names (ids, groups, or all), each once; ids that name
  /// no job are counted in *missing when given.
  void for_each_selected(const pb::JobSelector& sel, const std::vector<std::uint64_t>& named,
                         const std::function<void(Job&)>& fn, std::uint64_t* missing = nullptr);
  /// Every job --after names exists.
  Result<void> check_after(const pb::JobSpec& spec, std::size_t item) const;

  // Specs and groups ----------------------------------------------------------------------
  /// Decodes what the hub needs of a spec; the group (for max_per_node) is bound by the caller.
  Spec make_spec(std::string bytes, const pb::JobSpec& spec);
  /// One shared copy of each distinct exported environment.
  std::shared_ptr<const std::string> intern_env(std::string bytes);
  /// The run timeout of a spec (kept in its bytes only: the agent enforces it).
  static std::int64_t run_timeout_of(const Spec& spec);

  // Life ----------------------------------------------------------------------------------
  /// A job just created or loaded as queued: its queue timeout starts counting.
  void watch_queue_timeout(const Job& job);
  void transition(Job& job, JobState to, std::int64_t now_ms);
  /// A queued job becomes schedulable (no dependencies left) or waits for them.
  /// `at_load`: a dependency that no longer exists was forgotten after it succeeded (one that
  /// failed would have cancelled this job in the same commit).
  void make_ready(Job& job, bool at_load = false);
  /// Takes a queued job out of the scheduler (it is there unless it waits for dependencies).
  void unqueue(Job& job);
  void requeue(Job& job, bool front);
  /// The job no longer holds its nodes.
  void detach_from_agent(Job& job);
  /// Tells the agent running `job` to kill it.
  void send_kill(const Job& job, const std::string& reason);
  /// The job's agent is gone: requeue it while retries remain, else it stays lost.
  void lost(Job& job, const std::string& why);
  /// Ends the job in `to` (a final state), with `reason` when not empty.
  void end(Job& job, JobState to, std::string reason = {});
  /// The job reached a final state: tell waiters, followers and dependents.
  void final(Job& job);
  void cancel(Job& job, const std::string& reason);
  /// Retries left for a job (lost or, with retry_on_failure, failed).
  bool may_retry(const Job& job, bool failure) const;
  /// Forgets these ended jobs: rows, output files, and the specs and groups left unused.
  void forget(const std::vector<JobId>& ids);
  /// Queue timeouts and the job_retention sweep.
  void tick();
  std::string output_loss_note(const Job& job) const;
  /// Why a job with these requirements waits, like squeue's REASON: no node could ever run it
  /// (and which requirement rules them out), or none has room now (and how much they have).
  std::string why_waiting(const scheduler::Requirements& req) const;

private:
  /// What a request that acts on jobs (`verb` them) selects: its groups by name, after checking
  /// that it names some jobs and that its ranges are valid.
  Result<std::vector<std::uint64_t>> named_for(const pb::JobSelector& sel, const char* verb) const;
  void handle_cancel(const Sender& from, const pb::CancelRequest& req);
  void handle_forget(const Sender& from, const pb::ForgetRequest& req);
  /// Dependents of a job that reached a final state: released, or cancelled if it failed.
  void settle_dependents(const Job& job);
  void forget_expired();

  Core& core_;
  /// Queue timeouts, earliest first: (deadline in Unix ms, job).
  std::priority_queue<std::pair<std::int64_t, JobId>, std::vector<std::pair<std::int64_t, JobId>>,
                      std::greater<>>
      queue_deadlines_;
  /// Jobs waiting for a job (--after), by the job they wait for.
  std::unordered_map<JobId, std::vector<JobId>> dependents_;
  std::int64_t next_retention_sweep_ms_ = 0;
};

} // namespace sortie::hub
