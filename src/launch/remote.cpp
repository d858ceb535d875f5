// SPDX-License-Identifier: Apache-2.0
// The pure parts of remote pilots: ssh targets, machinefiles, command lines, batch scripts.
#include "launch/remote.hpp"

#include <fmt/format.h>

#include "common/text.hpp"

namespace sortie::launch {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

bool host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == ':' || c == '[' || c == ']';
}

} // namespace

bool safe_word(std::string_view s) {
  if (s.empty())
    return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_' || c == '.' || c == '+'))
      return false;
  return true;
}

std::string SshTarget::destination() const { return user.empty() ? host : user + "@" + host; }

std::string SshTarget::jump() const {
  return port ? fmt::format("{}:{}", destination(), port) : destination();
}

Result<SshTarget> parse_ssh_target(std::string_view text) {
  text = trim(text);
  SshTarget t;
  if (auto at = text.rfind('@'); at != std::string_view::npos) {
    t.user = std::string(text.substr(0, at));
    text.remove_prefix(at + 1);
    if (t.user.empty() || !safe_word(t.user))
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("'{}' is not a valid user name", t.user));
  }
  std::string_view host = text;
  if (auto colon = text.rfind(':'); colon != std::string_view::npos && text.find(':') == colon) {
    host = text.substr(0, colon);
    auto port = parse_int(text.substr(colon + 1), 1, 65535);
    if (!port.ok())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("'{}': the port after ':' must be 1..65535", text));
    t.port = static_cast<std::uint16_t>(*port);
  }
  if (host.empty() || host.front() == '-')
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not a host: write [user@]host[:port]", text));
  for (char c : host)
    if (!host_char(c))
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("'{}' is not a host name or address", host));
  t.host = std::string(host);
  return t;
}

Result<std::vector<SshTarget>> parse_ssh_targets(std::string_view text) {
  std::vector<SshTarget> out;
  for (const auto& part : split(text, ',')) {
    if (trim(part).empty())
      continue;
    auto t = parse_ssh_target(part);
    if (!t.ok())
      return t.error();
    out.push_back(*t);
  }
  if (out.empty())
    return make_error(ErrorCode::InvalidArgument, "no host given: write [user@]host[:port][,...]");
  return out;
}

Result<std::vector<MachineEntry>> parse_machinefile(std::string_view text, const std::string& name) {
  std::vector<MachineEntry> out;
  int line_no = 0;
  for (const auto& raw : split(text, '\n')) {
    ++line_no;
    std::string_view line = raw;
    if (auto hash = line.find('#'); hash != std::string_view::npos)
      line = line.substr(0, hash);
    line = trim(line);
    if (line.empty())
      continue;
    MachineEntry e;
    std::string_view host = line;
    std::string_view slots;
    if (auto sp = line.find_first_of(" \t"); sp != std::string_view::npos) {
      host = line.substr(0, sp);
      auto rest = trim(line.substr(sp));
      if (rest.substr(0, 6) != "slots=")
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}:{}: expected 'host', 'host:N' or 'host slots=N', got "
                                      "'{}'",
                                      name, line_no, line));
      slots = rest.substr(6);
    } else if (auto colon = line.rfind(':'); colon != std::string_view::npos) {
      host = line.substr(0, colon);
      slots = line.substr(colon + 1);
    }
    auto t = parse_ssh_target(host);
    if (!t.ok())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}:{}: {}", name, line_no, t.error().message));
    e.target = *t;
    if (!slots.empty()) {
      auto n = parse_int(slots, 1, 4096);
      if (!n.ok())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("{}:{}: the slot count '{}' must be 1..4096", name, line_no,
                                      slots));
      e.slots = static_cast<std::uint32_t>(*n);
    }
    out.push_back(std::move(e));
  }
  if (out.empty())
    return make_error(ErrorCode::InvalidArgument, fmt::format("{}: no hosts in it", name));
  return out;
}

