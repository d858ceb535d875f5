// SPDX-License-Identifier: Apache-2.0
// `sortie hub start|stop|restart|check|status`.
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
// hub


int hub_start(const Globals& g, const HubStartArgs& a) {
  auto profile = resolve_profile(g.profile);
  if (!profile.ok())
    return fail(profile.error());
  hub::HubConfig config;
  config.profile = *profile;
  config.self_exe = self_exe();
  if (!a.listen.empty()) {
    if (auto r = hub::parse_listen(a.listen, config); !r.ok())
      return fail(r.error()); // checked here so the daemon's parent reports it
  }
  if (a.foreground) {
    if (a.ready_fd >= 0) {
      // Started by a program (start_hub), which reaps this process at once: the hub goes on in a
      // child, so that it is not that program's child. A program that lives on (a notebook)
      // would otherwise keep every hub it started, once stopped, as a zombie.
      pid_t child = ::fork();
      if (child < 0)
        return fail(make_error(ErrorCode::Io,
                               fmt::format("cannot start the hub: fork: {}", errno_text(errno))));
      if (child > 0)
        ::_exit(0);
    }
    log::init("hub", a.log_file.empty() ? "-" : a.log_file,
              g.verbose ? log::Level::Debug : log::Level::Info);
    return hub::run_hub(hub::RunOptions{config, a.ready_fd, a.listen});
  }
  // Daemon: `sortie hub start --foreground` detached; it says when it is ready.
  StartHubOptions o;
  o.profile = profile->name;
  o.sortie_exe = self_exe();
  o.listen = a.listen;
  o.verbose = g.verbose;
  auto started = start_hub(o);
  if (!started.ok()) {
    if (started.error().code == ErrorCode::Unavailable)
      return fail(make_error(ErrorCode::FailedPrecondition, started.error().message));
    return fail(started.error());
  }
  std::printf("hub started for profile '%s' (pid %d), listening on %s\n", started->profile.c_str(),
              started->pid, started->address.c_str());
  return kExitOk;
}

/// Stops the hub (or, with `restart`, makes it exit leaving its pilots running) and returns once
/// its process is gone. The hub stops only after its agents ended their jobs and left.
int hub_stop(const Globals& g, bool restart) {
  auto profile = resolve_profile(g.profile);
  if (!profile.ok())
    return fail(profile.error());
  auto client = connect(g);
  if (!client.ok()) {
    if (client.error().code == ErrorCode::Unavailable) {
      std::printf("no hub is running for profile '%s'\n", profile->name.c_str());
      return kExitOk;
    }
    return fail(client.error());
  }
  auto hf = read_hub_file(profile->hub_file());
  if (auto r = client->stop_hub(restart); !r.ok())
    return fail(r.error());
  // Return once the process is gone, so `hub stop && hub start` works.
  if (hf.ok() && hf->pid > 0) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (launch::pid_alive(hf->pid) && std::chrono::steady_clock::now() < deadline) {
      pollfd none{-1, 0, 0};
      ::poll(&none, 0, 20);
    }
    if (launch::pid_alive(hf->pid))
      return fail(make_error(ErrorCode::Timeout,
                             fmt::format("the hub (pid {}) did not exit within 120 s", hf->pid)));
  }
  if (!restart)
    std::printf("hub stopped for profile '%s'\n", profile->name.c_str());
  return kExitOk;
}

/// `hub check [--recover]`: PRAGMA integrity_check of the profile's store, with the hub stopped;
/// --recover copies what is readable into a new store and keeps the damaged one beside it.
int hub_check(const Globals& g, bool recover) {
  auto profile = resolve_profile(g.profile);
  if (!profile.ok())
    return fail(profile.error());
  int lock = ::open(profile->lock_file().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock < 0 || ::flock(lock, LOCK_EX | LOCK_NB) != 0) {
    if (lock >= 0)
      ::close(lock);
    return fail(make_error(ErrorCode::FailedPrecondition,
                           fmt::format("the hub of profile '{}' is running: stop it first with "
                                       "`sortie hub stop`",
                                       profile->name)));
  }
  auto path = profile->store_file();
  if (!std::filesystem::exists(path)) {
    std::printf("profile '%s' has no store yet (%s)\n", profile->name.c_str(), path.c_str());
    return kExitOk;
  }
  auto problems = store::check_store_file(path, 20);
  if (!problems.ok())
    return fail(problems.error());
  if (problems->empty()) {
    std::printf("%s is intact (PRAGMA integrity_check: ok)%s\n", path.c_str(),
                recover ? "; nothing to recover" : "");
    return kExitOk;
  }
  std::printf("%s is damaged:\n", path.c_str());
  for (const auto& p : *problems)
    std::printf("  %s\n", printable(p).c_str());
  if (!recover) {
    std::printf("`sortie hub check --recover` copies what is readable into a new store and keeps "
                "the damaged one beside it.\n");
    return kExitFailure;
  }
  auto fresh = path;
  fresh += ".recovered";
  std::filesystem::remove(fresh);
  auto floors = store::read_id_reservation(profile->ids_file());
  if (!floors.ok())
    return fail(floors.error());
  auto report = store::recover_store(path, fresh, *floors);
  if (!report.ok())
    return fail(report.error());
  auto left = store::check_store_file(fresh, 5);
  if (!left.ok() || !left->empty())
    return fail(make_error(ErrorCode::Internal,
                           fmt::format("the recovered store {} is not intact either; the damaged "
                                       "one was left in place",
                                       fresh.string())));
  auto aside = path;
  aside += fmt::format(".damaged-{}", wall_now_ms() / 1000);
  for (const char* suffix : {"", "-wal", "-shm"}) {
    auto from = path;
    from += suffix;
    auto to = aside;
    to += suffix;
    if (std::filesystem::exists(from))
      std::filesystem::rename(from, to);
  }
  std::filesystem::rename(fresh, path);
  for (const char* suffix : {"-wal", "-shm"}) {
    auto extra = fresh;
    extra += suffix;
    std::filesystem::remove(extra);
  }
  std::printf("recovered into %s (the damaged store is now %s):\n", path.c_str(), aside.c_str());
  for (const auto& t : report->tables)
    std::printf("  %-10s %llu rows copied, %llu unreadable\n", t.name.c_str(),
                static_cast<unsigned long long>(t.copied),
                static_cast<unsigned long long>(t.unreadable));
  std::printf("Jobs whose rows were unreadable are gone; start the hub to carry on. New jobs get "
              "ids from %llu, past every id handed out before.\n",
              static_cast<unsigned long long>(report->next_job_id));
  return kExitOk;
}

int hub_status(const Globals& g, bool as_json) {
  auto client = connect(g);
  if (!client.ok()) {
    if (as_json && client.error().code == ErrorCode::Unavailable) {
      std::printf("{\"running\": false}\n");
      return kExitNoHub;
    }
    return fail(client.error());
  }
  auto s = client->hub_status();
  if (!s.ok())
    return fail(s.error());
  std::fputs((as_json ? status_json(*s) : status_text(*s)).c_str(), stdout);
  return kExitOk;
}

} // namespace sortie::cli
