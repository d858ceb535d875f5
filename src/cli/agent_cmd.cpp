// SPDX-License-Identifier: Apache-2.0
// `sortie agent`: a pilot's agent process (started by pilots, not by people).
#include "cli/commands.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "agent/agent.hpp"
#include "sortie/job_files.hpp"
#include "cli/output.hpp"
#include "common/mapfile.hpp"
#include "common/clock.hpp"
#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/log.hpp"
#include "common/profile.hpp"
#include "common/text.hpp"
#include "common/version.hpp"
#include "hub/server.hpp"
#include "launch/process.hpp"
#include "sortie/client.hpp"
#include "store/store.hpp"

extern char** environ;

namespace sortie::cli {

// ---------------------------------------------------------------------------------------------
// agent (started by pilots)


/// `agent --stdio`: the hub started us through ssh. The first line on standard input is the
/// link's key (hex); the rest of standard input and standard output carry the protocol, so they
/// move to descriptors no child inherits, and 0/1 become /dev/null and standard error (which ssh
/// brings back to the hub's log of this agent).
Result<void> take_stdio(agent::AgentOptions& o) {
  std::string line;
  char c;
  while (line.size() < 256) {
    ssize_t n = ::read(0, &c, 1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0 || c == '\n')
      break;
    line += c;
  }
  HubFile hf;
  hf.token = line;
  auto key = token_key(hf);
  if (!key.ok() || key->size() != 32)
    return make_error(ErrorCode::InvalidArgument,
                      "--stdio: standard input must start with the link key the hub sends; "
                      "`sortie agent --stdio` is started by the hub (ssh pilots), not by hand");
  o.stdio_key = *key;
  o.stdio_in = ::fcntl(0, F_DUPFD_CLOEXEC, 3);
  o.stdio_out = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (o.stdio_in < 0 || o.stdio_out < 0 || devnull < 0)
    return make_error(ErrorCode::Io, fmt::format("--stdio: {}", errno_text(errno)));
  ::dup2(devnull, 0);
  ::close(devnull);
  ::dup2(2, 1);
  return ok_result();
}

int agent_main(const Globals& g, const AgentArgs& a) {
  log::init("agent", "-", g.verbose ? log::Level::Debug : log::Level::Info);
  agent::AgentOptions o;
  if (a.stdio) {
    if (auto r = take_stdio(o); !r.ok())
      return fail(r.error());
  } else if (!a.hub_file.empty())
    o.hub_file = a.hub_file;
  else if (!a.profile_dir.empty())
    o.hub_file = profile_at(a.profile_dir).hub_file();
  else {
    auto profile = resolve_profile(g.profile);
    if (!profile.ok())
      return fail(profile.error());
    o.hub_file = profile->hub_file();
  }
  o.pilot = a.pilot;
  o.node_name = a.node_name;
  o.address = a.address;
  o.slots = a.slots;
  o.label = a.label;
  auto w = parse_duration_ms(a.connect_window);
  if (!w.ok())
    return fail(w.error());
  o.connect_window_ms = *w;
  if (!a.gpus.empty()) {
    o.gpus_declared = true;
    for (const auto& part : split(a.gpus, ',')) {
      auto gpu = parse_int(part, 0, 63);
      if (!gpu.ok())
        return fail(make_error(ErrorCode::InvalidArgument,
                               fmt::format("--gpus: '{}' is not a device number (0..63)", part)));
      o.gpus.push_back(static_cast<std::uint32_t>(*gpu));
    }
  }
  if (!a.memory.empty()) {
    auto b = parse_size_bytes(a.memory);
    if (!b.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--memory: " + b.error().message));
    o.memory = *b;
  }
  o.walltime_end_ms = a.walltime_end_ms;
  if (a.walltime_ms > 0) // the batch job started us: its walltime runs from now
    o.walltime_end_ms = wall_now_ms() + a.walltime_ms;
  // In a Slurm job: Slurm's node name, which is also what mpiexec (through srun) knows it by.
  if (const char* n = std::getenv("SLURMD_NODENAME"); n && *n) {
    if (o.node_name.empty())
      o.node_name = n;
    if (o.address.empty())
      o.address = n;
  }
  return agent::run_agent(o);
}

/// Splits `sortie ... submit [options] [--] COMMAND ARGS...` into the part CLI11 parses and the
/// command, which is passed through untouched (CLI11 2.1's prefix commands are unreliable). The
/// command starts after `--` or at the first word that is neither an option nor an option's value,
/// so `sortie submit --slots 2 python3 sim.py --seed 7` works as it does with sbatch and srun.

} // namespace sortie::cli