std::vector<std::string> ssh_argv(const SshTarget& target,
                                  const std::vector<SshTarget>& jumps,
                                  const std::vector<std::string>& options,
                                  const std::vector<std::string>& remote_argv) {
  // BatchMode: never a password prompt. The keepalives notice a dead network within ~15 s even
  // when the remote side cannot send (the protocol's heartbeats notice it too).
  std::vector<std::string> argv = {"ssh", "-T", "-o", "BatchMode=yes", "-o",
                                   "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"};
  if (target.port) {
    argv.push_back("-p");
    argv.push_back(std::to_string(target.port));
  }
  if (!jumps.empty()) {
    std::string chain;
    for (const auto& j : jumps)
      chain += (chain.empty() ? "" : ",") + j.jump();
    argv.push_back("-J");
    argv.push_back(chain);
  }
  argv.insert(argv.end(), options.begin(), options.end());
  argv.push_back("--");
  argv.push_back(target.destination());
  std::string command;
  for (const auto& w : remote_argv)
    command += (command.empty() ? "" : " ") + shell_quote(w);
  argv.push_back(command);
  return argv;
}

std::string hms(std::int64_t ms) {
  std::int64_t s = (ms + 999) / 1000;
  return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
}

namespace {

std::string agent_command(const std::vector<std::string>& argv) {
  std::string line;
  for (const auto& w : argv)
    line += (line.empty() ? "" : " ") + shell_quote(w);
  return line;
}

} // namespace

std::string slurm_script(const BatchJob& job) {
  std::string s = "#!/bin/sh\n";
  s += "# A sortie pilot: one agent per node (docs/resources.md). Written by the hub.\n";
  s += fmt::format("#SBATCH --job-name={}\n", job.name);
  s += fmt::format("#SBATCH --nodes={}\n", job.nodes);
  s += "#SBATCH --ntasks-per-node=1\n";
  s += fmt::format("#SBATCH --cpus-per-task={}\n", job.slots_per_node);
  if (job.walltime_ms > 0)
    s += fmt::format("#SBATCH --time={}\n", hms(job.walltime_ms));
  if (!job.queue.empty())
    s += fmt::format("#SBATCH --partition={}\n", job.queue);
  // Paths may hold any character: they go to sbatch as arguments (sbatch_argv), not here.
  s += "exec srun --ntasks-per-node=1 --kill-on-bad-exit=0 " + agent_command(job.agent_argv) + "\n";
  return s;
}

std::vector<std::string> sbatch_argv(const std::vector<std::string>& raw_options,
                                     const std::string& script_path,
                                     const std::string& output) {
  std::vector<std::string> argv = {"sbatch", "--parsable"};
  if (!output.empty())
    argv.push_back("--output=" + output);
  argv.insert(argv.end(), raw_options.begin(), raw_options.end());
  if (!script_path.empty())
    argv.push_back(script_path);
  return argv;
}

Result<std::string> parse_sbatch_id(std::string_view out) {
  out = trim(out);
  if (auto nl = out.rfind('\n'); nl != std::string_view::npos)
    out = out.substr(nl + 1); // warnings come first
  auto id = out.substr(0, out.find(';'));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string_view::npos)
    return make_error(ErrorCode::Internal,
                      fmt::format("sbatch printed '{}' where a job id was expected", out));
  return std::string(id);
}

