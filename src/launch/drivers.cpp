// SPDX-License-Identifier: Apache-2.0
// Pilot drivers: ssh (one ssh process per node), Slurm and Grid Engine (batch scripts, polling).
#include "launch/drivers.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/log.hpp"
#include "launch/local_driver.hpp"
#include "launch/remote.hpp"
#include "protocol/auth.hpp"

namespace sortie::launch {
namespace {

std::string remote_exe(const DriverContext& c) {
  if (!c.resource.install_dir().empty())
    return (std::filesystem::path(c.resource.install_dir()) / "bin" / "sortie").string();
  return c.sortie_exe.string();
}

/// The agent's command line: only non-secret values (the key travels on stdin, or in hub.json).
std::vector<std::string> agent_argv(const DriverContext& c,
                                    bool stdio,
                                    const std::string& node_name,
                                    std::uint32_t slots,
                                    const std::string& address = {}) {
  std::vector<std::string> argv = {remote_exe(c), "agent"};
  if (stdio) {
    argv.push_back("--stdio");
  } else {
    argv.push_back("--profile-dir");
    argv.push_back(c.profile_dir.string());
  }
  argv.push_back("--pilot");
  argv.push_back(std::to_string(c.pilot.value));
  if (!node_name.empty()) {
    argv.push_back("--node-name");
    argv.push_back(node_name);
  }
  if (!address.empty()) { // how the other nodes reach it (MPI hostfiles)
    argv.push_back("--address");
    argv.push_back(address);
  }
  if (slots) {
    argv.push_back("--slots");
    argv.push_back(std::to_string(slots));
  }
  if (!c.spec.label().empty()) {
    argv.push_back("--label");
    argv.push_back(c.spec.label());
  }
  if (c.spec.gpus_per_node()) {
    std::string list;
    for (std::uint32_t g = 0; g < c.spec.gpus_per_node(); ++g)
      list += (g ? "," : "") + std::to_string(g);
    argv.push_back("--gpus");
    argv.push_back(list);
  }
  if (c.spec.memory_per_node()) {
    argv.push_back("--memory");
    argv.push_back(std::to_string(c.spec.memory_per_node()) + "B");
  }
  if (c.spec.walltime_ms()) {
    argv.push_back("--walltime");
    argv.push_back(std::to_string(c.spec.walltime_ms()));
  }
  return argv;
}

Result<std::vector<SshTarget>> jump_chain(const DriverContext& c) {
  std::vector<SshTarget> jumps;
  for (const auto& g : c.gateways) {
    auto t = parse_ssh_targets(g.location());
    if (!t.ok())
      return t.error().with_context(fmt::format("gateway '{}'", g.name()));
    jumps.push_back(t->front());
  }
  return jumps;
}

std::string last_line(const std::filesystem::path& path) {
  std::ifstream f(path);
  std::string line, last;
  while (std::getline(f, line))
    if (!line.empty())
      last = line;
  return last;
}

// ---------------------------------------------------------------------------------------------
// ssh: one `ssh host sortie agent --stdio` per node; the link runs over its pipes.

class SshDriver final : public Driver {
public:
  SshDriver(DriverContext ctx, DriverHooks hooks) : c_(std::move(ctx)), hooks_(std::move(hooks)) {}
  ~SshDriver() override {
    *alive_ = false;
    for (auto& n : nodes_)
      if (n.running)
        ::kill(n.pid, SIGTERM);
  }

