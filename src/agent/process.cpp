// SPDX-License-Identifier: Apache-2.0
// Job processes on a node: spawning into their own session, finding and killing a whole tree,
// and the keeper with the table of jobs it shares with the agent.
#include "agent/process.hpp"

#include <dirent.h>
#include <poll.h>
#include <time.h>
#include <fcntl.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>

#include "agent/limits.hpp"
#include "common/assert.hpp"
#include "common/files.hpp"

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

[[noreturn]] void keeper_main(int read_fd, int table_fd, pid_t agent,
                              const std::string& cgroup_dir) {
  // Survive the signals aimed at the agent: the keeper's whole job starts when the agent is gone.
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::prctl(PR_SET_NAME, "sortie-keeper");
  std::int64_t lease_end = 0; // 0: no lease yet
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
      if (line[0] == 'L') // "L<monotonic ms>": the agent's lease now ends then
        lease_end = std::max<std::int64_t>(lease_end, std::atoll(line.c_str() + 1));
    }
  }
  // The agent has not heard from the hub within its lease: it is frozen or cut off, and the hub
  // will run its jobs elsewhere once the lease is over. Stop it, so it starts nothing more.
  if (expired)
    ::kill(agent, SIGSTOP);
  std::unordered_map<pid_t, std::string> jobs; // sid -> tag
  for (auto& job : KeeperTable::read(table_fd))
    jobs.emplace(job.sid, std::move(job.tag));
  if (expired) {
    // Its children not yet in the table are jobs too (each leads its own session).
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

namespace {

/// A system call for the child, which must not write errno: until it execs it runs on the
/// agent's thread-local storage while that thread goes on. Returns -errno on failure.
#if defined(__x86_64__)
constexpr bool kRawSyscalls = true;
[[gnu::always_inline, gnu::no_sanitize("address", "undefined")]] inline long
child_syscall(long n, long a = 0, long b = 0, long c = 0, long d = 0) {
  long ret;
  register long r10 asm("r10") = d;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
               : "rcx", "r11", "memory");
  return ret;
}
#elif defined(__aarch64__)
constexpr bool kRawSyscalls = true;
[[gnu::always_inline, gnu::no_sanitize("address", "undefined")]] inline long
child_syscall(long n, long a = 0, long b = 0, long c = 0, long d = 0) {
  register long x8 asm("x8") = n;
  register long x0 asm("x0") = a;
  register long x1 asm("x1") = b;
  register long x2 asm("x2") = c;
  register long x3 asm("x3") = d;
  asm volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
  return x0;
}
#else
constexpr bool kRawSyscalls = false; // the parent waits (CLONE_VFORK): errno may be written
inline long child_syscall(long n, long a = 0, long b = 0, long c = 0, long d = 0) {
  long r = ::syscall(n, a, b, c, d);
  return r < 0 ? -errno : r;
}
#endif

/// Whether the child can close the agent's descriptors with one system call (Linux 5.9), which
/// it needs to run beside the agent (glibc's closefrom falls back to a /proc walk that writes
/// errno and allocates).
bool has_close_range() {
  static const bool has = ::syscall(SYS_close_range, ~0U, ~0U, 0) == 0 || errno != ENOSYS;
  return has;
}

} // namespace

/// What the child of spawn_process() reads until it execs, prepared by the parent, and where it
/// says why it could not start. (The child may only make system calls: it shares the agent's
/// memory.)
struct ChildFrame {
  static constexpr std::size_t kStack = 64 * 1024;

  std::vector<std::string> strings; ///< argv, env, PATH candidates and cwd, owned
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::vector<const char*> programs; ///< where to look for argv[0], in order
  const char* cwd = nullptr;         ///< null: the agent's
  int stdout_fd = -1;
  int stderr_fd = -1;
  bool concurrent = false; ///< the parent does not wait for the exec
  std::unique_ptr<char[]> stack{new char[kStack]};
  std::string name;     ///< argv[0] as given, for the error
  std::string cwd_text; ///< for the error
  // Set by the child when it cannot start the program (it then exits with 127).
  volatile int error = 0;
  volatile bool in_cwd = false; ///< the error is entering cwd

