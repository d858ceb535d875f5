// SPDX-License-Identifier: Apache-2.0
// Local pilots: agents started on this machine with posix_spawn.
#include "launch/local_launcher.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#include <fstream>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/spawn.hpp"
#include "common/log.hpp"

extern char** environ;

namespace sortie::launch {

bool pid_alive(int pid) {
  if (pid <= 0)
    return false;
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(f, line))
    return false;
  // The state follows the command name in parentheses, which may itself contain ')'.
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size())
    return false;
  char state = line[close + 2];
  return state != 'Z' && state != 'X';
}

LocalLauncher::LocalLauncher(std::filesystem::path sortie_exe, Profile profile)
    : exe_(std::move(sortie_exe)), profile_(std::move(profile)) {}

Result<Allocation> LocalLauncher::submit(const PilotRequest& request) {
  Allocation alloc;
  for (const auto& a : request.agents) {
    std::vector<std::string> args = {exe_.string(),
                                     "agent",
                                     "--profile-dir",
                                     profile_.dir.string(),
                                     "--pilot",
                                     std::to_string(request.pilot.value),
                                     "--node-name",
                                     a.node_name,
                                     "--slots",
                                     std::to_string(a.slots)};
    if (!a.label.empty()) {
      args.push_back("--label");
      args.push_back(a.label);
    }
    if (!a.gpus.empty()) {
      std::string list;
      for (auto g : a.gpus)
        list += (list.empty() ? "" : ",") + std::to_string(g);
      args.push_back("--gpus");
      args.push_back(list);
    }
    if (a.memory) {
      args.push_back("--memory");
      args.push_back(std::to_string(a.memory) + "B");
    }
    if (a.walltime_end_ms) {
      args.push_back("--walltime-end-ms");
      args.push_back(std::to_string(a.walltime_end_ms));
    }
    std::vector<char*> argv;
    for (auto& s : args)
      argv.push_back(s.data());
    argv.push_back(nullptr);

    auto log_path = profile_.agent_log_dir() /
                    fmt::format("agent-{}-{}.log", request.pilot.value, a.node_name);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    // The hub's sockets are not close-on-exec; an agent holding the listening socket would keep
    // it accepting after the hub died.
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    SpawnAttr attr;
    pid_t pid = 0;
    int rc = posix_spawn(&pid, exe_.c_str(), &fa, attr.get(), argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
      if (rc != 0) {
      cancel(alloc);
      return make_error(ErrorCode::Io,
                        fmt::format("cannot start agent {}: {} ({})", a.node_name, errno_text(rc),
                                    exe_.string()));
    }
    log::info("pilot {}: started agent {} (pid {}), log {}", request.pilot.value, a.node_name, pid,
              log_path.string());
    alloc.pids.push_back(pid);
  }
  return alloc;
}

void LocalLauncher::cancel(const Allocation& allocation) {
  for (int pid : allocation.pids)
    if (pid > 0)
      ::kill(pid, SIGTERM);
}

bool LocalLauncher::process_alive(int pid) const { return pid_alive(pid); }

} // namespace sortie::launch
