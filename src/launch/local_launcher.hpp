// SPDX-License-Identifier: Apache-2.0
// Starts agents as processes on this machine: `sortie agent --profile-dir DIR --pilot ID ...`,
// each in its own session (so a terminal's signals or the hub's death do not reach it), logging
// to <profile>/logs/agent-<pilot>-<node>.log. They find the hub through the profile's hub.json;
// the token is never on their command line.
#pragma once

#include <filesystem>

#include "common/profile.hpp"
#include "launch/launcher.hpp"

namespace sortie::launch {

class LocalLauncher final : public Launcher {
public:
  LocalLauncher(std::filesystem::path sortie_exe, Profile profile);

  // Launcher
  Result<Allocation> submit(const PilotRequest& request) override;
  void cancel(const Allocation& allocation) override;
  bool process_alive(int pid) const override;

private:
  std::filesystem::path exe_;
  Profile profile_;
};

/// True while `pid` exists and is not a zombie (reads /proc/PID/stat: `kill -0` succeeds on
/// zombies, which linger where PID 1 reaps slowly).
bool pid_alive(int pid);

} // namespace sortie::launch