  std::string why() const {
    if (error == 0)
      return {};
    if (in_cwd)
      return fmt::format("cannot enter working directory '{}': {}", cwd_text, errno_text(error));
    return fmt::format("cannot execute '{}': {}", name, errno_text(error));
  }
};

namespace {

/// The kernel's struct sigaction (rt_sigaction takes it, not libc's).
struct KernelSigaction {
  void* handler;
  unsigned long flags;
  void* restorer;
  std::uint64_t mask;
};

/// dup2 for the child: `from` onto `to` (with a copy's close-on-exec cleared when they are the
/// same descriptor, as posix_spawn_file_actions_adddup2 does). dup3, as not every
/// architecture has dup2.
[[gnu::no_sanitize("address", "undefined")]] void child_dup(int from, int to) {
  if (from == to)
    child_syscall(SYS_fcntl, from, F_SETFD, 0);
  else
    child_syscall(SYS_dup3, from, to, 0);
}

/// Between clone and exec, on its own stack, all signals blocked (as the parent left them): only
/// system calls that leave errno alone, nothing that touches the agent's state but the frame.
/// What it does is what posix_spawn with SpawnAttr and the file actions did.
[[gnu::no_sanitize("address", "undefined")]] int spawn_child(void* p) {
  auto* a = static_cast<ChildFrame*>(p);
  // Every disposition back to the default: ignored signals stay ignored across exec, and a
  // handler of the agent's must not run here once signals are unblocked. (Its own table: no
  // CLONE_SIGHAND.)
  KernelSigaction dfl{};
  for (long sig = 1; sig < 65; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP)
      child_syscall(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0,
                    sizeof(std::uint64_t));
  child_syscall(SYS_setsid);
  long null_fd = child_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>("/dev/null"), O_RDONLY);
  if (null_fd > 0) {
    child_dup(static_cast<int>(null_fd), 0);
    child_syscall(SYS_close, null_fd);
  }
  if (a->stdout_fd >= 0)
    child_dup(a->stdout_fd, 1);
  if (a->stderr_fd >= 0)
    child_dup(a->stderr_fd, 2);
  if (a->cwd != nullptr) {
    if (long r = child_syscall(SYS_chdir, reinterpret_cast<long>(a->cwd)); r < 0) {
      a->error = static_cast<int>(-r);
      a->in_cwd = true;
      child_syscall(SYS_exit_group, 127);
    }
  }
  // Nothing of the agent's leaks into jobs (Asio's sockets are not close-on-exec): a job holding
  // the hub link open would hide the agent's death from the hub.
  if (a->concurrent)
    child_syscall(SYS_close_range, 3, ~0U, 0);
  else
    ::closefrom(3); // (the parent waits: a /proc walk before Linux 5.9 may write errno)
  std::uint64_t none = 0;
  child_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&none), 0, sizeof none);
  // argv[0] along the agent's PATH, as execvp does: a directory where it is not (or cannot be
  // reached) is skipped; one where it is but may not be run is remembered.
  int error = ENOENT;
  bool denied = false;
  for (const char* program : a->programs) {
    error = static_cast<int>(-child_syscall(SYS_execve, reinterpret_cast<long>(program),
                                            reinterpret_cast<long>(a->argv.data()),
                                            reinterpret_cast<long>(a->envp.data())));
    if (error == EACCES)
      denied = true;
    else if (error != ENOENT && error != ENOTDIR && error != ESTALE && error != ENODEV &&
             error != ETIMEDOUT)
      break;
  }
  a->error = denied && (error == ENOENT || error == ENOTDIR) ? EACCES : error;
  child_syscall(SYS_exit_group, 127);
  return 127;
}

} // namespace

StartedChild::StartedChild(StartedChild&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), frame_(std::exchange(other.frame_, nullptr)) {}

StartedChild& StartedChild::operator=(StartedChild&& other) noexcept {
  if (this != &other) {
    StartedChild dropped(std::move(*this)); // (a frame it holds is left to its process)
    pid_ = std::exchange(other.pid_, -1);
    frame_ = std::exchange(other.frame_, nullptr);
  }
  return *this;
}