std::string sge_script(const BatchJob& job, const std::string& pe) {
  std::string s = "#!/bin/sh\n";
  s += "# A sortie pilot: one agent per host (docs/resources.md). Written by the hub.\n";
  s += fmt::format("#$ -N {}\n", job.name);
  s += "#$ -S /bin/sh\n#$ -V\n#$ -j y\n#$ -cwd\n";
  // The output path goes to qsub as an argument (qsub_argv).
  if (job.walltime_ms > 0)
    s += fmt::format("#$ -l h_rt={}\n", hms(job.walltime_ms));
  if (!job.queue.empty())
    s += fmt::format("#$ -q {}\n", job.queue);
  if (job.nodes > 1 || job.slots_per_node > 1)
    s += fmt::format("#$ -pe {} {}\n", pe, job.nodes * job.slots_per_node);
  std::string cmd = agent_command(job.agent_argv);
  if (job.nodes > 1) {
    // One agent on every other host of the allocation, then ours. qrsh -inherit hands its words
    // to a shell on the other host: each is quoted for that shell, then for this script's.
    std::string remote;
    for (const auto& w : job.agent_argv)
      remote += (remote.empty() ? "" : " ") + shell_quote(shell_quote(w));
    s += "me=$(hostname)\n";
    s += "while read -r host rest; do\n";
    s += "  [ \"$host\" = \"$me\" ] || qrsh -inherit -nostdin \"$host\" " + remote + " &\n";
    s += "done < \"$PE_HOSTFILE\"\n";
    s += cmd + "\nwait\n";
  } else {
    s += "exec " + cmd + "\n";
  }
  return s;
}

std::vector<std::string> qsub_argv(const std::vector<std::string>& raw_options,
                                   const std::string& script_path,
                                   const std::string& output) {
  std::vector<std::string> argv = {"qsub", "-terse"};
  if (!output.empty()) {
    argv.push_back("-o");
    argv.push_back(output);
  }
  argv.insert(argv.end(), raw_options.begin(), raw_options.end());
  if (!script_path.empty())
    argv.push_back(script_path);
  return argv;
}

Result<std::string> parse_qsub_id(std::string_view out) {
  out = trim(out);
  if (auto nl = out.rfind('\n'); nl != std::string_view::npos)
    out = out.substr(nl + 1);
  auto id = out.substr(0, out.find('.'));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string_view::npos)
    return make_error(ErrorCode::Internal,
                      fmt::format("qsub printed '{}' where a job id was expected", out));
  return std::string(id);
}

BatchState parse_squeue(std::string_view out, std::string& reason) {
  out = trim(out);
  if (out.empty())
    return BatchState::Gone;
  auto bar = out.find('|');
  auto state = out.substr(0, bar);
  reason = bar == std::string_view::npos ? "" : std::string(trim(out.substr(bar + 1)));
  if (reason == "None")
    reason.clear();
  if (state == "PENDING" || state == "CONFIGURING" || state == "REQUEUED" || state == "RESIZING" ||
      state == "SUSPENDED")
    return BatchState::Pending;
  if (state == "RUNNING")
    return BatchState::Running;
  if (state == "COMPLETING" || state == "COMPLETED" || state == "CANCELLED" || state == "FAILED" ||
      state == "TIMEOUT" || state == "NODE_FAIL" || state == "PREEMPTED" || state == "BOOT_FAIL" ||
      state == "DEADLINE" || state == "OUT_OF_MEMORY") {
    reason = std::string(state) + (reason.empty() ? "" : " (" + reason + ")");
    return BatchState::Gone;
  }
  reason = std::string(state);
  return BatchState::Unknown;
}

BatchState parse_qstat(std::string_view out, const std::string& id, std::string& reason) {
  // job-ID prior name user state submit/start at queue slots ja-task-ID
  for (const auto& raw : split(out, '\n')) {
    auto words = split(trim(raw), ' ');
    std::vector<std::string_view> cols;
    for (const auto& w : words)
      if (!w.empty())
        cols.push_back(w);
    if (cols.size() < 5 || cols[0] != id)
      continue;
    auto state = cols[4];
    reason = std::string(state);
    if (state.find('E') != std::string_view::npos)
      return BatchState::Unknown; // error state: held until someone looks
    if (state.find('r') != std::string_view::npos || state.find('t') != std::string_view::npos)
      return BatchState::Running;
    if (state.find('d') != std::string_view::npos)
      return BatchState::Gone;
    return BatchState::Pending; // qw, hqw, ...
  }
  reason.clear();
  return BatchState::Gone;
}

} // namespace sortie::launch
