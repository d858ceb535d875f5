// SPDX-License-Identifier: Apache-2.0
// Child processes of the hub: spawning with pipes, running commands to their end, reaping.
#include "launch/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/write.hpp>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/spawn.hpp"

extern char** environ;

namespace sortie::launch {

void ChildWatch::expect(int pid, std::function<void(int)> on_exit) {
  waiting_[pid] = std::move(on_exit);
}

bool ChildWatch::dispatch(int pid, int status) {
  auto it = waiting_.find(pid);
  if (it == waiting_.end())
    return false;
  auto f = std::move(it->second);
  waiting_.erase(it);
  f(status);
  return true;
}

namespace {

struct Pipe {
  int r = -1, w = -1;
  ~Pipe() {
    if (r >= 0)
      ::close(r);
    if (w >= 0)
      ::close(w);
  }
  bool open() { return ::pipe2(&r, O_CLOEXEC) == 0; }
  int take_r() { return std::exchange(r, -1); }
  int take_w() { return std::exchange(w, -1); }
};

} // namespace

Result<Spawned> spawn_piped(const std::vector<std::string>& argv,
                            bool with_stdin,
                            const std::string& stderr_path) {
  if (argv.empty())
    return make_error(ErrorCode::InvalidArgument, "no command to run");
  Pipe in, out, err;
  if ((with_stdin && !in.open()) || !out.open() || (stderr_path.empty() && !err.open()))
    return make_error(ErrorCode::Io, fmt::format("cannot create pipes: {}", errno_text(errno)));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (with_stdin)
    posix_spawn_file_actions_adddup2(&fa, in.r, 0);
  else
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out.w, 1);
  if (stderr_path.empty())
    posix_spawn_file_actions_adddup2(&fa, err.w, 2);
  else
    posix_spawn_file_actions_addopen(&fa, 2, stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0600);
  // The hub's sockets are not close-on-exec.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  SpawnAttr attr;
  std::vector<char*> av;
  for (const auto& a : argv)
    av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argv[0].c_str(), &fa, attr.get(), av.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    return make_error(ErrorCode::Unavailable,
                      fmt::format("cannot run '{}': {}", argv[0], errno_text(rc)));
  Spawned s;
  s.pid = pid;
  s.stdin_fd = with_stdin ? in.take_w() : -1;
  s.stdout_fd = out.take_r();
  s.stderr_fd = stderr_path.empty() ? err.take_r() : -1;
  return s;
}

bool CommandResult::ok() const {
  return !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string exit_text(int status) {
  if (WIFEXITED(status))
    return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* n = sigabbrev_np(WTERMSIG(status));
    return n ? fmt::format("SIG{}", n) : fmt::format("signal {}", WTERMSIG(status));
  }
  return "unknown status";
}

std::string CommandResult::describe() const {
  std::string text = err.empty() ? out : err;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' '))
    text.pop_back();
  std::string how = timed_out ? "timed out" : exit_text(status);
  return text.empty() ? how : fmt::format("{}: {}", how, text);
}

namespace {

Awaitable<void> read_all(asio::posix::stream_descriptor& d, std::string& into) {
  char buf[4096];
  while (true) {
    auto [ec, n] = co_await d.async_read_some(asio::buffer(buf), use_nothrow);
    into.append(buf, n);
    if (ec)
      co_return;
    if (into.size() > (1u << 20)) // a command that talks this much is not one of ours
      co_return;
  }
}

} // namespace

Awaitable<Result<CommandResult>> run_command(asio::any_io_executor ex,
                                            ChildWatch& watch,
                                            std::vector<std::string> argv,
                                            std::string input,
                                            std::int64_t timeout_ms) {
  auto spawned = spawn_piped(argv, !input.empty());
  if (!spawned.ok())
    co_return spawned.error();
  struct State {
    explicit State(asio::any_io_executor e) : done(e), deadline(e), out(e), err(e), in(e) {}
    asio::steady_timer done;
    asio::steady_timer deadline;
    asio::posix::stream_descriptor out, err, in;
    int pending = 3;
    CommandResult result;
  };
  auto st = std::make_shared<State>(ex);
  st->out.assign(spawned->stdout_fd);
  st->err.assign(spawned->stderr_fd);
  st->done.expires_at(asio::steady_timer::time_point::max());
  auto finish = [st] {
    if (--st->pending == 0)
      st->done.cancel();
  };
  int pid = spawned->pid;
  watch.expect(pid, [st, finish](int status) {
    st->result.status = status;
    st->deadline.cancel();
    finish();
  });
  spawn_root(ex, "reading a command's output", read_all(st->out, st->result.out),
             [finish](bool) { finish(); });
  spawn_root(ex, "reading a command's errors", read_all(st->err, st->result.err),
             [finish](bool) { finish(); });
  if (spawned->stdin_fd >= 0) {
    st->in.assign(spawned->stdin_fd);
    auto data = std::make_shared<std::string>(std::move(input));
    asio::async_write(st->in, asio::buffer(*data), [st, data](error_code, std::size_t) {
      error_code ignored;
      st->in.close(ignored);
    });
  }
  st->deadline.expires_after(std::chrono::milliseconds(timeout_ms));
  st->deadline.async_wait([st, pid](error_code ec) {
    if (ec)
      return;
    st->result.timed_out = true;
    ::kill(-pid, SIGKILL); // its session: whatever it started too
    ::kill(pid, SIGKILL);
  });
  while (st->pending > 0)
    co_await st->done.async_wait(use_nothrow);
  co_return std::move(st->result);
}

namespace {

/// The state letter of /proc/...stat at `path` ('R', 'S', 'D', 'Z', ...), or 0 when unreadable.
char stat_state(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line))
    return 0;
  // The state follows the command name in parentheses, which may itself contain ')'.
  auto close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() ? 0 : line[close + 2];
}

bool running_state(char state) { return state != 0 && state != 'Z' && state != 'X'; }

} // namespace

bool pid_alive(int pid) {
  if (pid <= 0)
    return false;
  // Any thread: a killed process's first thread turns zombie while another can still be
  // finishing a write (uninterruptible), holding the process's files and locks.
  std::error_code ec;
  for (std::filesystem::directory_iterator it(fmt::format("/proc/{}/task", pid), ec), end;
       !ec && it != end; it.increment(ec))
    if (running_state(stat_state((it->path() / "stat").string())))
      return true;
  return false;
}

bool pid_exiting(int pid) {
  return pid > 0 && !running_state(stat_state(fmt::format("/proc/{}/stat", pid))) &&
         pid_alive(pid);
}

} // namespace sortie::launch