// A frame not released by reaped() may still be read by a process that has not exec'd yet: it
// is left to it, on a list that keeps it reachable (a job dropped unreaped, as at the agent's
// exit, is not a leak the sanitizers should report).
StartedChild::~StartedChild() {
  if (!frame_)
    return;
  static std::mutex mu;
  static auto* left = new std::vector<ChildFrame*>();
  std::lock_guard lock(mu);
  left->push_back(frame_);
}

std::string StartedChild::reaped() {
  std::unique_ptr<ChildFrame> frame(std::exchange(frame_, nullptr));
  return frame ? frame->why() : std::string();
}

Result<StartedChild> spawn_process(SpawnRequest req, int* pidfd) {
  if (pidfd)
    *pidfd = -1;
  auto frame = std::make_unique<ChildFrame>();
  auto& f = *frame;
  f.concurrent = kRawSyscalls && has_close_range();
  f.name = req.argv.at(0);
  f.cwd_text = req.cwd;
  // Every string the child reads, in one vector reserved up front: no reallocation may move
  // them once their addresses are taken (argv, cwd, then one program per PATH entry).
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/bin:/usr/bin";
  bool search = f.name.find('/') == std::string::npos;
  auto programs = search ? static_cast<std::size_t>(std::count(dirs.begin(), dirs.end(), ':')) + 1
                         : std::size_t{1};
  f.strings.reserve(req.argv.size() + req.env.size() + 1 + programs);
  const auto capacity = f.strings.capacity();
  for (auto& a : req.argv)
    f.argv.push_back(f.strings.emplace_back(std::move(a)).data());
  f.argv.push_back(nullptr);
  for (auto& e : req.env) // (moved: the environment is the bulk of what a job's start copies)
    f.envp.push_back(f.strings.emplace_back(std::move(e)).data());
  f.envp.push_back(nullptr);
  f.cwd = req.cwd.empty() ? nullptr : f.strings.emplace_back(req.cwd).c_str();
  if (!search) {
    f.programs.push_back(f.strings.emplace_back(f.name).c_str());
  } else {
    for (std::size_t at = 0; at <= dirs.size();) {
      std::size_t end = std::min(dirs.find(':', at), dirs.size());
      std::string_view dir = dirs.substr(at, end - at);
      f.programs.push_back(
          f.strings.emplace_back(dir.empty() ? f.name : fmt::format("{}/{}", dir, f.name)).c_str());
      at = end + 1;
    }
  }
  SORTIE_CHECK(f.strings.capacity() == capacity, "the child's strings were not moved");
  f.stdout_fd = req.stdout_fd;
  f.stderr_fd = req.stderr_fd;

  // No signal handler may run in the child before it has reset them: it starts with all
  // blocked (its own copy of the mask).
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  int flags = CLONE_VM | SIGCHLD | (f.concurrent ? 0 : CLONE_VFORK);
  char* stack_top = f.stack.get() + ChildFrame::kStack; // (new[] aligns to 16)
  int fd = -1;
  pid_t pid = ::clone(spawn_child, stack_top, flags | (pidfd ? CLONE_PIDFD : 0), &f, &fd);
  if (pid < 0 && pidfd && errno == EINVAL) // a kernel without CLONE_PIDFD (before 5.2)
    pid = ::clone(spawn_child, stack_top, flags, &f);
  int clone_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0)
    return make_error(ErrorCode::Io, fmt::format("cannot start '{}': clone: {}", f.name,
                                                 errno_text(clone_errno)));
  if (!f.concurrent && f.error != 0) { // (it has exec'd or exited: the frame is ours again)
    if (fd >= 0)
      ::close(fd);
    ::waitpid(pid, nullptr, 0); // it has exited, or is about to
    return make_error(f.in_cwd ? ErrorCode::NotFound
                      : f.error == ENOENT ? ErrorCode::NotFound
                                          : ErrorCode::PermissionDenied,
                      f.why());
  }
  if (pidfd)
    *pidfd = fd;
  StartedChild child;
  child.pid_ = pid;
  if (f.concurrent)
    child.frame_ = frame.release();
  return child;
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
  int table = ::memfd_create("sortie-keeper-jobs", MFD_CLOEXEC);
  if (table < 0)
    return make_error(ErrorCode::Io, fmt::format("memfd_create: {}", errno_text(errno)));
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
      if (fd != fds[0] && fd != table)
        ::close(fd);
    keeper_main(fds[0], table, agent, cgroup_dir);
  }
  ::close(fds[0]);
  ::fcntl(fds[1], F_SETFL, ::fcntl(fds[1], F_GETFL) | O_NONBLOCK);
  return Keeper{fds[1], table, pid};
}