  void start() override {
    auto nodes = plan();
    if (!nodes.ok())
      return fail(nodes.error().message);
    auto jumps = jump_chain(c_);
    if (!jumps.ok())
      return fail(jumps.error().message);
    std::vector<std::string> options(c_.resource.ssh_options().begin(),
                                     c_.resource.ssh_options().end());
    for (auto& n : *nodes) {
      auto argv = ssh_argv(n.target, *jumps, options, agent_argv(c_, true, n.name, n.slots, n.target.host));
      n.log = c_.log_dir / fmt::format("agent-{}-{}.log", c_.pilot.value, n.name);
      auto spawned = spawn_piped(argv, true, n.log.string());
      if (!spawned.ok()) {
        cancel_now();
        return fail(spawned.error().message);
      }
      // The link's key goes first, on the agent's standard input (never on a command line).
      std::string key = protocol::random_bytes(32);
      std::string line = protocol::to_hex(key) + "\n";
      [[maybe_unused]] auto w = ::write(spawned->stdin_fd, line.data(), line.size());
      n.pid = spawned->pid;
      n.running = true;
      log::info("pilot {}: started agent {} over ssh to {} (pid {}), log {}", c_.pilot.value,
                n.name, n.target.destination(), n.pid, n.log.string());
      auto stream = net::make_pipe_stream(c_.executor, spawned->stdout_fd, spawned->stdin_fd,
                                          "ssh:" + n.target.destination());
      std::size_t index = nodes_.size();
      nodes_.push_back(n);
      c_.watch->expect(n.pid, [this, alive = alive_, index](int status) {
        if (*alive)
          on_exit(index, status);
      });
      hooks_.agent_link(c_.pilot, std::move(stream), key);
    }
    hooks_.report(c_.pilot, {PilotReport::Kind::Submitted, "", ""});
  }

  void cancel() override {
    // The agents got Shutdown and end their ssh sessions themselves; those that do not (a
    // network that went silent) are ended here after the grace period.
    auto t = std::make_shared<asio::steady_timer>(c_.executor);
    t->expires_after(std::chrono::milliseconds(c_.kill_grace_ms + 5000));
    t->async_wait([this, t, alive = alive_](error_code ec) {
      if (!ec && *alive)
        cancel_now();
    });
  }

private:
  struct Node {
    SshTarget target;
    std::string name;
    std::uint32_t slots = 0;
    std::filesystem::path log;
    int pid = -1;
    bool running = false;
    int status = 0;
  };

  Result<std::vector<Node>> plan() {
    std::vector<MachineEntry> hosts;
    if (!c_.resource.machinefile().empty()) {
      auto text = read_file(c_.resource.machinefile());
      if (!text.ok())
        return text.error();
      auto m = parse_machinefile(*text, c_.resource.machinefile());
      if (!m.ok())
        return m.error();
      hosts = *m;
    } else {
      auto t = parse_ssh_targets(c_.resource.location());
      if (!t.ok())
        return t.error();
      for (auto& target : *t)
        hosts.push_back({target, 0});
    }
    std::uint32_t n = c_.spec.nodes() ? c_.spec.nodes() : static_cast<std::uint32_t>(hosts.size());
    std::map<std::string, int> uses;
    for (std::uint32_t i = 0; i < n; ++i)
      ++uses[hosts[i % hosts.size()].target.host];
    std::map<std::string, int> seen;
    std::vector<Node> out;
    for (std::uint32_t i = 0; i < n; ++i) {
      const auto& h = hosts[i % hosts.size()];
      Node node;
      node.target = h.target;
      node.slots = c_.spec.slots_per_node() ? c_.spec.slots_per_node() : h.slots;
      if (static_cast<int>(i) < c_.spec.node_names_size())
        node.name = c_.spec.node_names(static_cast<int>(i));
      else if (uses[h.target.host] > 1)
        node.name = fmt::format("{}-{}", h.target.host, ++seen[h.target.host]);
      else
        node.name = h.target.host;
      out.push_back(std::move(node));
    }
    return out;
  }

  /// How a node's ssh session ended, with the last line ssh wrote ("" if it ended well).
  std::string node_end(const Node& n) const {
    if (WIFEXITED(n.status) && WEXITSTATUS(n.status) == 0)
      return {};
    std::string why = last_line(n.log);
    return fmt::format("ssh to {} ended ({}){}", n.target.destination(), exit_text(n.status),
                       why.empty() ? "" : ": " + why);
  }

