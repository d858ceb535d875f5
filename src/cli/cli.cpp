// SPDX-License-Identifier: Apache-2.0
// The `sortie` command: argument parsing (CLI11) and one function per command, each a thin layer
// over the client library. Exit codes: 0 success, 1 failure (a job failed, a request was refused),
// 2 bad usage, 3 no hub running, 4 timeout.
#include "cli/cli.hpp"

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
#include "cli/jobfile.hpp"
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
#include "launch/local_launcher.hpp"
#include "sortie/client.hpp"
#include "store/store.hpp"

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

struct Globals {
  std::string profile;
  bool verbose = false;
};

Result<Client> connect(const Globals& g) {
  ConnectOptions o;
  o.profile = g.profile;
  o.client_name = "cli";
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

/// Stops the hub (or, with `restart`, makes it exit leaving its pilots running) and returns once
/// its process is gone. The hub stops only after its agents ended their jobs and left.
int hub_stop(const Globals& g, bool restart = false) {
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

// ---------------------------------------------------------------------------------------------
// pilots

struct PilotAddArgs {
  std::string resource = "local";
  std::uint32_t slots = 0;
  std::uint32_t nodes = 0;
  std::string label;
  std::string node_names;
  std::uint32_t gpus_per_node = 0;
  std::string memory_per_node;
  std::string time;
  std::string queue;
  std::vector<std::string> options;
  bool json = false;
};

int pilot_add(const Globals& g, const PilotAddArgs& a) {
  PilotSpec spec;
  spec.resource = a.resource;
  spec.slots_per_node = a.slots;
  spec.label = a.label;
  if (!a.node_names.empty())
    spec.node_names = split(a.node_names, ',');
  spec.nodes = a.nodes ? a.nodes : static_cast<std::uint32_t>(spec.node_names.size());
  spec.queue = a.queue;
  spec.batch_options = a.options;
  spec.gpus_per_node = a.gpus_per_node;
  if (!a.memory_per_node.empty()) {
    auto b = parse_size_bytes(a.memory_per_node);
    if (!b.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--memory-per-node: " + b.error().message));
    spec.memory_per_node = *b;
  }
  if (!a.time.empty()) {
    auto t = parse_duration_ms(a.time);
    if (!t.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--time: " + t.error().message));
    spec.walltime_ms = *t;
  }
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

/// `pilot list` (id 0) and `pilot show ID`.
int pilot_list(const Globals& g, bool as_json, std::uint64_t id = 0) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto pilots = client->pilots();
  if (!pilots.ok())
    return fail(pilots.error());
  if (id == 0) {
    std::fputs((as_json ? pilots_json(*pilots) : pilots_table(*pilots)).c_str(), stdout);
    return kExitOk;
  }
  for (const auto& p : *pilots)
    if (p.id.value == id) {
      std::fputs((as_json ? pilots_json({p}) : pilot_detail(p)).c_str(), stdout);
      return kExitOk;
    }
  return fail(make_error(ErrorCode::NotFound,
                         fmt::format("pilot {} does not exist: `sortie pilot list` shows them", id)));
}

struct PilotWaitArgs {
  std::vector<std::uint64_t> ids;
  bool all = false;
  std::string timeout;
};

/// Until the pilots run with all their nodes (or the first one fails), like dask's
/// wait_for_workers and AMUSE's wait_for_pilots.
int pilot_wait(const Globals& g, const PilotWaitArgs& a) {
  std::int64_t timeout_ms = -1;
  if (!a.timeout.empty()) {
    auto t = parse_duration_ms(a.timeout);
    if (!t.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--timeout: " + t.error().message));
    timeout_ms = *t;
  }
  if (a.ids.empty() && !a.all)
    return fail(make_error(ErrorCode::InvalidArgument,
                           "name the pilots to wait for (ids), or give --all"));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    auto pilots = client->pilots();
    if (!pilots.ok())
      return fail(pilots.error());
    std::size_t ready = 0, wanted = 0;
    std::string waiting;
    for (auto id : a.ids)
      if (std::none_of(pilots->begin(), pilots->end(),
                       [&](const PilotInfo& p) { return p.id.value == id; }))
        return fail(make_error(ErrorCode::NotFound, fmt::format("pilot {} does not exist", id)));
    for (const auto& p : *pilots) {
      // --all: every pilot not cancelled or ended, failed ones included (so a pilot that failed
      // before we looked makes the wait fail too).
      bool chosen = a.all ? (p.state != "ended" && p.state != "cancelled")
                          : std::find(a.ids.begin(), a.ids.end(), p.id.value) != a.ids.end();
      if (!chosen)
        continue;
      ++wanted;
      if (p.state == "failed" || p.state == "cancelled" || p.state == "ended") {
        const char* how = p.state == "failed" ? "failed" : p.state == "cancelled" ? "was cancelled"
                                                                                 : "has ended";
        std::fprintf(stderr, "sortie: pilot %llu %s%s%s\n",
                     static_cast<unsigned long long>(p.id.value), how,
                     p.reason.empty() ? "" : ": ", printable(p.reason).c_str());
        return kExitFailure;
      }
      bool all_up = p.nodes_up > 0 && p.nodes_up >= p.spec.nodes;
      if ((p.state == "running" || p.state == "draining") && all_up)
        ++ready;
      else
        waiting += fmt::format("{}pilot {} {} ({} of {} nodes up)", waiting.empty() ? "" : ", ",
                               p.id.value, p.state, p.nodes_up,
                               p.spec.nodes ? std::to_string(p.spec.nodes) : "its");
    }
    if (ready == wanted)
      return kExitOk;
    if (timeout_ms >= 0 && std::chrono::steady_clock::now() >= deadline) {
      std::fprintf(stderr, "sortie: timed out waiting for %s\n", waiting.c_str());
      return kExitTimeout;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// ---------------------------------------------------------------------------------------------
// resources

struct ResourceAddArgs {
  std::string name;
  std::string type;
  std::string location;
  std::string install_dir;
  std::string tmp_dir;
  std::string gateway;
  std::vector<std::string> ssh_options;
  std::string machinefile;
  bool replace = false;
};

int resource_add(const Globals& g, const ResourceAddArgs& a) {
  ResourceSpec spec;
  spec.name = a.name;
  spec.type = a.type;
  spec.location = a.location;
  spec.install_dir = a.install_dir;
  spec.tmp_dir = a.tmp_dir;
  spec.gateway = a.gateway;
  spec.ssh_options = a.ssh_options;
  if (!a.machinefile.empty()) {
    std::error_code ec;
    auto abs = std::filesystem::absolute(a.machinefile, ec);
    spec.machinefile = ec ? a.machinefile : abs.string();
  }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  if (auto r = client->add_resource(spec, a.replace); !r.ok())
    return fail(r.error());
  return kExitOk;
}

int resource_list(const Globals& g, bool as_json) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto list = client->resources();
  if (!list.ok())
    return fail(list.error());
  std::fputs((as_json ? resources_json(*list) : resources_table(*list)).c_str(), stdout);
  return kExitOk;
}

int resource_rm(const Globals& g, const std::string& name) {
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  if (auto r = client->remove_resource(name); !r.ok())
    return fail(r.error());
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

/// The options of a job, shared by `submit` and `map`. Each is applied only when given, so that
/// they override a job file's values (as sbatch's flags override #SBATCH lines).
struct JobOptions {
  std::string label;
  std::uint32_t slots = 1;
  std::vector<std::string> env;
  std::string export_env;
  std::string cwd;
  std::string name;
  std::string memory;
  std::uint32_t gpus = 0;
  std::string hosts;
  std::string prefer_hosts;
  std::uint32_t max_per_node = 0;
  std::string group;
  std::int32_t priority = 0;
  std::string queue_timeout;
  std::string run_timeout;
  std::string time_request;
  std::uint32_t retries = 0;
  bool retry_on_failure = false;
  std::uint32_t mpi = 0;
  std::uint32_t ranks_per_node = 0;
  std::string after;
  bool json = false;
  bool yes = false; ///< more jobs than the hub's confirm_above are meant
  std::vector<CLI::Option*> given; ///< filled by add_job_options

  /// True if the option (e.g. "--label") was given on the command line.
  bool has(std::string_view flag) const {
    std::string long_name(flag.substr(flag.find_first_not_of('-')));
    for (auto* o : given)
      if (o->check_lname(long_name) && o->count() > 0)
        return true;
    return false;
  }
};

/// Submits; a submission the hub finds too large to take unconfirmed (confirm_above) is asked
/// about on a terminal, and otherwise fails with the hub's words (which name --yes).
template <typename Submit>
Result<Submitted> submit_confirming(bool yes, Submit submit) {
  auto s = submit(yes);
  if (s.ok() || yes || s.error().code != ErrorCode::FailedPrecondition ||
      s.error().message.find("confirm_above") == std::string::npos || ::isatty(0) != 1 ||
      !stderr_is_tty())
    return s;
  std::fprintf(stderr, "sortie: %s\nsortie: submit them? [y/N] ", s.error().message.c_str());
  std::fflush(stderr);
  char answer[16] = {};
  if (std::fgets(answer, sizeof answer, stdin) && (answer[0] == 'y' || answer[0] == 'Y'))
    return submit(true);
  return make_error(ErrorCode::Cancelled, "nothing was submitted");
}

void add_job_options(CLI::App* cmd, JobOptions& o) {
  auto add = [&](CLI::Option* opt) { o.given.push_back(opt); };
  add(cmd->add_option("--label", o.label, "run only on pilots with this label"));
  add(cmd->add_option("--slots", o.slots, "slots (threads) it needs; sets OMP_NUM_THREADS")
          ->check(CLI::Range(1, 4096)));
  add(cmd->add_option("--memory", o.memory, "memory it may use, e.g. 4G (a bare number is MiB, as in Slurm): reserved and enforced"));
  add(cmd->add_option("--gpus", o.gpus, "GPUs it needs; it sees them in CUDA_VISIBLE_DEVICES")
          ->check(CLI::Range(0, 64)));
  add(cmd->add_option("--env", o.env, "NAME=VALUE added to its environment (repeatable)"));
  add(cmd->add_option("--export", o.export_env,
                      "your environment it gets, as sbatch: ALL (default; not PWD, SSH_*, "
                      "DISPLAY...), NONE (the node's only), or NAME[=VALUE],... (may list ALL)"));
  add(cmd->add_option("--cwd", o.cwd, "working directory (default: the current one)"));
  add(cmd->add_option("--name", o.name, "a name shown in listings"));
  add(cmd->add_option("--host", o.hosts, "run only on one of these nodes: H[,H2...]"));
  add(cmd->add_option("--prefer-host", o.prefer_hosts,
                      "run on these nodes when they can take it, else anywhere: H[,H2...]"));
  add(cmd->add_option("--max-per-node", o.max_per_node,
                      "at most K jobs of this submission's group on one node at once"));
  add(cmd->add_option("--group", o.group,
                      "name the submission's group; named groups join for --max-per-node"));
  add(cmd->add_option("--priority", o.priority, "higher runs first (default 0)"));
  add(cmd->add_option("--queue-timeout", o.queue_timeout,
                      "timed_out if not started within this long, e.g. 15m"));
  add(cmd->add_option("--run-timeout", o.run_timeout,
                      "killed (with its children) and timed_out after running this long"));
  add(cmd->add_option("--time-request", o.time_request,
                      "start only on a pilot with at least this much walltime left"));
  add(cmd->add_option("--retries", o.retries, "run again up to N times if its node is lost"));
  add(cmd->add_flag("--retry-on-failure", o.retry_on_failure,
                    "retries also cover a non-zero exit or a signal"));
  add(cmd->add_option("--after", o.after, "start only after these jobs succeeded: ID[,ID...]"));
  add(cmd->add_option("--mpi", o.mpi, "an MPI job of N ranks, started with mpiexec")
          ->check(CLI::Range(1, 4096)));
  add(cmd->add_option("--ranks-per-node", o.ranks_per_node, "at most K ranks on one node: spread over nodes of one pilot"));
  cmd->add_flag("--json", o.json, "print JSON");
  cmd->add_flag("--yes", o.yes,
                "yes, that many jobs: needed above the hub's confirm_above (100,000 by default)");
}

/// Applies the given options to `spec`; `cwd_default` when neither the option nor the spec has one.
Result<void> apply_job_options(const JobOptions& o, JobSpec& spec, bool set_default_cwd) {
  auto list = [](const std::string& text) {
    std::vector<std::string> out;
    for (auto& part : split(text, ','))
      if (!trim(part).empty())
        out.emplace_back(trim(part));
    return out;
  };
  auto duration = [](const char* flag, const std::string& text) -> Result<std::int64_t> {
    auto d = parse_duration_ms(text);
    if (!d.ok())
      return make_error(ErrorCode::InvalidArgument, fmt::format("{}: {}", flag, d.error().message));
    return *d;
  };
  if (o.has("--label"))
    spec.label = o.label;
  if (o.has("--slots"))
    spec.slots = o.slots;
  if (o.has("--name"))
    spec.name = o.name;
  if (o.has("--gpus"))
    spec.gpus = o.gpus;
  if (o.has("--memory")) {
    auto b = parse_size_bytes(o.memory);
    if (!b.ok())
      return make_error(ErrorCode::InvalidArgument, "--memory: " + b.error().message);
    spec.memory_bytes = *b;
  }
  for (const auto& kv : o.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return make_error(ErrorCode::InvalidArgument, fmt::format("--env '{}' is not NAME=VALUE", kv));
    spec.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  if (o.has("--export")) {
    if (auto r = exported_environment(o.export_env); !r.ok()) // its error, before any connection
      return r.error();
    spec.export_env = o.export_env;
  }
  if (o.has("--host"))
    spec.hosts = list(o.hosts);
  if (o.has("--prefer-host"))
    spec.prefer_hosts = list(o.prefer_hosts);
  if (o.has("--max-per-node"))
    spec.max_per_node = o.max_per_node;
  if (o.has("--priority"))
    spec.priority = o.priority;
  if (o.has("--queue-timeout")) {
    SORTIE_ASSIGN_OR_RETURN(d, duration("--queue-timeout", o.queue_timeout));
    spec.queue_timeout_ms = d;
  }
  if (o.has("--run-timeout")) {
    SORTIE_ASSIGN_OR_RETURN(d, duration("--run-timeout", o.run_timeout));
    spec.run_timeout_ms = d;
  }
  if (o.has("--time-request")) {
    SORTIE_ASSIGN_OR_RETURN(d, duration("--time-request", o.time_request));
    spec.time_request_ms = d;
  }
  if (o.has("--retries"))
    spec.retries = o.retries;
  if (o.has("--retry-on-failure"))
    spec.retry_on_failure = o.retry_on_failure;
  if (o.has("--mpi"))
    spec.mpi_ranks = o.mpi;
  if (o.has("--ranks-per-node"))
    spec.ranks_per_node = o.ranks_per_node;
  if (o.has("--after")) {
    spec.after.clear();
    for (const auto& part : list(o.after)) {
      auto id = parse_int(part, 1, INT64_MAX);
      if (!id.ok())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("--after: '{}' is not a job id", part));
      spec.after.push_back(JobId(static_cast<std::uint64_t>(*id)));
    }
  }
  // Like sbatch, jobs run where they were submitted unless told otherwise.
  std::error_code ec;
  if (o.has("--cwd"))
    spec.cwd = std::filesystem::absolute(o.cwd, ec).lexically_normal().string();
  else if (set_default_cwd && spec.cwd.empty())
    spec.cwd = std::filesystem::current_path(ec).string();
  return ok_result();
}

void print_submitted(const Submitted& s, bool json) {
  if (!s.warning.empty())
    std::fprintf(stderr, "sortie: note: %s\n", s.warning.c_str());
  if (json)
    std::fputs(submitted_json(s).c_str(), stdout);
  else if (s.count == 1)
    std::printf("%llu\n", static_cast<unsigned long long>(s.first_id.value));
  else
    std::printf("%llu-%llu\n", static_cast<unsigned long long>(s.first_id.value),
                static_cast<unsigned long long>(s.first_id.value + s.count - 1));
}

int submit(const Globals& g,
           const JobOptions& o,
           const std::string& array,
           const std::string& file,
           std::vector<std::string> command) {
  std::vector<JobSpec> specs;
  std::vector<std::optional<ArrayRange>> ranges; // a job file's items: jobs and arrays
  std::optional<ArrayRange> range;
  std::string group = o.group;
  if (!file.empty()) {
    if (!command.empty())
      return fail(make_error(ErrorCode::InvalidArgument,
                             "give the command in the job file or on the command line, not both"));
    auto jf = read_job_file(file);
    if (!jf.ok())
      return fail(jf.error());
    if (group.empty())
      group = jf->group;
    for (auto& e : jf->jobs) {
      specs.push_back(e.spec);
      ranges.push_back(e.array);
    }
  } else {
    if (command.empty())
      return fail(make_error(ErrorCode::InvalidArgument,
                             "no command given: sortie submit [options] -- PROGRAM [ARGS...], or "
                             "--file job.toml"));
    JobSpec spec;
    spec.argv = std::move(command);
    specs.push_back(std::move(spec));
  }
  for (auto& spec : specs)
    if (auto r = apply_job_options(o, spec, true); !r.ok())
      return fail(r.error());
  if (!array.empty()) {
    if (specs.size() != 1)
      return fail(make_error(ErrorCode::InvalidArgument, "--array needs exactly one job"));
    auto r = parse_array_range(array);
    if (!r.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--array: " + r.error().message));
    range = *r;
  }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  std::vector<Client::BatchItem> items;
  if (range)
    items.push_back({specs[0], *range});
  else
    for (std::size_t i = 0; i < specs.size(); ++i)
      items.push_back({specs[i], i < ranges.size() ? ranges[i] : std::nullopt});
  auto s = submit_confirming(o.yes, [&](bool confirmed) {
    return client->submit_items(items, group, confirmed);
  });
  if (!s.ok())
    return fail(s.error());
  print_submitted(*s, o.json);
  return kExitOk;
}

/// Replaces every "{}" in the command with `item`; appends it when there is none.
std::vector<std::string> substitute(const std::vector<std::string>& command, const std::string& item) {
  std::vector<std::string> out;
  bool used = false;
  for (const auto& arg : command) {
    std::string a;
    for (std::size_t i = 0; i < arg.size();) {
      if (arg.compare(i, 2, "{}") == 0) {
        a += item;
        i += 2;
        used = true;
      } else {
        a += arg[i++];
      }
    }
    out.push_back(std::move(a));
  }
  if (!used)
    out.push_back(item);
  return out;
}

/// " (did you mean --label?)" for the first unknown --option in `args` close to a known one.
std::string did_you_mean(CLI::App& app, const std::vector<std::string>& args) {
  std::vector<std::string> known;
  std::vector<CLI::App*> apps = {&app};
  while (!apps.empty()) {
    CLI::App* a = apps.back();
    apps.pop_back();
    for (const auto* opt : a->get_options())
      for (const auto& name : opt->get_lnames())
        known.push_back("--" + name);
    for (auto* sub : a->get_subcommands([](CLI::App*) { return true; }))
      apps.push_back(sub);
  }
  for (const auto& arg : args) {
    if (arg == "--")
      break;
    if (arg.rfind("--", 0) != 0)
      continue;
    std::string word = arg.substr(0, arg.find('='));
    if (std::find(known.begin(), known.end(), word) != known.end())
      continue;
    if (auto best = closest(word, known, 2); !best.empty())
      return fmt::format(" (did you mean {}?)", best);
  }
  return {};
}

int map_jobs(const Globals& g,
             const JobOptions& o,
             const std::string& mapfile,
             const std::string& each_line,
             const std::string& array,
             const std::vector<std::string>& command) {
  int sources = !mapfile.empty() + !each_line.empty() + !array.empty();
  if (sources != 1)
    return fail(make_error(ErrorCode::InvalidArgument,
                           "give exactly one of --mapfile FILE, --each-line FILE or --array A-B"));
  if (command.empty())
    return fail(make_error(ErrorCode::InvalidArgument,
                           "no command given: sortie map ... -- PROGRAM [ARGS...] {}"));
  JobSpec base;
  base.argv = command;
  if (auto r = apply_job_options(o, base, true); !r.ok())
    return fail(r.error());
  std::vector<JobSpec> specs;
  auto add = [&](const std::string& item, const std::string& host) {
    JobSpec s = base;
    s.argv = substitute(command, item);
    if (s.name.empty()) // named after its item, as listings show it
      s.name = item.substr(0, 256);
    if (!host.empty())
      s.hosts = {host};
    specs.push_back(std::move(s));
  };
  if (!mapfile.empty()) {
    auto text = read_file(mapfile);
    if (!text.ok())
      return fail(text.error());
    auto entries = parse_mapfile(*text, mapfile);
    if (!entries.ok())
      return fail(entries.error());
    for (const auto& e : *entries)
      add(e.file, e.host);
  } else if (!each_line.empty()) {
    auto text = read_file(each_line);
    if (!text.ok())
      return fail(text.error());
    for (const auto& raw : split(*text, '\n')) {
      std::string line(trim(raw)); // surrounding spaces (and a CR) are not part of the item
      if (!line.empty())
        add(line, "");
    }
  } else {
    auto r = parse_array_range(array);
    if (!r.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--array: " + r.error().message));
    if (r->count() > 1'000'000)
      return fail(make_error(ErrorCode::InvalidArgument, "--array: at most 1,000,000 jobs"));
    for (std::int64_t i = r->first; i <= r->last; i += r->step)
      add(std::to_string(i), "");
  }
  if (specs.empty())
    return fail(make_error(ErrorCode::InvalidArgument, "nothing to run: the list is empty"));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto s = submit_confirming(o.yes, [&](bool confirmed) {
    return client->submit_batch(specs, o.group, confirmed);
  });
  if (!s.ok())
    return fail(s.error());
  if (o.json) {
    std::fputs(submitted_json(*s).c_str(), stdout);
  } else {
    // The group is what one waits for: `sortie job wait --group G`.
    if (!s->warning.empty())
      std::fprintf(stderr, "sortie: note: %s\n", s->warning.c_str());
    std::printf("%llu\n", static_cast<unsigned long long>(s->group.value));
    std::fprintf(stderr, "group %llu: %s (%llu-%llu)\n",
                 static_cast<unsigned long long>(s->group.value), count_of(s->count, "job").c_str(),
                 static_cast<unsigned long long>(s->first_id.value),
                 static_cast<unsigned long long>(s->first_id.value + s->count - 1));
  }
  return kExitOk;
}

struct SelectArgs {
  std::vector<std::string> ids;
  bool all = false;
  std::vector<std::string> groups; ///< ids or names
};

Result<JobSelector> selector_from(const SelectArgs& a, bool default_all) {
  SORTIE_ASSIGN_OR_RETURN(sel, parse_ids(a.ids));
  for (const auto& gtext : a.groups) {
    auto gid = parse_int(gtext, 1, INT64_MAX);
    if (gid.ok())
      sel.groups.push_back(GroupId(static_cast<std::uint64_t>(*gid)));
    else
      sel.group_names.push_back(gtext);
  }
  sel.all = a.all;
  if (sel.ranges.empty() && sel.groups.empty() && sel.group_names.empty() && !sel.all) {
    if (!default_all)
      return make_error(ErrorCode::InvalidArgument,
                        "name the jobs: ids (17, 17-20, 3,5), --group G, or --all");
    sel.all = true;
  }
  return sel;
}

/// Rows `job list` prints on a terminal unless told (--limit).
constexpr std::uint64_t kDefaultListLimit = 100;

int job_list(const Globals& g, const SelectArgs& a, const std::vector<std::string>& states,
             bool as_json, std::optional<std::uint64_t> limit_option) {
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
  // A terminal gets the newest jobs and a count of the rest; JSON gets every job unless told.
  std::uint64_t limit = limit_option.value_or(as_json ? 0 : kDefaultListLimit);
  auto page = client->jobs_page(*sel, want, limit);
  if (!page.ok())
    return fail(page.error());
  std::fputs((as_json ? jobs_json(page->jobs) : jobs_table(page->jobs)).c_str(), stdout);
  if (!as_json && page->matched > page->jobs.size()) {
    std::string by_state;
    for (const auto& [state, n] : page->counts)
      by_state += fmt::format("{}{} {}", by_state.empty() ? "" : ", ", with_thousands(n),
                              job_state_name(state));
    std::fprintf(stderr, "sortie: showing the newest %s of %s jobs (%s): --limit 0 shows all, "
                         "or select ids, --group or --state\n",
                 with_thousands(page->jobs.size()).c_str(), with_thousands(page->matched).c_str(),
                 by_state.c_str());
  }
  return kExitOk;
}

int job_forget(const Globals& g, const SelectArgs& a) {
  auto sel = selector_from(a, false);
  if (!sel.ok())
    return fail(sel.error());
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto r = client->forget(*sel);
  if (!r.ok())
    return fail(r.error());
  std::printf("%s forgotten", count_of(r->forgotten, "job").c_str());
  if (r->not_ended)
    std::printf(", %s not ended kept (cancel them first)", count_of(r->not_ended, "job").c_str());
  if (r->not_found)
    std::printf(", %llu not found", static_cast<unsigned long long>(r->not_found));
  std::printf("\n");
  return r->not_found ? kExitFailure : kExitOk;
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
      std::printf("%s succeeded\n", count_of(result->total, "job").c_str());
    return kExitOk;
  }
  std::vector<std::string> ids;
  for (auto id : result->failed_ids)
    ids.push_back(std::to_string(id.value));
  std::fprintf(stderr, "sortie: %llu of %s did not succeed (%llu failed, %llu cancelled): %s%s\n",
               static_cast<unsigned long long>(result->total - result->succeeded),
               count_of(result->total, "job").c_str(),
               static_cast<unsigned long long>(result->failed),
               static_cast<unsigned long long>(result->cancelled), join(ids, " ").c_str(),
               result->total - result->succeeded > ids.size() ? " ..." : "");
  return kExitFailure;
}

/// `job logs IDS|--group G [-f] [--stderr]`: one job's output as it is; several jobs' one after
/// the other, each line prefixed with "[ID] ". With -f, follows each to its end and exits 0 only
/// if every job succeeded (1 otherwise), like `job wait`.
int job_logs(const Globals& g, const SelectArgs& a, bool follow, bool use_stderr,
             std::uint32_t attempt) {
  if (a.ids.empty() && a.groups.empty())
    return fail(make_error(ErrorCode::InvalidArgument,
                           "name the jobs: job logs ID [ID...] (ranges like 3-7), or --group G"));
  auto sel = selector_from(a, false);
  if (!sel.ok())
    return fail(sel.error());
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  std::vector<JobId> ids;
  bool single = a.groups.empty() && a.ids.size() == 1 && a.ids[0].find_first_of(",-") == std::string::npos;
  if (single) {
    ids.push_back(sel->ranges[0].first);
  } else {
    auto jobs = client->jobs(*sel);
    if (!jobs.ok())
      return fail(jobs.error());
    for (const auto& j : *jobs)
      ids.push_back(j.id);
    if (ids.empty())
      return fail(make_error(ErrorCode::NotFound, "no job matches"));
  }
  bool all_succeeded = true;
  for (auto id : ids) {
    std::string prefix = single ? "" : fmt::format("[{}] ", id.value);
    bool at_line_start = true;
    auto r = client->output(id, use_stderr ? OutputStream::Stderr : OutputStream::Stdout, follow,
                            [&](std::string_view data) {
                              if (prefix.empty()) {
                                std::fwrite(data.data(), 1, data.size(), stdout);
                              } else {
                                for (char c : data) {
                                  if (at_line_start)
                                    std::fputs(prefix.c_str(), stdout);
                                  std::fputc(c, stdout);
                                  at_line_start = c == '\n';
                                }
                              }
                              if (std::ferror(stdout))
                                return false;
                              std::fflush(stdout);
                              return true;
                            },
                            attempt);
    if (!at_line_start)
      std::fputc('\n', stdout);
    if (!r.ok()) {
      if (single || r.error().code != ErrorCode::NotFound)
        return fail(r.error());
      continue; // one of several that has not started: the others still print
    }
    if (follow) {
      auto info = client->job(id);
      if (!info.ok())
        return fail(info.error());
      all_succeeded = all_succeeded && info->state == JobState::Succeeded;
    }
  }
  return all_succeeded ? kExitOk : kExitFailure;
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
  std::string address;
  std::uint32_t slots = 0;
  std::string label;
  std::string connect_window = "60s";
  std::string gpus;
  std::string memory;
  std::int64_t walltime_end_ms = 0;
  std::int64_t walltime_ms = 0;
  bool stdio = false;
};

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
std::pair<std::vector<std::string>, std::vector<std::string>> split_command(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  static const std::vector<std::string> with_value = {
      "--label", "--slots", "--env", "--export", "--cwd", "--name", "--array", "--memory", "--gpus", "--host",
      "--prefer-host", "--max-per-node", "--group", "--priority", "--queue-timeout",
      "--run-timeout", "--time-request", "--retries", "--after", "--file", "--mapfile", "--mpi",
      "--ranks-per-node",
      "--each-line"};
  std::size_t i = 0;
  // Global options, then the subcommand.
  while (i < args.size() && args[i] != "submit" && args[i] != "map") {
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
                 "~/.sortie)")
      ->check([](const std::string& v) {
        return v.empty() ? std::string("an empty profile name: leave --profile out for the "
                                       "default profile")
                         : std::string();
      });
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
  hub->add_subcommand("stop", "stop the hub and its pilots; returns once their jobs have ended "
                             "(they are requeued, counting a lost attempt)")
      ->callback([&] { action = [&] { return hub_stop(g); }; });
  hub->add_subcommand("restart", "restart the hub while its pilots and running jobs carry on "
                                "(ssh pilots end: the hub carries their links)")
      ->callback([&] {
        action = [&] {
          int r = hub_stop(g, true);
          return r != kExitOk ? r : hub_start(g, start_args);
        };
      });
  bool recover_flag = false;
  auto* check = hub->add_subcommand("check", "check the store's integrity (the hub must be stopped)");
  check->add_flag("--recover", recover_flag,
                  "copy what is readable into a new store; the damaged one is kept beside it");
  check->callback([&] { action = [&] { return hub_check(g, recover_flag); }; });
  bool status_json_flag = false;
  auto* st = hub->add_subcommand("status", "show whether the hub runs and what it holds");
  st->add_flag("--json", status_json_flag, "print JSON");
  st->callback([&] { action = [&] { return hub_status(g, status_json_flag); }; });

  // --- pilot
  auto* pilot = app.add_subcommand("pilot", "start and stop pilots (groups of agents)");
  pilot->require_subcommand(1);
  PilotAddArgs padd;
  auto* pa = pilot->add_subcommand("add", "start a pilot");
  pa->add_option("--resource", padd.resource, "where: a resource's name (default: local)");
  pa->add_option("--slots,--slots-per-node", padd.slots, "slots per node (default: cores)");
  pa->add_option("--nodes", padd.nodes,
                 "number of nodes (agents) (default: 1; ssh: one per host of the resource)");
  pa->add_option("--label", padd.label, "label; labelled jobs run only on pilots with that label");
  pa->add_option("--node-names", padd.node_names, "comma-separated names, one per node");
  pa->add_option("--gpus-per-node", padd.gpus_per_node,
                 "GPUs each node declares (devices 0..N-1) instead of detecting them");
  pa->add_option("--memory-per-node", padd.memory_per_node,
                 "memory jobs may reserve on each node, e.g. 8G; a bare number is MiB (default: all of it)");
  pa->add_option("--time", padd.time, "walltime: the pilot ends after this long, e.g. 2h");
  pa->add_option("--queue", padd.queue, "batch queue or partition (slurm, sge)");
  pa->add_option("--option", padd.options,
                 "a raw sbatch/qsub flag, repeatable; write --option=--account=abc");
  pa->add_flag("--json", padd.json, "print JSON");
  pa->callback([&] { action = [&] { return pilot_add(g, padd); }; });
  bool plist_json = false;
  auto* pl = pilot->add_subcommand("list", "list pilots");
  pl->add_flag("--json", plist_json, "print JSON");
  pl->callback([&] { action = [&] { return pilot_list(g, plist_json); }; });
  std::uint64_t pshow_id = 0;
  bool pshow_json = false;
  auto* ps = pilot->add_subcommand("show", "one pilot: state, every reason, its nodes");
  ps->add_option("id", pshow_id, "pilot id")->required()->check([](const std::string& v) {
    return v == "0" ? std::string("pilot ids start at 1: `sortie pilot list` shows them")
                    : std::string();
  });
  ps->add_flag("--json", pshow_json, "print JSON");
  ps->callback([&] { action = [&] { return pilot_list(g, pshow_json, pshow_id); }; });
  std::uint64_t pcancel_id = 0;
  auto* pc = pilot->add_subcommand("cancel", "stop a pilot; its running jobs are requeued");
  pc->add_option("id", pcancel_id, "pilot id")->required();
  pc->callback([&] { action = [&] { return pilot_cancel(g, pcancel_id); }; });
  PilotWaitArgs pwait;
  auto* pw = pilot->add_subcommand("wait", "wait until pilots run with all their nodes");
  pw->add_option("ids", pwait.ids, "pilot ids");
  pw->add_flag("--all", pwait.all, "every pilot that has not ended");
  pw->add_option("--timeout", pwait.timeout, "give up after this long (exit 4), e.g. 5m");
  pw->callback([&] { action = [&] { return pilot_wait(g, pwait); }; });

  // --- resource
  auto* resource = app.add_subcommand("resource", "define where pilots can run");
  resource->require_subcommand(1);
  ResourceAddArgs radd;
  auto* ra = resource->add_subcommand("add", "define a resource (docs/resources.md)");
  ra->add_option("name", radd.name, "its name")->required();
  ra->add_option("--type", radd.type, "ssh, slurm or sge")->required();
  ra->add_option("--location", radd.location,
                 "ssh: [user@]host[:port][,host2...]; slurm/sge: the login host (default: here)");
  ra->add_option("--install-dir", radd.install_dir,
                 "the sortie tree there (DIR/bin/sortie; default: this sortie's path)");
  ra->add_option("--tmp-dir", radd.tmp_dir, "where batch jobs write their output");
  ra->add_option("--gateway", radd.gateway, "an ssh resource to hop through (ProxyJump)");
  ra->add_option("--ssh-option", radd.ssh_options,
                 "an extra ssh argument, repeatable; write --ssh-option=-oPort=2222");
  ra->add_option("--machinefile", radd.machinefile, "ssh: a file of host[:N] lines");
  ra->add_flag("--replace", radd.replace, "overwrite a resource of the same name");
  ra->callback([&] { action = [&] { return resource_add(g, radd); }; });
  bool rlist_json = false;
  auto* rl = resource->add_subcommand("list", "list resources");
  rl->add_flag("--json", rlist_json, "print JSON");
  rl->callback([&] { action = [&] { return resource_list(g, rlist_json); }; });
  std::string rrm_name;
  auto* rr = resource->add_subcommand("rm", "remove a resource");
  rr->add_option("name", rrm_name, "its name")->required();
  rr->callback([&] { action = [&] { return resource_rm(g, rrm_name); }; });

  // --- submit and map
  JobOptions sopts;
  std::string sarray, sfile;
  auto* sub = app.add_subcommand("submit",
                                 "submit a command job: sortie submit [options] [--] CMD ARGS...");
  add_job_options(sub, sopts);
  sub->add_option("--array", sarray, "FIRST-LAST[:STEP]: one job per index, in SORTIE_ARRAY_INDEX");
  sub->add_option("--file", sfile, "a TOML job file (docs/jobs.md); options given here override it");
  sub->callback([&] { action = [&] { return submit(g, sopts, sarray, sfile, command); }; });
  JobOptions mopts;
  std::string mapfile, each_line, marray;
  auto* mp = app.add_subcommand(
      "map", "one job per item: sortie map --mapfile F|--each-line F|--array A-B -- CMD ARGS {}");
  add_job_options(mp, mopts);
  mp->add_option("--mapfile", mapfile, "host=[file, ...] lines: one job per file, on its host");
  mp->add_option("--each-line", each_line, "one job per line of this file");
  mp->add_option("--array", marray, "FIRST-LAST[:STEP]: one job per index");
  mp->callback([&] {
    action = [&] { return map_jobs(g, mopts, mapfile, each_line, marray, command); };
  });

  // --- job
  auto* job = app.add_subcommand("job", "list, inspect, wait for and cancel jobs");
  job->require_subcommand(1);
  SelectArgs list_sel;
  std::vector<std::string> list_states;
  bool list_json = false;
  auto* jl = job->add_subcommand("list", "list jobs (the newest 100 by default)");
  jl->add_option("ids", list_sel.ids, "job ids or ranges: 17 17-20 3,5");
  jl->add_option("--group", list_sel.groups, "only jobs of this group (id or name)");
  jl->add_option("--state", list_states, "only jobs in these states (comma-separated)");
  jl->add_flag("--json", list_json, "print a JSON array (every matching job unless --limit)");
  std::optional<std::uint64_t> list_limit;
  jl->add_option("--limit", list_limit,
                 "only the newest N matching jobs (0: all; default 100 on a terminal table)");
  jl->callback([&] {
    action = [&] { return job_list(g, list_sel, list_states, list_json, list_limit); };
  });
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
  jw->add_option("--group", wait_sel.groups, "the jobs of a group (id or name)");
  jw->add_option("--timeout", wait_timeout, "give up after this long (e.g. 30s, 2h): exit 4");
  jw->add_flag("-q,--quiet", wait_quiet, "no progress bar or summary");
  jw->callback([&] { action = [&] { return job_wait(g, wait_sel, wait_timeout, wait_quiet); }; });
  SelectArgs logs_sel;
  bool logs_follow = false, logs_stderr = false;
  std::uint32_t logs_attempt = 0;
  auto* jo = job->add_subcommand("logs", "print jobs' output (several: each line prefixed [ID])");
  jo->add_option("ids", logs_sel.ids, "job ids or ranges: 17 17-20 3,5");
  jo->add_option("--group", logs_sel.groups, "the jobs of a group (id or name)");
  jo->add_flag("-f,--follow", logs_follow,
               "keep printing until the jobs end; exit 0 only if they all succeeded");
  jo->add_flag("--stderr", logs_stderr, "standard error instead of standard output");
  jo->add_option("--attempt", logs_attempt, "which attempt (default: the latest)");
  jo->callback([&] { action = [&] { return job_logs(g, logs_sel, logs_follow, logs_stderr, logs_attempt); }; });
  SelectArgs cancel_sel;
  auto* jc = job->add_subcommand("cancel", "cancel jobs (their whole process trees)");
  jc->add_option("ids", cancel_sel.ids, "job ids or ranges");
  jc->add_flag("--all", cancel_sel.all, "every unfinished job");
  jc->add_option("--group", cancel_sel.groups, "the jobs of a group (id or name)");
  jc->callback([&] { action = [&] { return job_cancel(g, cancel_sel); }; });
  SelectArgs forget_sel;
  auto* jf = job->add_subcommand("forget", "forget ended jobs: their records and output files");
  jf->add_option("ids", forget_sel.ids, "job ids or ranges");
  jf->add_flag("--all", forget_sel.all, "every ended job");
  jf->add_option("--group", forget_sel.groups, "the jobs of a group (id or name)");
  jf->callback([&] { action = [&] { return job_forget(g, forget_sel); }; });

  // --- agent (internal: started by pilots)
  AgentArgs aargs;
  auto* ag = app.add_subcommand("agent", "run an agent (started by pilots)");
  ag->group("");
  ag->add_option("--profile-dir", aargs.profile_dir,
                 "the profile directory whose hub.json says where the hub is");
  ag->add_option("--hub-file", aargs.hub_file, "a hub.json to connect with (instead of a profile)");
  ag->add_option("--pilot", aargs.pilot, "the pilot this agent belongs to (0: none)");
  ag->add_option("--node-name", aargs.node_name, "this node's name (default: the host name)");
  ag->add_option("--address", aargs.address, "how other nodes reach this one (MPI hostfiles)");
  ag->add_option("--slots", aargs.slots, "slots jobs may use (default: the cores)");
  ag->add_option("--label", aargs.label, "only jobs with this label (or none) run here");
  ag->add_option("--connect-window", aargs.connect_window,
                 "how long to keep trying to reach the hub at start, e.g. 60s");
  ag->add_option("--gpus", aargs.gpus, "GPU devices, e.g. 0,1 (default: detected)");
  ag->add_option("--memory", aargs.memory,
                 "memory jobs may reserve, e.g. 16G; a bare number is MiB (default: the node's)");
  ag->add_option("--walltime-end-ms", aargs.walltime_end_ms,
                 "when this node's pilot ends, in Unix milliseconds (0: never)");
  ag->add_option("--walltime", aargs.walltime_ms, "milliseconds of walltime from now");
  ag->add_flag("--stdio", aargs.stdio, "speak the protocol on stdin/stdout (ssh pilots)");
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
    std::fprintf(stderr, "sortie: %s%s\nRun `sortie --help` (or `sortie COMMAND --help`) for usage.\n",
                 e.what(), did_you_mean(app, args).c_str());
    return kExitUsage;
  }
  return action ? action() : kExitUsage;
}

} // namespace sortie::cli
