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

#include <string>
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

/// Starts the process (argv[0] searched in the agent's PATH when it has no '/') in its own
/// session with default signal dispositions and stdin from /dev/null. An exec failure (missing
/// program, no permission) is returned as an error naming the program.
Result<pid_t> spawn_process(const SpawnRequest& request);

/// The pids in a job's tree: members of session `sid` and their descendants, plus `extra_roots`
/// and their descendants. Reads /proc.
std::vector<pid_t> process_tree(pid_t sid);

/// Sends `sig` to the process group `sid` and to every process in the job's tree. Returns how
/// many processes were signalled.
int signal_tree(pid_t sid, int sig);

/// SIGKILLs the tree until nothing is left (new forks race with the kill, so it repeats a few
/// times).
void kill_tree(pid_t sid);

/// Makes this process the subreaper of its descendants (PR_SET_CHILD_SUBREAPER).
void become_subreaper();

/// The keeper: a small process forked at agent start (before any thread exists). The agent tells
/// it each job's session as the job starts and ends; when the agent dies the keeper's pipe reaches
/// end-of-file and it kills every registered job's tree, then exits. Returns the pipe's write end.
Result<int> start_keeper();
/// Keeper messages; non-blocking, best effort.
void keeper_register(int fd, pid_t sid);
void keeper_unregister(int fd, pid_t sid);

/// Reads MemTotal from /proc/meminfo (bytes; 0 if unknown).
std::uint64_t total_memory_bytes();

} // namespace sortie::agent