  void on_exit(std::size_t index, int status) {
    Node& n = nodes_[index];
    n.running = false;
    n.status = status;
    bool others = std::any_of(nodes_.begin(), nodes_.end(), [](const Node& o) { return o.running; });
    if (others) {
      // The pilot goes on with its other nodes; it says why this one is missing.
      if (auto why = node_end(n); !why.empty())
        hooks_.report(c_.pilot, {PilotReport::Kind::NodeGone, fmt::format("node {}: {}", n.name, why), ""});
      return;
    }
    // All gone: say how the first one that failed ended.
    std::string detail = "every ssh session ended";
    for (const auto& other : nodes_)
      if (auto why = node_end(other); !why.empty()) {
        detail = why;
        break;
      }
    hooks_.report(c_.pilot, {PilotReport::Kind::Gone, detail, ""});
  }

  void cancel_now() {
    for (auto& n : nodes_)
      if (n.running) {
        ::kill(n.pid, SIGTERM);
        ::kill(n.pid, SIGCONT); // a stopped ssh would not see the SIGTERM
      }
  }

  void fail(const std::string& why) {
    hooks_.report(c_.pilot, {PilotReport::Kind::Failed, why, ""});
  }

  DriverContext c_;
  DriverHooks hooks_;
  std::vector<Node> nodes_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// ---------------------------------------------------------------------------------------------
// Batch systems: submit a script, poll the job, cancel it.

class BatchDriver final : public Driver {
public:
  enum class System { Slurm, Sge };

  BatchDriver(DriverContext ctx, DriverHooks hooks, System system)
      : c_(std::move(ctx)), hooks_(std::move(hooks)), system_(system) {}
  ~BatchDriver() override { *alive_ = false; }

  void start() override {
    spawn_root(c_.executor, fmt::format("pilot {}'s {} driver", c_.pilot.value, system_name()),
               run());
  }

  void cancel() override {
    cancel_requested_ = true;
    if (!batch_id_.empty() && !gone_)
      spawn_root(c_.executor, fmt::format("cancelling pilot {}'s batch job", c_.pilot.value),
                 remove());
  }

private:
  const char* system_name() const { return system_ == System::Slurm ? "slurm" : "sge"; }

  /// The command, run here or, for a remote login node, through ssh.
  std::vector<std::string> command(std::vector<std::string> argv) {
    const std::string& loc = c_.resource.location();
    if (loc.empty() || loc == "localhost" || loc == "127.0.0.1")
      return argv;
    auto target = parse_ssh_targets(loc);
    auto jumps = jump_chain(c_);
    if (!target.ok() || !jumps.ok())
      return argv; // checked when the resource was added
    std::vector<std::string> options(c_.resource.ssh_options().begin(),
                                     c_.resource.ssh_options().end());
    return ssh_argv(target->front(), *jumps, options, argv);
  }

  Awaitable<Result<CommandResult>> exec(std::vector<std::string> argv, std::string input = {}) {
    co_return co_await run_command(c_.executor, *c_.watch, command(std::move(argv)),
                                   std::move(input), c_.command_timeout_ms);
  }

  Awaitable<void> run() {
    auto alive = alive_;
    if (c_.batch_id.empty()) {
      if (!co_await submit() || !*alive)
        co_return;
    } else {
      batch_id_ = c_.batch_id;
    }
    if (cancel_requested_)
      co_await remove();
    co_await poll(alive);
  }