/// One job in the table. `sid` is written last (release) and cleared first, so a reader that
/// sees it non-zero sees the tag written before it.
struct KeeperTable::Entry {
  std::atomic<std::int32_t> sid; ///< 0: free
  char tag[60];                  ///< NUL-terminated (tags are about 40 characters)
};
static_assert(std::atomic<std::int32_t>::is_always_lock_free); // shared between processes

KeeperTable::KeeperTable(int memfd) : fd_(memfd) { static_assert(sizeof(Entry) == 64); }

KeeperTable::~KeeperTable() {
  if (entries_)
    ::munmap(entries_, capacity_ * sizeof(Entry));
}

Result<void> KeeperTable::grow() {
  std::size_t capacity = std::max<std::size_t>(64, capacity_ * 2);
  if (::ftruncate(fd_, static_cast<off_t>(capacity * sizeof(Entry))) != 0)
    return make_error(ErrorCode::Io, fmt::format("ftruncate: {}", errno_text(errno)));
  void* view = ::mmap(nullptr, capacity * sizeof(Entry), PROT_READ | PROT_WRITE, MAP_SHARED,
                      fd_, 0);
  if (view == MAP_FAILED)
    return make_error(ErrorCode::Io, fmt::format("mmap: {}", errno_text(errno)));
  if (entries_) // (what it holds is in the memfd, which the new view maps too)
    ::munmap(entries_, capacity_ * sizeof(Entry));
  entries_ = static_cast<Entry*>(view);
  for (std::size_t i = capacity; i-- > capacity_;)
    free_.push_back(static_cast<std::uint32_t>(i));
  capacity_ = capacity;
  return ok_result();
}

Result<void> KeeperTable::add(const JobProcesses& job) {
  if (fd_ < 0 || at_.contains(job.sid))
    return ok_result();
  if (free_.empty())
    if (auto grown = grow(); !grown.ok())
      return make_error(ErrorCode::Io,
                        fmt::format("the keeper's table cannot hold job {} ({}): it is not "
                                    "killed if this agent dies",
                                    job.tag, grown.error().to_string()));
  std::uint32_t i = free_.back();
  free_.pop_back();
  Entry& e = entries_[i];
  std::size_t n = std::min(job.tag.size(), sizeof e.tag - 1);
  std::memcpy(e.tag, job.tag.data(), n);
  e.tag[n] = '\0';
  e.sid.store(job.sid, std::memory_order_release);
  at_.emplace(job.sid, i);
  return ok_result();
}

void KeeperTable::remove(pid_t sid) {
  auto it = at_.find(sid);
  if (it == at_.end())
    return;
  entries_[it->second].sid.store(0, std::memory_order_release);
  free_.push_back(it->second);
  at_.erase(it);
}

std::vector<JobProcesses> KeeperTable::read(int memfd) {
  std::vector<JobProcesses> out;
  struct stat st {};
  if (memfd < 0 || ::fstat(memfd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(Entry)))
    return out;
  std::size_t n = static_cast<std::size_t>(st.st_size) / sizeof(Entry);
  void* view = ::mmap(nullptr, n * sizeof(Entry), PROT_READ, MAP_SHARED, memfd, 0);
  if (view == MAP_FAILED)
    return out;
  const auto* entries = static_cast<const Entry*>(view);
  for (std::size_t i = 0; i < n; ++i) {
    pid_t sid = entries[i].sid.load(std::memory_order_acquire);
    if (sid <= 0)
      continue;
    std::string tag(entries[i].tag, ::strnlen(entries[i].tag, sizeof entries[i].tag));
    // An agent that is still running (its SIGSTOP on the way) may have reused the entry meanwhile.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (entries[i].sid.load(std::memory_order_relaxed) == sid)
      out.push_back({sid, std::move(tag)});
  }
  ::munmap(view, n * sizeof(Entry));
  return out;
}

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
