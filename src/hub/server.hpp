// SPDX-License-Identifier: Apache-2.0
// Runs a hub process: takes the profile's lock, opens the store, listens on TCP and on the unix
// socket, writes hub.json, serves connections until stopped (`hub stop`, SIGTERM or SIGINT).
#pragma once

#include "hub/config.hpp"

namespace sortie::hub {

struct RunOptions {
  HubConfig config;
  /// If >= 0, readiness ("ready ADDRESS") or the start-up error ("error MESSAGE") is written to
  /// this descriptor, which is then closed: `sortie hub start` waits on it.
  int ready_fd = -1;
  /// HOST[:PORT] from the command line; wins over config.toml's hub.listen.
  std::string listen;
};

/// Runs the hub to completion; returns the process exit code. Start-up errors are reported on
/// ready_fd (if given) and in the log.
int run_hub(RunOptions options);

} // namespace sortie::hub
