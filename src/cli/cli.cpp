// SPDX-License-Identifier: Apache-2.0
// The `sortie` command: argument parsing (CLI11) and one function per command, each a thin layer
// over the client library. Exit codes: 0 success, 1 failure (a job failed, a request was refused),
// 2 bad usage, 3 no hub running, 4 timeout.
#include "cli/cli.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "agent/agent.hpp"
#include "cli/output.hpp"
#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/log.hpp"
#include "common/profile.hpp"
#include "common/text.hpp"
#include "common/version.hpp"
#include "hub/server.hpp"
#include "launch/local_launcher.hpp"
#include "sortie/client.hpp"

extern char** environ;

namespace sortie::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitNoHub = 3;
constexpr int kExitTimeout = 4;

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

Result<ArrayRange> parse_array(const std::string& text) {
  auto bad = [&] {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("--array '{}' is not a range: use FIRST-LAST or FIRST-LAST:STEP, "
                                  "e.g. 1-1000 or 0-99:2",
                                  text));
  };
  ArrayRange r;
  std::string body = text;
  if (auto colon = text.find(':'); colon != std::string::npos) {
    auto step = parse_int(text.substr(colon + 1), 1, INT64_MAX);
    if (!step.ok())
      return bad();
    r.step = *step;
    body = text.substr(0, colon);
  }
  auto dash = body.find('-', 1);
  if (dash == std::string::npos) {
    auto one = parse_int(body, INT64_MIN, INT64_MAX);
    if (!one.ok())
      return bad();
    r.first = r.last = *one;
    return r;
  }
  auto a = parse_int(body.substr(0, dash), INT64_MIN, INT64_MAX);
  auto b = parse_int(body.substr(dash + 1), INT64_MIN, INT64_MAX);
  if (!a.ok() || !b.ok() || *b < *a)
    return bad();
  r.first = *a;
  r.last = *b;
  return r;
}

struct Globals {
  std::string profile;
  bool verbose = false;
};

Result<Client> connect(const Globals& g) {
  ConnectOptions o;
  o.profile = g.profile;
  o.client_name = "cli";
  return Client::connect(o);
}

bool stderr_is_tty() { return ::isatty(2) == 1; }

int terminal_width() {
  winsize ws{};
  if (::ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    return ws.ws_col;
  return 80;
}

// ---------------------------------------------------------------------------------------------
// hub

struct HubStartArgs {
  bool foreground = false;
  std::string listen;
  int ready_fd = -1;
  std::string log_file;
};

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
    log::init("hub", a.log_file.empty() ? "-" : a.log_file,
              g.verbose ? log::Level::Debug : log::Level::Info);
    return hub::run_hub(hub::RunOptions{config, a.ready_fd, a.listen});
  }
  // Daemon: start `sortie hub start --foreground` detached and wait for it to say it is ready.
  if (auto r = create_profile_dirs(*profile); !r.ok())
    return fail(r.error());
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return fail(make_error(ErrorCode::Io, "pipe failed"));
  auto exe = self_exe();
  std::vector<std::string> args = {exe.string(), "--profile", profile->name, "hub", "start",
                                   "--foreground", "--ready-fd", "3", "--log-file",
                                   profile->log_file().string()};
  if (g.verbose)
    args.insert(args.begin() + 1, "--verbose");
  if (!a.listen.empty()) {
    args.push_back("--listen");
    args.push_back(a.listen);
  }
  std::vector<char*> argv;
  for (auto& s : args)
    argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, profile->log_file().c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 3);
  posix_spawn_file_actions_addclosefrom_np(&fa, 4);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, exe.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return fail(make_error(ErrorCode::Io, fmt::format("cannot start the hub: {}", errno_text(rc))));
  }
  std::string line;
  char buf[4096];
  pollfd p{fds[0], POLLIN, 0};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    if (::poll(&p, 1, 1000) <= 0)
      continue;
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0)
      break;
    line.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  line = std::string(trim(line));
  if (line.rfind("ready ", 0) == 0) {
    std::printf("hub started for profile '%s' (pid %d), listening on %s\n", profile->name.c_str(),
                pid, line.substr(6).c_str());
    return kExitOk;
  }
  if (line.rfind("error ", 0) == 0) {
    std::fprintf(stderr, "sortie: %s\n", line.substr(6).c_str());
    return kExitFailure;
  }
  std::fprintf(stderr, "sortie: the hub exited during start-up; see %s\n",
               profile->log_file().c_str());
  return kExitFailure;
}

