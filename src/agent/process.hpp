// SPDX-License-Identifier: Apache-2.0
// Job processes on a node: spawning without a shell, finding a job's whole process tree and
// killing it, and the keeper that kills jobs when their agent dies. Plain POSIX, no event loop.
//
// A job's leader starts in a new session (its pid is the session and process-group id). Its tree
// is every process in that session plus every descendant of those (which catches children that
// moved to another process group or session while their parent lived); the agent is a child
// subreaper, so orphans of a job are reparented to it rather than to init and stay findable.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "sortie/result.hpp"

namespace sortie::agent {

struct SpawnRequest {
  std::vector<std::string> argv;
  std::vector<std::string> env; ///< "NAME=VALUE", the whole environment
  std::string cwd;              ///< empty: inherit
  int stdout_fd = -1;           ///< becomes the child's fd 1
  int stderr_fd = -1;           ///< becomes the child's fd 2
};

struct ChildFrame;

/// A process spawn_process() started. Until it execs it shares the agent's memory, and the agent
/// does not wait for that: what it reads (its arguments, environment and stack) lives here, and
/// here it leaves why it could not start. Keep it until the process has been reaped; dropped
/// before, it leaks that memory rather than pull it from under the process.
class StartedChild {
public:
  StartedChild() = default;
  StartedChild(StartedChild&& other) noexcept;
  StartedChild& operator=(StartedChild&& other) noexcept;
  ~StartedChild();

  pid_t pid() const { return pid_; }
  /// Once the process has been reaped: why it could not start (it then exited with 127), or
  /// empty if it did; frees what it read.
  std::string reaped();

private:
  friend Result<StartedChild> spawn_process(SpawnRequest, int*);
  pid_t pid_ = -1;
  ChildFrame* frame_ = nullptr;
};

/// Starts the process (argv[0] searched in the agent's PATH when it has no '/') in its own
/// session with default signal dispositions, no signal blocked, stdin from /dev/null and no
/// descriptor of the agent's beyond 0-2. It returns before the process has exec'd: a failure to
/// exec (missing program, no permission, a cwd it cannot enter) is told by
/// StartedChild::reaped(), naming what failed; a failure to create the process, here. With
/// `pidfd`, the new process's pidfd is stored there (-1 on kernels without CLONE_PIDFD);
/// close-on-exec. (clone with CLONE_VM, as glibc's posix_spawn, but without CLONE_VFORK where
/// the child can make raw system calls (x86-64, arm64) and close_range exists (Linux 5.9): the
/// agent goes on while the child execs, elsewhere it waits as posix_spawn does.)
Result<StartedChild> spawn_process(SpawnRequest request, int* pidfd = nullptr);

/// What identifies a job's processes: its leader's session, and a tag in every process's
/// environment (SORTIE_JOB_TAG, unique per agent, job and attempt), which survives setsid() and
/// double forks that leave the session.
struct JobProcesses {
  pid_t sid = 0;
  std::string tag;
};

/// The environment entry that carries a tag: "SORTIE_JOB_TAG=<tag>".
std::string job_tag_entry(const std::string& tag);

/// Every live process of the job: members of its session, processes carrying its tag, and all
/// their descendants. Scans /proc (costly; used on cancel, timeout and agent death).
std::vector<pid_t> job_processes(const JobProcesses& job);

/// Sends `sig` to the job's process group and every process of the job. Returns how many.
int signal_job(const JobProcesses& job, int sig);

/// SIGKILLs the job until nothing of it is left (stopping first, since new forks race with the
/// kill; repeats a few rounds).
void kill_job(const JobProcesses& job);

/// Children of this process that are not in `known`, with the job tag in their environment
/// (empty when they carry none). Orphans of jobs are reparented to the agent (the subreaper), so
/// this finds what a finished job left running outside its process group. Cheap: reads only
/// this process's children list and their environments.
std::vector<std::pair<pid_t, std::string>> adopted_children(const std::vector<pid_t>& known);

/// This process's children.
std::vector<pid_t> own_children();

/// Makes this process the subreaper of its descendants (PR_SET_CHILD_SUBREAPER).
void become_subreaper();

/// The jobs the keeper is to kill, in memory the agent and the keeper share (a memfd both
/// map): the agent writes an entry as a job's leader starts and clears it as the leader exits,
/// with no system call and no wake-up of the keeper, which reads the table only once the agent
/// is gone or its lease has run out. It grows as needed (so nothing announced is ever dropped,
/// as a full pipe would); an entry is 64 bytes.
class KeeperTable {
public:
  /// Over a memfd from start_keeper (not owned); -1: a table that records nothing.
  explicit KeeperTable(int memfd);
  ~KeeperTable();
  KeeperTable(const KeeperTable&) = delete;
  KeeperTable& operator=(const KeeperTable&) = delete;

  /// An error when the table could not grow (out of memory): the job is not in it, and the
  /// error says so.
  Result<void> add(const JobProcesses& job);
  void remove(pid_t sid);
  std::size_t size() const { return at_.size(); }

  /// What a table's memfd holds now: read by the keeper, from its own mapping.
  static std::vector<JobProcesses> read(int memfd);

private:
  struct Entry;
  Result<void> grow();

  int fd_;
  Entry* entries_ = nullptr;
  std::size_t capacity_ = 0;
  std::vector<std::uint32_t> free_;          ///< free entries, the lowest last
  std::unordered_map<pid_t, std::uint32_t> at_; ///< sid -> entry
};

/// The keeper: a small process forked at agent start (before any thread exists). The agent
/// records each job in their shared KeeperTable as the job starts and ends; when the agent dies
/// the keeper's pipe reaches end-of-file and it kills every job in the table, then exits.
/// The agent also keeps renewing a lease over the pipe (keeper_lease): if the lease runs out, the
/// agent is frozen or has lost the hub for longer than the hub waits, so the keeper stops and
/// kills it and every job it has, itself unable to be frozen by what froze the agent
/// (docs/architecture.md §5 has the rule and its numbers).
/// `cgroup_dir` (may be empty) is removed after the jobs are killed.
struct Keeper {
  int fd = -1;       ///< the pipe's write end
  int table_fd = -1; ///< the memfd of the KeeperTable
  pid_t pid = 0;
};
Result<Keeper> start_keeper(const std::string& cgroup_dir);
/// The lease now ends at this CLOCK_MONOTONIC time (ms); it only ever moves later.
std::string keeper_lease(std::int64_t end_monotonic_ms);
/// Writes messages to the keeper; non-blocking, best effort.
void keeper_write(int fd, const std::string& messages);

/// Reads MemTotal from /proc/meminfo (bytes; 0 if unknown).
std::uint64_t total_memory_bytes();

} // namespace sortie::agent
