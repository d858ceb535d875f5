// SPDX-License-Identifier: Apache-2.0
// Starting a profile's hub from the library (`sortie hub start`, connect-or-start): the hub runs
// as a daemon in its own session and says on a pipe when it listens, or why it could not start.
#include <fcntl.h>
#include <sys/file.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <limits>

#include <thread>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/profile.hpp"
#include "protocol/blocking_link.hpp"
#include "common/spawn.hpp"
#include "common/text.hpp"
#include "sortie/client.hpp"

extern char** environ;

namespace sortie {
namespace {

bool executable(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

/// What the hub said on its ready pipe before `deadline`: "ready ADDRESS", "error MESSAGE", or
/// nothing (it exited, or is still starting).
std::string read_ready_line(int fd, std::chrono::steady_clock::time_point deadline) {
  std::string line;
  char buf[4096];
  pollfd p{fd, POLLIN, 0};
  while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    if (::poll(&p, 1, 1000) <= 0)
      continue;
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0)
      break;
    line.append(buf, static_cast<std::size_t>(n));
  }
  return std::string(trim(line));
}

} // namespace

Result<std::filesystem::path> sortie_program() {
  if (const char* env = std::getenv("SORTIE_EXE"); env && *env) {
    if (!executable(env))
      return make_error(ErrorCode::NotFound,
                        fmt::format("SORTIE_EXE names '{}', which is not an executable program",
                                    env));
    return std::filesystem::path(env);
  }
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec && self.filename() == "sortie")
    return self;
  if (!ec && executable(self.parent_path() / "sortie"))
    return self.parent_path() / "sortie";
#ifdef SORTIE_INSTALLED_EXE
  if (executable(SORTIE_INSTALLED_EXE))
    return std::filesystem::path(SORTIE_INSTALLED_EXE);
#endif
  if (const char* path = std::getenv("PATH"))
    for (const auto& dir : split(path, ':'))
      if (!dir.empty() && executable(std::filesystem::path(dir) / "sortie"))
        return std::filesystem::path(dir) / "sortie";
  return make_error(ErrorCode::NotFound,
                    "cannot find the sortie program to start a hub with: put it on PATH or name "
                    "it in SORTIE_EXE");
}

namespace {

/// True when no process holds the profile's hub lock (no hub runs or is starting).
bool lock_is_free(const std::filesystem::path& lock) {
  int fd = ::open(lock.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return true;
  bool free = ::flock(fd, LOCK_EX | LOCK_NB) == 0;
  ::close(fd); // (releases it)
  return free;
}

} // namespace

Result<HubStarted> start_hub(const StartHubOptions& options) {
  SORTIE_ASSIGN_OR_RETURN(profile, resolve_profile(options.profile));
  SORTIE_TRY(create_profile_dirs(profile));
  std::filesystem::path exe = options.sortie_exe;
  if (exe.empty()) {
    SORTIE_ASSIGN_OR_RETURN(found, sortie_program());
    exe = found;
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return make_error(ErrorCode::Io, fmt::format("cannot start the hub: pipe: {}",
                                                 errno_text(errno)));
  std::vector<std::string> args = {exe.string(), "--profile", profile.name, "hub", "start",
                                   "--foreground", "--ready-fd", "3", "--log-file",
                                   profile.log_file().string()};
  if (options.verbose)
    args.insert(args.begin() + 1, "--verbose");
  if (!options.listen.empty()) {
    args.push_back("--listen");
    args.push_back(options.listen);
  }
  std::vector<char*> argv;
  for (auto& s : args)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, profile.log_file().c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  posix_spawn_file_actions_addclosefrom_np(&fa, 4);
  SpawnAttr attr; // its own session: a terminal's signals do not reach it
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, exe.c_str(), &fa, attr.get(), argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return make_error(ErrorCode::Io,
                      fmt::format("cannot start the hub ({}): {}", exe.string(), errno_text(rc)));
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options.timeout_ms);
  std::string line = read_ready_line(fds[0], deadline);
  ::close(fds[0]);
  // The spawned process leaves the hub to a child of its own and exits: it is reaped here (it has
  // exited once it said a line; without one, it may still be starting).
  ::waitpid(pid, nullptr, line.empty() ? WNOHANG : 0);
  if (line.starts_with("ready ")) { // "ready ADDRESS PID"
    std::string_view rest = std::string_view(line).substr(6);
    auto space = rest.rfind(' ');
    auto hub = parse_int(space == std::string_view::npos ? "" : rest.substr(space + 1), 1,
                         std::numeric_limits<pid_t>::max());
    return HubStarted{profile.name, hub.ok() ? static_cast<pid_t>(*hub) : pid,
                      std::string(rest.substr(0, space))};
  }
  if (line.starts_with("error ")) {
    std::string message = line.substr(6);
    if (message.find("already running") == std::string::npos)
      return make_error(ErrorCode::FailedPrecondition, message);
    // Another start holds the profile: it may not listen yet (it takes the lock first). Say
    // "already running" once it answers, so that what follows can connect.
    while (std::chrono::steady_clock::now() < deadline) {
      auto hf = read_hub_file(profile.hub_file());
      if (hf.ok() && !hf->socket.empty() && net::BlockingLink::connect_unix(hf->socket, 1000).ok())
        break;
      if (lock_is_free(profile.lock_file())) {
        // That start ended without serving (a hub that failed, still exiting when this one
        // looked): start again, in the time left.
        StartHubOptions again = options;
        again.timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               deadline - std::chrono::steady_clock::now())
                               .count();
        if (again.timeout_ms > 0)
          return start_hub(again);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20)); // polling another process
    }
    return make_error(ErrorCode::AlreadyExists, message);
  }
  return make_error(ErrorCode::Unavailable,
                    fmt::format("the hub exited during start-up (or did not say it was ready "
                                "within {}); see {}",
                                format_duration_ms(options.timeout_ms), profile.log_file().string()));
}

} // namespace sortie