int hub_stop(const Globals& g) {
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
  if (auto r = client->stop_hub(); !r.ok())
    return fail(r.error());
  // Return once the process is gone, so `hub stop && hub start` works.
  if (hf.ok() && hf->pid > 0) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (launch::pid_alive(hf->pid) && std::chrono::steady_clock::now() < deadline) {
      pollfd none{-1, 0, 0};
      ::poll(&none, 0, 20);
    }
    if (launch::pid_alive(hf->pid))
      return fail(make_error(ErrorCode::Timeout,
                             fmt::format("the hub (pid {}) did not exit within 60 s", hf->pid)));
  }
  std::printf("hub stopped for profile '%s'\n", profile->name.c_str());
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

// ---------------------------------------------------------------------------------------------
// pilots

struct PilotAddArgs {
  std::string resource = "local";
  std::uint32_t slots = 0;
  std::uint32_t nodes = 0;
  std::string label;
  std::string node_names;
  bool json = false;
};

int pilot_add(const Globals& g, const PilotAddArgs& a) {
  PilotSpec spec;
  spec.resource = a.resource;
  spec.slots_per_node = a.slots;
  spec.label = a.label;
  if (!a.node_names.empty())
    spec.node_names = split(a.node_names, ',');
  spec.nodes = a.nodes ? a.nodes : static_cast<std::uint32_t>(std::max<std::size_t>(1, spec.node_names.size()));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto id = client->add_pilot(spec);
  if (!id.ok())
    return fail(id.error());
  if (a.json)
    std::printf("{\"id\": %llu}\n", static_cast<unsigned long long>(id->value));
  else
    std::printf("%llu\n", static_cast<unsigned long long>(id->value));
  return kExitOk;
}

int pilot_list(const Globals& g, bool as_json) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto pilots = client->pilots();
  if (!pilots.ok())
    return fail(pilots.error());
  std::fputs((as_json ? pilots_json(*pilots) : pilots_table(*pilots)).c_str(), stdout);
  return kExitOk;
}

int pilot_cancel(const Globals& g, std::uint64_t id) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  if (auto r = client->cancel_pilot(PilotId(id)); !r.ok())
    return fail(r.error());
  std::printf("pilot %llu cancelled\n", static_cast<unsigned long long>(id));
  return kExitOk;
}

// ---------------------------------------------------------------------------------------------
// jobs

struct SubmitArgs {
  std::string label;
  std::uint32_t slots = 1;
  std::vector<std::string> env;
  std::string cwd;
  std::string name;
  std::string array;
  bool json = false;
};