  Awaitable<bool> submit() {
    auto alive = alive_;
    BatchJob job;
    job.name = fmt::format("sortie-pilot-{}", c_.pilot.value);
    job.nodes = c_.spec.nodes() ? c_.spec.nodes() : 1;
    job.slots_per_node = c_.spec.slots_per_node() ? c_.spec.slots_per_node() : 1;
    job.walltime_ms = c_.spec.walltime_ms();
    job.queue = c_.spec.queue();
    std::filesystem::path out_dir = c_.resource.tmp_dir().empty()
                                        ? c_.log_dir
                                        : std::filesystem::path(c_.resource.tmp_dir());
    job.output = (out_dir / fmt::format("pilot-{}-{}.out", c_.pilot.value,
                                        system_ == System::Slurm ? "%j" : "$JOB_ID"))
                     .string();
    // Agents take their name from the batch system's node name (or the host name).
    job.agent_argv = agent_argv(c_, false, "", c_.spec.slots_per_node());
    std::string script = system_ == System::Slurm ? slurm_script(job) : sge_script(job, "smp");
    auto copy = c_.log_dir / fmt::format("pilot-{}.{}.sh", c_.pilot.value, system_name());
    if (auto w = write_file_atomic(copy, script, 0700); !w.ok())
      log::warn("pilot {}: cannot keep a copy of its batch script: {}", c_.pilot.value,
                w.error().to_string());
    std::vector<std::string> raw(c_.spec.batch_options().begin(), c_.spec.batch_options().end());
    // The script goes on standard input: nothing to copy to a remote login node.
    auto argv = system_ == System::Slurm ? sbatch_argv(raw, "", job.output)
                                         : qsub_argv(raw, "", job.output);
    auto r = co_await exec(argv, script);
    if (!*alive)
      co_return false;
    if (!r.ok()) {
      hooks_.report(c_.pilot, {PilotReport::Kind::Failed, r.error().message, ""});
      co_return false;
    }
    if (!r->ok()) {
      hooks_.report(c_.pilot, {PilotReport::Kind::Failed,
                               fmt::format("{} refused the pilot: {}", argv[0], r->describe()), ""});
      co_return false;
    }
    auto id = system_ == System::Slurm ? parse_sbatch_id(r->out) : parse_qsub_id(r->out);
    if (!id.ok()) {
      hooks_.report(c_.pilot, {PilotReport::Kind::Failed, id.error().message, ""});
      co_return false;
    }
    batch_id_ = *id;
    log::info("pilot {}: {} job {} submitted", c_.pilot.value, system_name(), batch_id_);
    hooks_.report(c_.pilot, {PilotReport::Kind::Submitted, "", batch_id_});
    co_return true;
  }

  Awaitable<void> poll(std::shared_ptr<bool> alive) {
    asio::steady_timer timer(c_.executor);
    std::int64_t delay = 200; // the first look comes quickly
    BatchState last = BatchState::Unknown;
    std::string last_reason;
    while (*alive) {
      timer.expires_after(std::chrono::milliseconds(delay));
      co_await timer.async_wait(use_nothrow);
      if (!*alive)
        co_return;
      delay = c_.poll_interval_ms;
      Result<CommandResult> r = make_error(ErrorCode::Internal, "");
      std::string reason;
      BatchState state = BatchState::Unknown;
      if (system_ == System::Slurm) {
        r = co_await exec(status_argv());
        if (!*alive)
          co_return;
        if (r.ok() && r->ok())
          state = parse_squeue(r->out, reason);
        else if (r.ok() && r->err.find("Invalid job id") != std::string::npos)
          state = BatchState::Gone;
      } else {
        r = co_await exec(status_argv());
        if (!*alive)
          co_return;
        if (r.ok() && r->ok())
          state = parse_qstat(r->out, batch_id_, reason);
      }
      if (!r.ok() || (!r->ok() && state == BatchState::Unknown)) {
        log::warn("pilot {}: cannot ask {} about job {}: {}", c_.pilot.value, system_name(),
                  batch_id_, r.ok() ? r->describe() : r.error().to_string());
        continue;
      }
      if (state == last && reason == last_reason)
        continue;
      last = state;
      last_reason = reason;
      switch (state) {
      case BatchState::Pending:
        hooks_.report(c_.pilot, {PilotReport::Kind::Pending, reason, batch_id_});
        break;
      case BatchState::Running:
        hooks_.report(c_.pilot, {PilotReport::Kind::Running, reason, batch_id_});
        break;
      case BatchState::Gone:
        gone_ = true;
        report_gone(reason);
        co_return;
      case BatchState::Unknown:
        log::warn("pilot {}: {} job {} is in state {}", c_.pilot.value, system_name(), batch_id_,
                  reason);
        break;
      }
    }
  }

