// SPDX-License-Identifier: Apache-2.0
// Job processes on a node: spawning into their own session, finding and killing a whole tree.
#include "agent/process.hpp"

#include <dirent.h>
#include <poll.h>
#include <time.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "agent/limits.hpp"
#include "common/files.hpp"
#include "common/spawn.hpp"

namespace sortie::agent {
namespace {

struct ProcInfo {
  pid_t pid;
  pid_t ppid;
  pid_t pgid;
  pid_t sid;
};

/// Parses /proc/PID/stat. The command name is in parentheses and may contain anything.
bool read_stat(pid_t pid, ProcInfo& out) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  char buf[512];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0)
    return false;
  buf[n] = '\0';
  char* close = std::strrchr(buf, ')');
  if (!close)
    return false;
  char state = 0;
  int ppid = 0, pgid = 0, sid = 0;
  if (std::sscanf(close + 2, "%c %d %d %d", &state, &ppid, &pgid, &sid) != 4)
    return false;
  if (state == 'Z' || state == 'X')
    return false; // a zombie holds nothing and cannot be killed further
  out = {pid, ppid, pgid, sid};
  return true;
}

std::vector<ProcInfo> all_processes() {
  std::vector<ProcInfo> out;
  DIR* d = ::opendir("/proc");
  if (!d)
    return out;
  while (auto* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0)
      continue;
    ProcInfo p;
    if (read_stat(static_cast<pid_t>(pid), p))
      out.push_back(p);
  }
  ::closedir(d);
  return out;
}

void write_all_nonblocking(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return;
    data += w;
    n -= static_cast<size_t>(w);
  }
}

std::int64_t monotonic_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
}

/// The children of `pid` (from /proc/PID/task/*/children).
std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  std::string base = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(base.c_str());
  if (!d)
    return out;
  while (auto* e = ::readdir(d)) {
    if (e->d_name[0] == '.')
      continue;
    std::ifstream f(base + "/" + e->d_name + "/children");
    pid_t p;
    while (f >> p)
      out.push_back(p);
  }
  ::closedir(d);
  return out;
}

[[noreturn]] void keeper_main(int read_fd, pid_t agent, const std::string& cgroup_dir) {
  // Survive the signals aimed at the agent: the keeper's whole job starts when the agent is gone.
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::prctl(PR_SET_NAME, "sortie-keeper");
  std::unordered_map<pid_t, std::string> jobs; // sid -> tag
  std::int64_t lease_end = 0;                  // 0: no lease yet
  char buf[4096];
  std::string pending;
  bool expired = false;
  while (true) {
    int wait_ms = -1;
    if (lease_end > 0)
      wait_ms = static_cast<int>(std::clamp<std::int64_t>(lease_end - monotonic_ms(), 0, 60'000));
    pollfd pfd{read_fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, wait_ms);
    if (ready < 0 && errno == EINTR)
      continue;
    if (ready == 0) {
      if (lease_end > 0 && monotonic_ms() >= lease_end) {
        expired = true;
        break;
      }
      continue;
    }
    ssize_t n = ::read(read_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    pending.append(buf, static_cast<size_t>(n));
    size_t pos;
    while ((pos = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, pos);
      pending.erase(0, pos + 1);
      if (line.size() < 2)
        continue;
      if (line[0] == 'L') { // "L<monotonic ms>": the agent's lease now ends then
        lease_end = std::max<std::int64_t>(lease_end, std::atoll(line.c_str() + 1));
        continue;
      }
      // "+SID TAG" or "-SID"
      pid_t sid = static_cast<pid_t>(std::atoi(line.c_str() + 1));
      if (line[0] == '+') {
        auto space = line.find(' ');
        jobs[sid] = space == std::string::npos ? std::string() : line.substr(space + 1);
      } else {
        jobs.erase(sid);
      }
    }
  }
  if (expired) {
    // The agent has not heard from the hub within its lease: it is frozen or cut off, and the
    // hub will run its jobs elsewhere once the lease is over. Stop it, so it starts nothing more;
    // its children not yet announced to us are jobs too (each leads its own session).
    ::kill(agent, SIGSTOP);
    for (pid_t child : children_of(agent))
      if (child != ::getpid() && !jobs.contains(child))
        jobs.emplace(child, std::string());
  }
  for (const auto& [sid, tag] : jobs)
    kill_job(JobProcesses{sid, tag});
  // Only now, with its jobs gone: the hub may requeue them as soon as it sees the agent exit.
  if (expired)
    ::kill(agent, SIGKILL);
  if (!cgroup_dir.empty())
    remove_cgroup_tree(cgroup_dir);
  ::_exit(0);
}

} // namespace

Result<pid_t> spawn_process(const SpawnRequest& req) {
  std::vector<char*> argv;
  for (const auto& a : req.argv)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const auto& e : req.env)
    envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (req.stdout_fd >= 0)
    posix_spawn_file_actions_adddup2(&fa, req.stdout_fd, 1);
  if (req.stderr_fd >= 0)
    posix_spawn_file_actions_adddup2(&fa, req.stderr_fd, 2);
  if (!req.cwd.empty())
    posix_spawn_file_actions_addchdir_np(&fa, req.cwd.c_str());
  // Nothing of the agent's leaks into jobs (Asio's sockets are not close-on-exec): a job holding
  // the hub link open would hide the agent's death from the hub.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  SpawnAttr attr;
  pid_t pid = 0;
  // glibc's posix_spawn reports exec failures (missing program, bad cwd) as its return value.
  int rc = ::posix_spawnp(&pid, argv[0], &fa, attr.get(), argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    if (rc == ENOENT && !req.cwd.empty() && ::access(req.cwd.c_str(), X_OK) != 0)
      return make_error(ErrorCode::NotFound,
                        fmt::format("cannot enter working directory '{}': {}", req.cwd,
                                    errno_text(errno)));
    return make_error(rc == ENOENT ? ErrorCode::NotFound : ErrorCode::PermissionDenied,
                      fmt::format("cannot execute '{}': {}", req.argv[0], errno_text(rc)));
  }
  return pid;
}

std::string job_tag_entry(const std::string& tag) { return "SORTIE_JOB_TAG=" + tag; }

namespace {

/// /proc/PID/environ: NUL-separated NAME=VALUE entries (empty if unreadable, e.g. another
/// user's process; at most 1 MiB).
std::string read_environ(pid_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/environ", pid);
  std::string env;
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return env;
  char buf[16384];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0 && env.size() < (1u << 20))
    env.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return env;
}

/// True if the process's environment holds exactly `entry`.
bool environ_has(pid_t pid, const std::string& entry) {
  std::string env = read_environ(pid);
  std::string needle = entry;
  needle.push_back('\0');
  if (env.compare(0, needle.size(), needle) == 0)
    return true;
  needle.insert(needle.begin(), '\0');
  return env.find(needle) != std::string::npos;
}

/// Children of this process.

} // namespace

