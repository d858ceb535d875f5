// SPDX-License-Identifier: Apache-2.0
// What every command uses: errors to exit codes, the hub connection, job id lists, the terminal.
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

int fail(const Error& e) {
  std::fprintf(stderr, "sortie: %s\n", e.to_string().c_str());
  switch (e.code) {
  case ErrorCode::Unavailable:
    return kExitNoHub;
  case ErrorCode::Timeout:
    return kExitTimeout;
  case ErrorCode::InvalidArgument:
    return kExitUsage;
  default:
    return kExitFailure;
  }
}

std::filesystem::path self_exe() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path("sortie") : p;
}

/// Parses "17", "17-20" and comma lists of those.
Result<JobSelector> parse_ids(const std::vector<std::string>& args) {
  JobSelector sel;
  for (const auto& arg : args)
    for (const auto& part : split(arg, ',')) {
      if (part.empty())
        continue;
      auto dash = part.find('-');
      auto bad = [&] {
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("'{}' is not a job id or range: use 17, 17-20 or 3,5,9-12",
                                      part));
      };
      auto a = parse_int(part.substr(0, dash), 1, INT64_MAX);
      if (!a.ok())
        return bad();
      std::int64_t b = *a;
      if (dash != std::string::npos) {
        auto last = parse_int(part.substr(dash + 1), 1, INT64_MAX);
        if (!last.ok() || *last < *a)
          return bad();
        b = *last;
      }
      sel.ranges.emplace_back(JobId(static_cast<std::uint64_t>(*a)),
                              JobId(static_cast<std::uint64_t>(b)));
    }
  return sel;
}


/// Connects to the profile's hub; `start`: commands that create work start it when none runs.
Result<Client> connect(const Globals& g, bool start) {
  ConnectOptions o;
  o.profile = g.profile;
  o.client_name = "cli";
  o.start_if_needed = start;
  o.sortie_exe = self_exe();
  o.on_hub_started = [](const HubStarted& h) {
    std::fprintf(stderr, "sortie: started the hub for profile '%s' (pid %d, %s)\n",
                 h.profile.c_str(), h.pid, h.address.c_str());
  };
  auto client = Client::connect(o);
  if (g.verbose) { // -v: which hub this command talks to, and how
    auto profile = resolve_profile(g.profile);
    auto hf = profile.ok() ? read_hub_file(profile->hub_file()) : Result<HubFile>(profile.error());
    if (hf.ok())
      std::fprintf(stderr, "sortie: profile '%s': hub pid %d, socket %s, tcp %s:%u: %s\n",
                   profile->name.c_str(), hf->pid, hf->socket.c_str(), hf->host.c_str(),
                   static_cast<unsigned>(hf->port),
                   client.ok() ? "connected" : client.error().to_string().c_str());
  }
  return client;
}

bool stderr_is_tty() { return ::isatty(2) == 1; }

int terminal_width() {
  winsize ws{};
  if (::ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

} // namespace sortie::cli