  // Outside the coroutines: GCC 12 rejects initializer lists of strings inside them.
  std::vector<std::string> status_argv() const {
    if (system_ == System::Slurm)
      return {"squeue", "-h", "-j", batch_id_, "-o", "%T|%r"};
    return {"qstat"};
  }

  std::vector<std::string> cancel_argv() const {
    if (system_ == System::Slurm)
      return {"scancel", batch_id_};
    return {"qdel", batch_id_};
  }

  void report_gone(const std::string& reason) {
    std::string detail = fmt::format("{} job {} ended", system_name(), batch_id_);
    if (!reason.empty())
      detail += " (" + reason + ")";
    hooks_.report(c_.pilot, {PilotReport::Kind::Gone, detail, batch_id_});
  }

  void report_failed(const std::string& detail) {
    hooks_.report(c_.pilot, {PilotReport::Kind::Failed, detail, ""});
  }

  Awaitable<void> remove() {
    auto alive = alive_;
    std::vector<std::string> argv = cancel_argv();
    auto r = co_await exec(argv);
    if (!*alive)
      co_return;
    if (!r.ok() || !r->ok())
      log::warn("pilot {}: {} {} failed: {}", c_.pilot.value, argv[0], batch_id_,
                r.ok() ? r->describe() : r.error().to_string());
    else
      log::info("pilot {}: {} job {} cancelled", c_.pilot.value, system_name(), batch_id_);
  }

  DriverContext c_;
  DriverHooks hooks_;
  System system_;
  std::string batch_id_;
  bool cancel_requested_ = false;
  bool gone_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

} // namespace

Result<void> check_resource(const pb::ResourceSpec& spec) {
  const std::string& type = spec.type();
  if (type != "ssh" && type != "slurm" && type != "sge" && type != "local")
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("resource type '{}' is not known: use ssh, slurm, sge or local",
                                  type));
  if (!safe_word(spec.name()))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("resource name '{}' is not valid: use letters, digits, '-', "
                                  "'_' and '.'",
                                  spec.name()));
  if (type == "ssh") {
    if (spec.location().empty() && spec.machinefile().empty())
      return make_error(ErrorCode::InvalidArgument,
                        "an ssh resource needs --location [user@]host[:port][,...] or a "
                        "--machinefile");
    if (!spec.location().empty())
      if (auto t = parse_ssh_targets(spec.location()); !t.ok())
        return t.error().with_context("--location");
  } else if (!spec.location().empty()) {
    if (auto t = parse_ssh_targets(spec.location()); !t.ok())
      return t.error().with_context("--location");
  }
  for (const auto& o : spec.ssh_options())
    if (o.empty())
      return make_error(ErrorCode::InvalidArgument, "an empty --ssh-option");
  return ok_result();
}

Result<std::unique_ptr<Driver>> make_driver(DriverContext ctx, DriverHooks hooks) {
  const std::string type = ctx.resource.type();
  if (type == "local")
    return make_local_driver(std::move(ctx), std::move(hooks));
  if (type == "ssh")
    return std::unique_ptr<Driver>(std::make_unique<SshDriver>(std::move(ctx), std::move(hooks)));
  if (type == "slurm")
    return std::unique_ptr<Driver>(
        std::make_unique<BatchDriver>(std::move(ctx), std::move(hooks), BatchDriver::System::Slurm));
  if (type == "sge")
    return std::unique_ptr<Driver>(
        std::make_unique<BatchDriver>(std::move(ctx), std::move(hooks), BatchDriver::System::Sge));
  return make_error(ErrorCode::InvalidArgument,
                    fmt::format("resource type '{}' has no driver", type));
}

} // namespace sortie::launch