std::vector<pid_t> job_processes(const JobProcesses& job) {
  auto procs = all_processes();
  std::string entry = job.tag.empty() ? std::string() : job_tag_entry(job.tag);
  std::unordered_map<pid_t, std::vector<pid_t>> children;
  std::vector<pid_t> roots;
  pid_t self = ::getpid();
  for (const auto& p : procs) {
    children[p.ppid].push_back(p.pid);
    if (p.pid == self)
      continue;
    if (p.sid == job.sid || p.pgid == job.sid || p.pid == job.sid ||
        (!entry.empty() && environ_has(p.pid, entry)))
      roots.push_back(p.pid);
  }
  std::unordered_set<pid_t> seen;
  std::vector<pid_t> out;
  std::vector<pid_t> stack = roots;
  while (!stack.empty()) {
    pid_t p = stack.back();
    stack.pop_back();
    if (p == self || p <= 1 || !seen.insert(p).second)
      continue;
    out.push_back(p);
    if (auto it = children.find(p); it != children.end())
      stack.insert(stack.end(), it->second.begin(), it->second.end());
  }
  return out;
}

int signal_job(const JobProcesses& job, int sig) {
  if (job.sid > 1)
    ::kill(-job.sid, sig);
  int n = 0;
  for (pid_t p : job_processes(job))
    if (::kill(p, sig) == 0)
      ++n;
  return n;
}

void kill_job(const JobProcesses& job) {
  for (int round = 0; round < 10; ++round) {
    if (job.sid > 1)
      ::kill(-job.sid, SIGKILL);
    auto procs = job_processes(job);
    if (procs.empty())
      return;
    // Stop everything first so that nothing forks between the scan and the kill.
    for (pid_t p : procs)
      ::kill(p, SIGSTOP);
    for (pid_t p : job_processes(job))
      ::kill(p, SIGKILL);
  }
}

std::vector<pid_t> own_children() { return children_of(::getpid()); }

std::vector<std::pair<pid_t, std::string>> adopted_children(const std::vector<pid_t>& known) {
  std::vector<std::pair<pid_t, std::string>> out;
  for (pid_t child : own_children()) {
    if (std::find(known.begin(), known.end(), child) != known.end())
      continue;
    std::string env = read_environ(child);
    std::string tag;
    static const std::string key = "SORTIE_JOB_TAG=";
    for (size_t at = 0; at < env.size();) {
      size_t end = env.find('\0', at);
      if (end == std::string::npos)
        end = env.size();
      if (env.compare(at, key.size(), key) == 0)
        tag = env.substr(at + key.size(), end - at - key.size());
      at = end + 1;
    }
    out.emplace_back(child, tag);
  }
  return out;
}

void become_subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }

Result<Keeper> start_keeper(const std::string& cgroup_dir) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return make_error(ErrorCode::Io, fmt::format("pipe: {}", errno_text(errno)));
  pid_t agent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0)
    return make_error(ErrorCode::Io, fmt::format("fork: {}", errno_text(errno)));
  if (pid == 0) {
    ::close(fds[1]);
    for (int fd = 3; fd < 1024; ++fd)
      if (fd != fds[0])
        ::close(fd);
    keeper_main(fds[0], agent, cgroup_dir);
  }
  ::close(fds[0]);
  ::fcntl(fds[1], F_SETFL, ::fcntl(fds[1], F_GETFL) | O_NONBLOCK);
  return Keeper{fds[1], pid};
}

std::string keeper_add(const JobProcesses& job) { return fmt::format("+{} {}\n", job.sid, job.tag); }

std::string keeper_remove(const JobProcesses& job) { return fmt::format("-{}\n", job.sid); }

std::string keeper_lease(std::int64_t end_monotonic_ms) { return fmt::format("L{}\n", end_monotonic_ms); }

void keeper_write(int fd, const std::string& messages) {
  write_all_nonblocking(fd, messages.data(), messages.size());
}

std::uint64_t total_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  std::uint64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemTotal:")
      return kb * 1024;
  return 0;
}

} // namespace sortie::agent