int submit(const Globals& g, const SubmitArgs& a, std::vector<std::string> command) {
  if (command.empty())
    return fail(make_error(ErrorCode::InvalidArgument,
                           "no command given: sortie submit [options] -- PROGRAM [ARGS...]"));
  JobSpec spec;
  spec.argv = std::move(command);
  spec.slots = a.slots;
  spec.label = a.label;
  spec.name = a.name;
  for (const auto& kv : a.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return fail(make_error(ErrorCode::InvalidArgument,
                             fmt::format("--env '{}' is not NAME=VALUE", kv)));
    spec.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  // Like sbatch, jobs run where they were submitted unless told otherwise.
  std::error_code ec;
  spec.cwd = a.cwd.empty() ? std::filesystem::current_path(ec).string()
                           : std::filesystem::absolute(a.cwd, ec).lexically_normal().string();
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  Result<Submitted> s = make_error(ErrorCode::Internal, "");
  if (!a.array.empty()) {
    auto range = parse_array(a.array);
    if (!range.ok())
      return fail(range.error());
    s = client->submit_array(spec, *range);
  } else {
    s = client->submit(spec);
  }
  if (!s.ok())
    return fail(s.error());
  if (a.json)
    std::fputs(submitted_json(*s).c_str(), stdout);
  else if (s->count == 1)
    std::printf("%llu\n", static_cast<unsigned long long>(s->first_id.value));
  else
    std::printf("%llu-%llu\n", static_cast<unsigned long long>(s->first_id.value),
                static_cast<unsigned long long>(s->first_id.value + s->count - 1));
  return kExitOk;
}

struct SelectArgs {
  std::vector<std::string> ids;
  bool all = false;
  std::vector<std::uint64_t> groups;
};

Result<JobSelector> selector_from(const SelectArgs& a, bool default_all) {
  SORTIE_ASSIGN_OR_RETURN(sel, parse_ids(a.ids));
  for (auto gid : a.groups)
    sel.groups.push_back(GroupId(gid));
  sel.all = a.all;
  if (sel.ranges.empty() && sel.groups.empty() && !sel.all) {
    if (!default_all)
      return make_error(ErrorCode::InvalidArgument,
                        "name the jobs: ids (17, 17-20, 3,5), --group G, or --all");
    sel.all = true;
  }
  return sel;
}

int job_list(const Globals& g, const SelectArgs& a, const std::vector<std::string>& states, bool as_json) {
  auto sel = selector_from(a, true);
  if (!sel.ok())
    return fail(sel.error());
  std::vector<JobState> want;
  for (const auto& s : states)
    for (const auto& name : split(s, ',')) {
      auto st = parse_job_state(name);
      if (!st)
        return fail(make_error(ErrorCode::InvalidArgument,
                               fmt::format("'{}' is not a job state: use queued, assigned, running, "
                                           "succeeded, failed, cancelled, timed_out or lost",
                                           name)));
      want.push_back(*st);
    }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto jobs = client->jobs(*sel, want);
  if (!jobs.ok())
    return fail(jobs.error());
  std::fputs((as_json ? jobs_json(*jobs) : jobs_table(*jobs)).c_str(), stdout);
  return kExitOk;
}

int job_show(const Globals& g, const std::string& id_text, bool as_json) {
  auto id = parse_int(id_text, 1, INT64_MAX);
  if (!id.ok())
    return fail(make_error(ErrorCode::InvalidArgument,
                           fmt::format("'{}' is not a job id", id_text)));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto job = client->job(JobId(static_cast<std::uint64_t>(*id)));
  if (!job.ok())
    return fail(job.error());
  std::fputs((as_json ? job_json(*job) : job_details(*job)).c_str(), stdout);
  return kExitOk;
}

int job_wait(const Globals& g, const SelectArgs& a, const std::string& timeout, bool quiet) {
  auto sel = selector_from(a, false);
  if (!sel.ok())
    return fail(sel.error());
  std::int64_t timeout_ms = -1;
  if (!timeout.empty()) {
    auto t = parse_duration_ms(timeout);
    if (!t.ok())
      return fail(t.error());
    timeout_ms = *t;
  }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  bool bar = stderr_is_tty() && !quiet;
  auto on_progress = [&](const WaitProgress& p) {
    std::fprintf(stderr, "\r%s\033[K", progress_line(p, terminal_width()).c_str());
    std::fflush(stderr);
  };
  auto result = bar ? client->wait(*sel, on_progress, timeout_ms) : client->wait(*sel, {}, timeout_ms);
  if (bar)
    std::fputs("\n", stderr);
  if (!result.ok())
    return fail(result.error());
  if (result->all_succeeded()) {
    if (!quiet)
      std::printf("%llu jobs succeeded\n", static_cast<unsigned long long>(result->total));
    return kExitOk;
  }
  std::vector<std::string> ids;
  for (auto id : result->failed_ids)
    ids.push_back(std::to_string(id.value));
  std::fprintf(stderr, "sortie: %llu of %llu jobs did not succeed (%llu failed, %llu cancelled): %s%s\n",
               static_cast<unsigned long long>(result->total - result->succeeded),
               static_cast<unsigned long long>(result->total),
               static_cast<unsigned long long>(result->failed),
               static_cast<unsigned long long>(result->cancelled), join(ids, " ").c_str(),
               result->total - result->succeeded > ids.size() ? " ..." : "");
  return kExitFailure;
}

int job_logs(const Globals& g, const std::string& id_text, bool follow, bool use_stderr, std::uint32_t attempt) {
  auto id = parse_int(id_text, 1, INT64_MAX);
  if (!id.ok())
    return fail(make_error(ErrorCode::InvalidArgument, fmt::format("'{}' is not a job id", id_text)));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto r = client->output(JobId(static_cast<std::uint64_t>(*id)),
                          use_stderr ? OutputStream::Stderr : OutputStream::Stdout, follow,
                          [](std::string_view data) {
                            std::fwrite(data.data(), 1, data.size(), stdout);
                            if (std::ferror(stdout))
                              return false;
                            std::fflush(stdout);
                            return true;
                          },
                          attempt);
  if (!r.ok())
    return fail(r.error());
  return kExitOk;
}

int job_cancel(const Globals& g, const SelectArgs& a) {
  auto sel = selector_from(a, false);
  if (!sel.ok())
    return fail(sel.error());
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto r = client->cancel(*sel);
  if (!r.ok())
    return fail(r.error());
  std::printf("%llu cancelled, %llu already finished", static_cast<unsigned long long>(r->cancelled),
              static_cast<unsigned long long>(r->already_finished));
  if (r->not_found)
    std::printf(", %llu not found", static_cast<unsigned long long>(r->not_found));
  std::printf("\n");
  return r->not_found ? kExitFailure : kExitOk;
}

// ---------------------------------------------------------------------------------------------
// agent (started by pilots)

struct AgentArgs {
  std::string profile_dir;
  std::string hub_file;
  std::uint64_t pilot = 0;
  std::string node_name;
  std::uint32_t slots = 0;
  std::string label;
  std::string connect_window = "60s";
};

int agent_main(const Globals& g, const AgentArgs& a) {
  log::init("agent", "-", g.verbose ? log::Level::Debug : log::Level::Info);
  agent::AgentOptions o;
  if (!a.hub_file.empty())
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
  o.slots = a.slots;
  o.label = a.label;
  auto w = parse_duration_ms(a.connect_window);
  if (!w.ok())
    return fail(w.error());
  o.connect_window_ms = *w;
  return agent::run_agent(o);
}

/// Splits `sortie ... submit [options] [--] COMMAND ARGS...` into the part CLI11 parses and the
/// command, which is passed through untouched (CLI11 2.1's prefix commands are unreliable). The
/// command starts after `--` or at the first word that is neither an option nor an option's value,
/// so `sortie submit --slots 2 python3 sim.py --seed 7` works as it does with sbatch and srun.
std::pair<std::vector<std::string>, std::vector<std::string>> split_command(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  static const std::vector<std::string> with_value = {"--label", "--slots", "--env", "--cwd",
                                                      "--name", "--array"};
  std::size_t i = 0;
  // Global options, then the subcommand.
  while (i < args.size() && args[i] != "submit") {
    if (args[i] == "--profile")
      ++i;
    else if (!args[i].starts_with("-"))
      return {args, {}}; // another subcommand
    ++i;
  }
  for (++i; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      std::vector<std::string> command(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      args.resize(i);
      return {args, command};
    }
    if (a.starts_with("-")) {
      if (a.find('=') == std::string::npos &&
          std::find(with_value.begin(), with_value.end(), a) != with_value.end())
        ++i;
      continue;
    }
    std::vector<std::string> command(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
    args.resize(i);
    return {args, command};
  }
  return {args, {}};
}

} // namespace

int run(int argc, char** argv) {
  auto split = split_command(argc, argv);
  std::vector<std::string>& args = split.first;
  std::vector<std::string>& command = split.second;
  CLI::App app{"sortie: send work to the machines that should run it"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("sortie ") + kSortieVersion);
  Globals g;
  app.add_option("--profile", g.profile,
                 "profile to use (default: $SORTIE_PROFILE or 'default', under $SORTIE_HOME or "
                 "~/.sortie)");
  app.add_flag("-v,--verbose", g.verbose, "log more");

  // Callbacks only choose the action: CLI11 runs them before its last checks of the arguments.
  std::function<int()> action;
  // --- hub
  auto* hub = app.add_subcommand("hub", "start, stop and inspect the hub of a profile");
  hub->require_subcommand(1);
  HubStartArgs start_args;
  auto* hub_start_cmd = hub->add_subcommand("start", "start the hub (as a daemon by default)");
  hub_start_cmd->add_flag("--foreground", start_args.foreground,
                          "run in this terminal and log to it");
  hub_start_cmd->add_option("--listen", start_args.listen,
                            "TCP address to listen on, HOST[:PORT] (default 127.0.0.1, any port)");
  hub_start_cmd->add_option("--ready-fd", start_args.ready_fd)->group("");
  hub_start_cmd->add_option("--log-file", start_args.log_file)->group("");
  hub_start_cmd->callback([&] { action = [&] { return hub_start(g, start_args); }; });
  hub->add_subcommand("stop", "stop the hub, its local pilots and their jobs (they are requeued)")
      ->callback([&] { action = [&] { return hub_stop(g); }; });
  bool status_json_flag = false;
  auto* st = hub->add_subcommand("status", "show whether the hub runs and what it holds");
  st->add_flag("--json", status_json_flag, "print JSON");
  st->callback([&] { action = [&] { return hub_status(g, status_json_flag); }; });

  // --- pilot
  auto* pilot = app.add_subcommand("pilot", "start and stop pilots (groups of agents)");
  pilot->require_subcommand(1);
  PilotAddArgs padd;
  auto* pa = pilot->add_subcommand("add", "start a pilot");
  pa->add_option("--resource", padd.resource, "where: local (this machine)");
  pa->add_option("--slots,--slots-per-node", padd.slots, "slots per node (default: cores)");
  pa->add_option("--nodes", padd.nodes, "number of agents (nodes) to start (default 1)");
  pa->add_option("--label", padd.label, "label; labelled jobs run only on pilots with that label");
  pa->add_option("--node-names", padd.node_names, "comma-separated names, one per node");
  pa->add_flag("--json", padd.json, "print JSON");
  pa->callback([&] { action = [&] { return pilot_add(g, padd); }; });
  bool plist_json = false;
  auto* pl = pilot->add_subcommand("list", "list pilots");
  pl->add_flag("--json", plist_json, "print JSON");
  pl->callback([&] { action = [&] { return pilot_list(g, plist_json); }; });
  std::uint64_t pcancel_id = 0;
  auto* pc = pilot->add_subcommand("cancel", "stop a pilot; its running jobs are requeued");
  pc->add_option("id", pcancel_id, "pilot id")->required();
  pc->callback([&] { action = [&] { return pilot_cancel(g, pcancel_id); }; });

  // --- submit
  SubmitArgs sargs;
  auto* sub = app.add_subcommand("submit", "submit a command job: sortie submit [options] -- CMD ARGS...");
  sub->add_option("--label", sargs.label, "run only on pilots with this label");
  sub->add_option("--slots", sargs.slots, "slots (threads) the job needs; sets OMP_NUM_THREADS")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--env", sargs.env, "NAME=VALUE added to the job's environment (repeatable)");
  sub->add_option("--cwd", sargs.cwd, "working directory (default: the current one)");
  sub->add_option("--name", sargs.name, "a name shown in listings");
  sub->add_option("--array", sargs.array,
                  "FIRST-LAST[:STEP]: one job per index, in SORTIE_ARRAY_INDEX");
  sub->add_flag("--json", sargs.json, "print JSON");
  sub->callback([&] { action = [&] { return submit(g, sargs, command); }; });

  // --- job
  auto* job = app.add_subcommand("job", "list, inspect, wait for and cancel jobs");
  job->require_subcommand(1);
  SelectArgs list_sel;
  std::vector<std::string> list_states;
  bool list_json = false;
  auto* jl = job->add_subcommand("list", "list jobs (all by default)");
  jl->add_option("ids", list_sel.ids, "job ids or ranges: 17 17-20 3,5");
  jl->add_option("--group", list_sel.groups, "only jobs of this group");
  jl->add_option("--state", list_states, "only jobs in these states (comma-separated)");
  jl->add_flag("--json", list_json, "print a JSON array");
  jl->callback([&] { action = [&] { return job_list(g, list_sel, list_states, list_json); }; });
  std::string show_id;
  bool show_json = false;
  auto* js = job->add_subcommand("show", "show one job: spec, history, node, exit code, usage");
  js->add_option("id", show_id, "job id")->required();
  js->add_flag("--json", show_json, "print JSON");
  js->callback([&] { action = [&] { return job_show(g, show_id, show_json); }; });
  SelectArgs wait_sel;
  std::string wait_timeout;
  bool wait_quiet = false;
  auto* jw = job->add_subcommand("wait", "wait for jobs; exit 0 only if every one succeeded");
  jw->add_option("ids", wait_sel.ids, "job ids or ranges");
  jw->add_flag("--all", wait_sel.all, "every job submitted so far");
  jw->add_option("--group", wait_sel.groups, "the jobs of a group");
  jw->add_option("--timeout", wait_timeout, "give up after this long (e.g. 30s, 2h): exit 4");
  jw->add_flag("-q,--quiet", wait_quiet, "no progress bar or summary");
  jw->callback([&] { action = [&] { return job_wait(g, wait_sel, wait_timeout, wait_quiet); }; });
  std::string logs_id;
  bool logs_follow = false, logs_stderr = false;
  std::uint32_t logs_attempt = 0;
  auto* jo = job->add_subcommand("logs", "print a job's output");
  jo->add_option("id", logs_id, "job id")->required();
  jo->add_flag("-f,--follow", logs_follow, "keep printing until the job ends");
  jo->add_flag("--stderr", logs_stderr, "standard error instead of standard output");
  jo->add_option("--attempt", logs_attempt, "which attempt (default: the latest)");
  jo->callback([&] { action = [&] { return job_logs(g, logs_id, logs_follow, logs_stderr, logs_attempt); }; });
  SelectArgs cancel_sel;
  auto* jc = job->add_subcommand("cancel", "cancel jobs (their whole process trees)");
  jc->add_option("ids", cancel_sel.ids, "job ids or ranges");
  jc->add_flag("--all", cancel_sel.all, "every unfinished job");
  jc->add_option("--group", cancel_sel.groups, "the jobs of a group");
  jc->callback([&] { action = [&] { return job_cancel(g, cancel_sel); }; });

  // --- agent (internal: started by pilots)
  AgentArgs aargs;
  auto* ag = app.add_subcommand("agent", "run an agent (started by pilots)");
  ag->group("");
  ag->add_option("--profile-dir", aargs.profile_dir);
  ag->add_option("--hub-file", aargs.hub_file);
  ag->add_option("--pilot", aargs.pilot);
  ag->add_option("--node-name", aargs.node_name);
  ag->add_option("--slots", aargs.slots);
  ag->add_option("--label", aargs.label);
  ag->add_option("--connect-window", aargs.connect_window);
  ag->callback([&] { action = [&] { return agent_main(g, aargs); }; });

  try {
    std::vector<char*> av = {argv[0]};
    for (auto& a : args)
      av.push_back(a.data());
    app.parse(static_cast<int>(av.size()), av.data());
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "sortie: %s\nRun `sortie --help` (or `sortie COMMAND --help`) for usage.\n",
                 e.what());
    return kExitUsage;
  }
  return action ? action() : kExitUsage;
}

} // namespace sortie::cli
