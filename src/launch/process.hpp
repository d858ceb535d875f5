// SPDX-License-Identifier: Apache-2.0
// Child processes of the hub that are not agents it runs itself: batch commands (sbatch, squeue,
// qsub, ...) run to completion with their output captured, and long-lived ssh processes whose
// pipes carry an agent link. Nothing here blocks the event loop, and nothing goes through a
// shell: commands are argument vectors.
//
// The hub reaps every child in one SIGCHLD handler (hub/server.cpp); ChildWatch hands the exit
// status of the children started here to whoever waits for them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/asio.hpp"
#include "sortie/result.hpp"

namespace sortie::launch {

class ChildWatch {
public:
  /// Calls `on_exit(status)` when `pid` has been reaped.
  void expect(int pid, std::function<void(int status)> on_exit);
  /// For the reaper: true if someone was waiting for `pid`.
  bool dispatch(int pid, int status);

private:
  std::unordered_map<int, std::function<void(int)>> waiting_;
};

struct Spawned {
  int pid = -1;
  int stdin_fd = -1;  ///< write end of its standard input (-1: /dev/null)
  int stdout_fd = -1; ///< read end of its standard output
  int stderr_fd = -1; ///< read end of its standard error (-1: it went to a file)
};

/// Starts argv[0] (looked up in PATH) in its own session. Standard output is always a pipe;
/// standard input a pipe when `with_stdin`, else /dev/null; standard error a pipe, or appended
/// to `stderr_path` when that is not empty. Descriptors returned are close-on-exec.
Result<Spawned> spawn_piped(const std::vector<std::string>& argv,
                            bool with_stdin,
                            const std::string& stderr_path = {});

struct CommandResult {
  int status = 0; ///< as from waitpid
  bool timed_out = false;
  std::string out;
  std::string err;
  bool ok() const;
  /// "exit status 1: sbatch: error: invalid partition specified: nope"
  std::string describe() const;
};

/// Runs a command to its end, feeding it `input`, and collects its output. A command still
/// running after `timeout_ms` is killed (and reported as timed out). Fails only when the command
/// cannot be started.
Awaitable<Result<CommandResult>> run_command(asio::any_io_executor ex,
                                            ChildWatch& watch,
                                            std::vector<std::string> argv,
                                            std::string input,
                                            std::int64_t timeout_ms);

/// "exit status 3", "SIGKILL".
std::string exit_text(int status);

/// True while a thread of `pid` exists and is not a zombie (reads /proc/PID/task/*/stat:
/// `kill -0` succeeds on zombies, which linger where PID 1 reaps slowly, and a killed process's
/// first thread is a zombie while others still finish).
bool pid_alive(int pid);

/// True while `pid` was killed or exited but a thread of it is still finishing (and so still
/// holds its files and locks).
bool pid_exiting(int pid);


} // namespace sortie::launch
