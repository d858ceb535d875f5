// SPDX-License-Identifier: Apache-2.0
// Local pilots: agents started on this machine with posix_spawn.
#include "launch/local_driver.hpp"

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

namespace {

class LocalDriver final : public Driver {
public:
  LocalDriver(DriverContext ctx, DriverHooks hooks) : c_(std::move(ctx)), hooks_(std::move(hooks)) {}
  ~LocalDriver() override { *alive_ = false; }

  void start() override {
    std::vector<int> pids;
    for (int k = 0; k < c_.spec.node_names_size(); ++k) {
      auto pid = spawn_agent(c_.spec.node_names(k));
      if (!pid.ok()) {
        for (int p : pids)
          ::kill(p, SIGTERM);
        hooks_.report(c_.pilot, PilotReport{PilotReport::Kind::Failed, pid.error().to_string()});
        return;
      }
      pids.push_back(*pid);
      running_.push_back(*pid);
      c_.watch->expect(*pid, [this, alive = alive_, pid = *pid](int status) {
        if (*alive)
          on_exit(pid, status);
      });
    }
    PilotReport r{PilotReport::Kind::Submitted, {}};
    r.pids = pids;
    hooks_.report(c_.pilot, r);
  }

  void cancel() override {
    for (int pid : running_)
      ::kill(pid, SIGTERM);
  }

private:
  Result<int> spawn_agent(const std::string& node_name) {
    const auto& spec = c_.spec;
    std::vector<std::string> args = {c_.sortie_exe.string(),
                                     "agent",
                                     "--profile-dir",
                                     c_.profile_dir.string(),
                                     "--pilot",
                                     std::to_string(c_.pilot.value),
                                     "--node-name",
                                     node_name,
                                     "--slots",
                                     std::to_string(spec.slots_per_node())};
    if (!spec.label().empty()) {
      args.push_back("--label");
      args.push_back(spec.label());
    }
    if (spec.gpus_per_node() > 0) {
      std::string list;
      for (std::uint32_t g = 0; g < spec.gpus_per_node(); ++g)
        list += (list.empty() ? "" : ",") + std::to_string(g);
      args.push_back("--gpus");
      args.push_back(list);
    }
    if (spec.memory_per_node()) {
      args.push_back("--memory");
      args.push_back(std::to_string(spec.memory_per_node()) + "B");
    }
    if (c_.walltime_end_ms) {
      args.push_back("--walltime-end-ms");
      args.push_back(std::to_string(c_.walltime_end_ms));
    }
    std::vector<char*> argv;
    for (auto& s : args)
      argv.push_back(s.data());
    argv.push_back(nullptr);
    auto log_path = c_.log_dir / fmt::format("agent-{}-{}.log", c_.pilot.value, node_name);
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
    int rc = posix_spawn(&pid, c_.sortie_exe.c_str(), &fa, attr.get(), argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
      return make_error(ErrorCode::Io, fmt::format("cannot start agent {}: {} ({})", node_name,
                                                   errno_text(rc), c_.sortie_exe.string()));
    log::info("pilot {}: started agent {} (pid {}), log {}", c_.pilot.value, node_name, pid,
              log_path.string());
    return static_cast<int>(pid);
  }

  void on_exit(int pid, int status) {
    std::erase(running_, pid);
    PilotReport r{running_.empty() ? PilotReport::Kind::Gone : PilotReport::Kind::NodeGone,
                  fmt::format("agent process {} exited ({})", pid, exit_text(status))};
    r.pid = pid;
    r.status = status;
    hooks_.report(c_.pilot, r);
  }

  DriverContext c_;
  DriverHooks hooks_;
  std::vector<int> running_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

} // namespace

std::unique_ptr<Driver> make_local_driver(DriverContext ctx, DriverHooks hooks) {
  return std::make_unique<LocalDriver>(std::move(ctx), std::move(hooks));
}

} // namespace sortie::launch
