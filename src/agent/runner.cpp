// SPDX-License-Identifier: Apache-2.0
// A node's job attempts: launch queue, processes, output, reaping, timeouts and kills.
#include "agent/runner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_set>

#include <fmt/format.h>

#include "agent/process.hpp"
#include "common/clock.hpp"
#include "common/files.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "protocol/link.hpp"

namespace sortie::agent {
namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::int64_t kDrainMs = 500; // after the leader exits, how long pipes may stay open
constexpr std::int64_t kWatchAfterMs = 10; // a job's pipes join the event loop after this long

std::int64_t wall_ms() { return wall_now_ms(); }

/// The exported environment of a job whose submission brought none (shared).
std::shared_ptr<const pb::EnvList> no_exported_env() {
  static const auto none = std::make_shared<const pb::EnvList>();
  return none;
}

} // namespace

/// One attempt of a job on this node, from its assignment to its FINISHED event. ("Task" is
/// kept for one call to an engine.)
struct JobAttempt {
  std::uint64_t job = 0;
  std::uint32_t attempt = 0;
  pb::JobSpec spec;
  std::optional<std::int64_t> array_index;
  std::uint32_t slots = 1;
  pid_t pid = 0;
  StartedChild child; ///< what its leader reads until it execs; why it could not start
  bool started = false;
  bool exited = false;
  std::string start_error; ///< from the reaped leader: it never ran the program
  std::int64_t exited_ms = 0; ///< wall clock when its leader was reaped: the attempt's end
  int status = 0;
  rusage usage{};
  int streams_open = 0;
  std::int64_t offsets[2] = {0, 0};
  bool kill_requested = false;
  enum class Why { None, Cancel, Timeout } why = Why::None; ///< why it is being killed
  std::vector<std::uint32_t> gpus;
  std::string cgroup; ///< its memory cgroup, removed after it ended
  std::unique_ptr<asio::steady_timer> run_timer;
  std::unique_ptr<asio::steady_timer> kill_timer;
  std::unique_ptr<asio::steady_timer> drain_timer;
  std::shared_ptr<asio::posix::stream_descriptor> pipes[2]; ///< once watched by the loop
  int fds[2] = {-1, -1};  ///< read ends not yet handed to the loop
  bool watched = false;
  std::int64_t spawned_mono = 0;
  std::string tag; ///< SORTIE_JOB_TAG of its processes
  std::string hostfile; ///< an MPI job's: removed when it ends
  /// An MPI job's nodes (this one first) and its ranks on each; one entry: all here.
  std::vector<std::pair<std::string, std::uint32_t>> mpi_hosts;
  std::string rsh_args; ///< an ssh pilot's ssh options for mpiexec (OMPI_MCA_plm_rsh_args)
  /// Its submission's exported environment, under spec.env (shared by the attempts that came
  /// with the same one, as an array's do).
  std::shared_ptr<const pb::EnvList> base_env = no_exported_env();
  std::string engine_socket, engine_key; ///< an MPI engine job's across nodes (from the hub)
  std::string direct_socket, direct_key; ///< a local pilot's engine: the hub's own socket
  std::vector<std::string> engine_names; ///< variables its engine environment set (for -x)
  JobProcesses procs() const { return JobProcesses{pid, tag}; }
  ~JobAttempt() {
    if (!hostfile.empty())
      ::unlink(hostfile.c_str());
  }
};


/// Reaps children on a thread blocked in wait4(), handing each exit to a callback (which posts it
/// to the loop): one system call per exit, where a SIGCHLD handler costs a signal, a self-pipe
/// read and a second wait4. It reaps every child (the keeper and adopted orphans too).
class Reaper {
public:
  using OnExit = std::function<void(pid_t, int, rusage)>;
  void start(OnExit on_exit) {
    state_->on_exit = std::move(on_exit);
    // The thread shares the state, so it may outlive this object (it can be blocked in wait4
    // when the agent exits); after stop() it never calls back.
    std::thread([state = state_] { run(*state); }).detach();
  }
  /// A child was started: wakes the thread if it had none to wait for.
  void child_started() {
    std::lock_guard l(state_->mu);
    ++state_->generation;
    state_->cv.notify_one();
  }
  /// No more callbacks after this returns.
  void stop() {
    std::lock_guard l(state_->mu);
    state_->stop = true;
    state_->cv.notify_one();
  }
  ~Reaper() { stop(); }

private:
  struct State {
    OnExit on_exit;
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t generation = 0;
    bool stop = false;
  };

  static void run(State& st) {
    while (true) {
      std::uint64_t seen;
      {
        std::lock_guard l(st.mu);
        if (st.stop)
          return;
        seen = st.generation;
      }
      int status = 0;
      rusage ru{};
      pid_t pid = ::wait4(-1, &status, 0, &ru);
      if (pid > 0) {
        std::lock_guard l(st.mu);
        if (st.stop)
          return;
        st.on_exit(pid, status, ru);
        continue;
      }
      if (errno == EINTR)
        continue;
      // No children at all: wait until one is started.
      std::unique_lock l(st.mu);
      st.cv.wait(l, [&] { return st.stop || st.generation != seen; });
    }
  }

  std::shared_ptr<State> state_ = std::make_shared<State>();
};

namespace {

/// An event of the attempt, now.
pb::JobEvent event_of(const JobAttempt& t, pb::JobEvent::Kind kind) {
  pb::JobEvent ev;
  ev.set_job_id(t.job);
  ev.set_attempt(t.attempt);
  ev.set_kind(kind);
  ev.set_time_ms(wall_ms());
  if (t.pid > 0)
    ev.set_pid(t.pid);
  return ev;
}

/// mpiexec with the job's hostfile; across nodes, the job's variables go to the remote ranks
/// too (mpiexec passes on only its own unless told with -x).
std::vector<std::string> mpiexec_argv(const JobAttempt& t) {
  std::vector<std::string> argv = {"mpiexec", "--hostfile", t.hostfile, "-np",
                                   std::to_string(t.spec.mpi_ranks())};
  if (t.mpi_hosts.size() > 1) {
    std::vector<std::string> names;
    for (const auto& e : t.base_env->vars()) // exported shell functions are not for mpiexec
      if (!e.name().starts_with("BASH_FUNC_"))
        names.push_back(e.name());
    for (const auto& e : t.spec.env())
      names.push_back(e.name());
    for (const char* n : {"SORTIE_JOB_ID", "SORTIE_JOB_TAG", "SORTIE_ATTEMPT", "SORTIE_MPI_RANKS",
                          "SORTIE_MPI_LAYOUT", "OMP_NUM_THREADS"})
      names.emplace_back(n);
    names.insert(names.end(), t.engine_names.begin(), t.engine_names.end());
    for (const auto& n : names) {
      argv.push_back("-x");
      argv.push_back(n);
    }
  }
  return argv;
}

} // namespace

JobRunner::JobRunner(asio::io_context& io, RunnerConfig config, MemoryLimits& limits,
                     RunnerHooks hooks)
    : io_(io), config_(std::move(config)), limits_(limits), hooks_(std::move(hooks)),
      keeper_table_(config_.keeper_table_fd), watch_timer_(io), credit_wakeup_(io),
      reaper_(std::make_unique<Reaper>()) {}

JobRunner::~JobRunner() { reaper_->stop(); }

void JobRunner::start() {
  // A job's exit wakes the loop itself through the leader's pidfd (Linux 5.3): no thread to wake
  // first. Older kernels get a thread blocked in wait4 that posts each exit to the loop.
  int self = config_.pidfds ? static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)) : -1;
  pidfds_ = self >= 0;
  if (self >= 0)
    ::close(self);
  else
    start_reaper_thread();
  spawn_root(io_.get_executor(), "the agent's sweep of orphans", sweep_loop());
}

void JobRunner::stop_reaper() { reaper_->stop(); }

void JobRunner::set_credit(std::int64_t bytes) {
  budget_ = bytes;
  credit_wakeup_.cancel();
}

void JobRunner::add_credit(std::int64_t bytes) {
  budget_ += bytes;
  credit_wakeup_.cancel();
}

std::size_t JobRunner::held() const { return attempts_.size(); }

void JobRunner::describe(pb::AgentRegister& reg) const {
  for (const auto& [id, t] : attempts_) {
    auto* j = reg.add_jobs();
    j->set_job_id(id);
    j->set_attempt(t->attempt);
    j->set_started(t->started);
  }
}

void JobRunner::stop_all(std::int64_t grace_ms, const std::string& reason) {
  if (stopping_)
    return;
  stopping_ = true;
  credit_wakeup_.cancel();
  std::vector<std::uint64_t> ids;
  for (const auto& [id, t] : attempts_)
    ids.push_back(id);
  for (auto id : ids)
    cancel(id, 0, grace_ms, reason);
  if (attempts_.empty() && hooks_.all_ended)
    hooks_.all_ended();
}

void JobRunner::kill_all() {
  stopping_ = true;
  for (auto& [id, t] : attempts_)
    if (t->started && !t->exited)
      kill_job(t->procs());
  reaper_->stop();
}

void JobRunner::assign(pb::Assignment& a) {
  if (auto old = attempts_.find(a.job_id()); old != attempts_.end()) {
    // The same attempt again (after a reconnect) is a duplicate. A new attempt while an old
    // one is still being killed (the hub ran it again after losing another node of it)
    // waits until the old one is gone.
    if (old->second->attempt != a.attempt())
      next_attempts_[a.job_id()] = a;
    return;
  }
  auto t = std::make_unique<JobAttempt>();
  t->job = a.job_id();
  t->attempt = a.attempt();
  if (!t->spec.ParseFromString(a.spec())) {
    emit_finished(*t, "the job's spec could not be decoded");
    return;
  }
  if (a.has_array_index())
    t->array_index = a.array_index();
  t->gpus.assign(a.gpus().begin(), a.gpus().end());
  t->slots = std::max<std::uint32_t>(1, t->spec.slots()) *
             std::max<std::uint32_t>(1, t->spec.mpi_ranks());
  if (a.slots() > 0) // its share of a job across nodes
    t->slots = a.slots();
  t->rsh_args = a.mpi_rsh_args();
  t->engine_socket = a.engine_socket();
  t->engine_key = a.engine_key();
  t->direct_socket = a.engine_direct_socket();
  t->direct_key = a.engine_direct_key();
  if (!a.base_env().empty()) {
    // An array's jobs (and a batch's) bring the same bytes: parsed once.
    if (a.base_env() != parsed_env_bytes_) {
      auto env = std::make_shared<pb::EnvList>();
      if (!env->ParseFromString(a.base_env())) {
        log::warn("job {}: its exported environment does not parse; started without it",
                  a.job_id());
        env->Clear();
      }
      parsed_env_bytes_ = a.base_env();
      parsed_env_ = std::move(env);
    }
    t->base_env = parsed_env_;
  }
  for (const auto& h : a.mpi_hosts()) {
    // Nodes on one host (several agents there) are one hostfile line: mpiexec refuses two.
    std::string host = h.address().empty() ? address() : h.address();
    auto same = std::find_if(t->mpi_hosts.begin(), t->mpi_hosts.end(),
                             [&](const auto& e) { return e.first == host; });
    if (same != t->mpi_hosts.end())
      same->second += h.ranks();
    else
      t->mpi_hosts.emplace_back(std::move(host), h.ranks());
  }
  if (t->spec.mpi_ranks() > 0 && t->mpi_hosts.empty())
    t->mpi_hosts.emplace_back(address(), t->spec.mpi_ranks());
  launch_queue_.push_back(t->job);
  attempts_.emplace(t->job, std::move(t));
}

void JobRunner::start_queued() {
  while (!launch_queue_.empty() && !stopping_) {
    auto it = attempts_.find(launch_queue_.front());
    if (it == attempts_.end()) {
      launch_queue_.pop_front();
      continue;
    }
    JobAttempt& t = *it->second;
    if (used_slots_ + t.slots > config_.slots && used_slots_ > 0)
      break;
    launch_queue_.pop_front();
    launch(t);
  }
}

/// Orphans of finished jobs (reparented to us, the subreaper) are killed here, once a second,
/// rather than by a /proc lookup after every job.
Awaitable<void> JobRunner::sweep_loop() {
  asio::steady_timer timer(io_);
  while (!stopping_) {
    timer.expires_after(std::chrono::seconds(1));
    co_await timer.async_wait(use_nothrow);
    std::vector<pid_t> known;
    for (const auto& [pid, job] : by_pid_)
      known.push_back(pid);
    std::unordered_set<std::string> live;
    for (const auto& [id, t] : attempts_)
      if (t->started && !t->exited)
        live.insert(t->tag);
    for (const auto& [pid, tag] : adopted_children(known))
      if (!tag.empty() && !live.contains(tag) && tag.rfind(config_.nonce + ".", 0) == 0)
        kill_job(JobProcesses{pid, tag});
    std::erase_if(pending_cgroups_, [this](const std::string& dir) { return limits_.release(dir); });
    reap_strays();
  }
}

std::vector<std::string> JobRunner::job_env(JobAttempt& t) {
  // The node's environment, then what the submitter exported, then the job's own: merged once
  // for the jobs that share them (an array's), with where each name is.
  std::string own;
  for (const auto& e : t.spec.env()) {
    own += e.name();
    own += '\0';
    own += e.value();
    own += '\0';
  }
  if (!merged_env_ || merged_env_->exported != t.base_env || merged_env_->own != own) {
    auto m = std::make_unique<MergedEnv>();
    m->exported = t.base_env;
    m->own = std::move(own);
    m->env = config_.base_env;
    for (std::size_t i = 0; i < m->env.size(); ++i) // a name's first entry is the one set
      m->at.emplace(m->env[i].substr(0, m->env[i].find('=')), i);
    auto put = [&m](const std::string& name, const std::string& value) {
      auto [it, added] = m->at.emplace(name, m->env.size());
      if (added)
        m->env.push_back(name + "=" + value);
      else
        m->env[it->second] = name + "=" + value;
    };
    for (const auto& e : t.base_env->vars())
      put(e.name(), e.value());
    for (const auto& e : t.spec.env())
      put(e.name(), e.value());
    merged_env_ = std::move(m);
  }
  std::vector<std::string> env = merged_env_->env;
  std::vector<std::pair<std::string, std::size_t>> added; // this job's names beyond those
  auto find = [&](const std::string& name) -> std::optional<std::size_t> {
    if (auto it = merged_env_->at.find(name); it != merged_env_->at.end())
      return it->second;
    for (const auto& [n, i] : added)
      if (n == name)
        return i;
    return std::nullopt;
  };
  auto set = [&](const std::string& name, const std::string& value) {
    if (auto i = find(name)) {
      env[*i] = name + "=" + value;
    } else {
      added.emplace_back(name, env.size());
      env.push_back(name + "=" + value);
    }
  };
  auto set_default = [&](const std::string& name, const std::string& value) {
    if (!find(name))
      set(name, value);
  };
  set("SORTIE_JOB_ID", std::to_string(t.job));
  set("SORTIE_JOB_TAG", t.tag);
  set("SORTIE_ATTEMPT", std::to_string(t.attempt));
  set("SORTIE_NODE", config_.node_name);
  set("SORTIE_SLOTS", std::to_string(t.slots));
  // Threads per process: an MPI rank gets its share.
  set("OMP_NUM_THREADS", std::to_string(std::max<std::uint32_t>(1, t.spec.slots())));
  if (t.spec.mpi_ranks() > 0) {
    set("SORTIE_MPI_RANKS", std::to_string(t.spec.mpi_ranks()));
    set("SORTIE_MPI_HOSTFILE", t.hostfile);
    std::string layout;
    for (const auto& [host, ranks] : t.mpi_hosts)
      layout += fmt::format("{}{}:{}", layout.empty() ? "" : ",", host, ranks);
    set("SORTIE_MPI_LAYOUT", layout);
    if (!t.rsh_args.empty()) // an ssh pilot's options, for mpiexec's ssh to the other nodes
      set_default("OMPI_MCA_plm_rsh_args", t.rsh_args);
    if (std::getenv("SLURM_JOB_ID") != nullptr) {
      // In a Slurm pilot: the hostfile, not Slurm's view of the pilot (one task per node),
      // says where the ranks go; mpiexec starts its daemons on the other nodes with srun, in a
      // step beside the agents' own (which hold every CPU), so it must overlap them.
      set_default("OMPI_MCA_ras", "^slurm");
      set_default("SLURM_OVERLAP", "1");
    }
    if (::geteuid() == 0) { // OpenMPI refuses root unless told twice
      set("OMPI_ALLOW_RUN_AS_ROOT", "1");
      set("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
  }
  if (t.array_index)
    set("SORTIE_ARRAY_INDEX", std::to_string(*t.array_index));
  if (t.spec.kind() == "engine" && hooks_.engine_env)
    for (const auto& e : hooks_.engine_env(t.job, t.attempt, t.engine_socket, t.engine_key)) {
      auto eq = e.find('=');
      set(e.substr(0, eq), e.substr(eq + 1));
      t.engine_names.push_back(e.substr(0, eq));
    }
  if (t.spec.kind() == "engine" && !t.direct_socket.empty()) { // tried first (05-tasks.md §5.9)
    set("SORTIE_ENGINE_DIRECT_SOCKET", t.direct_socket);
    set("SORTIE_ENGINE_DIRECT_KEY", t.direct_key);
  }
  // The GPUs it was given, and no others on a node that has some.
  if (!t.gpus.empty() || !config_.gpus.empty()) {
    std::string list;
    for (auto g : t.gpus)
      list += (list.empty() ? "" : ",") + std::to_string(g);
    set("CUDA_VISIBLE_DEVICES", list);
  }
  return env;
}

void JobRunner::launch(JobAttempt& t) {
  t.tag = fmt::format("{}.{}.{}", config_.nonce, t.job, t.attempt);
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    emit_finished(t, fmt::format("cannot create a pipe: {}", errno_text(errno)));
    return erase(t.job);
  }
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    emit_finished(t, fmt::format("cannot create a pipe: {}", errno_text(errno)));
    return erase(t.job);
  }
  SpawnRequest req;
  if (t.spec.mpi_ranks() > 0) {
    // mpiexec over a hostfile of the slots this job holds, here and on its other nodes.
    t.hostfile = (std::filesystem::temp_directory_path() /
                  fmt::format("sortie-mpi-{}.hosts", t.tag))
                     .string();
    std::string hosts;
    for (const auto& [host, ranks] : t.mpi_hosts)
      hosts += fmt::format("{} slots={}\n", host, ranks);
    if (auto w = write_file_atomic(t.hostfile, hosts, 0600); !w.ok()) {
      ::close(out[0]);
      ::close(out[1]);
      ::close(err[0]);
      ::close(err[1]);
      emit_finished(t, w.error().message, 127);
      return erase(t.job);
    }
  }
  req.env = job_env(t); // (before mpiexec's argv: which engine variables to pass on)
  if (t.spec.mpi_ranks() > 0)
    req.argv = mpiexec_argv(t);
  req.argv.insert(req.argv.end(), t.spec.argv().begin(), t.spec.argv().end());
  req.cwd = t.spec.cwd();
  req.stdout_fd = out[1];
  req.stderr_fd = err[1];
  int pidfd = -1;
  auto child = spawn_process(std::move(req), pidfds_ ? &pidfd : nullptr);
  ::close(out[1]);
  ::close(err[1]);
  if (!child.ok()) {
    ::close(out[0]);
    ::close(err[0]);
    emit_finished(t, child.error().message, 127);
    return erase(t.job);
  }
  t.child = std::move(*child);
  t.pid = t.child.pid();
  t.started = true;
  if (!watch_exit(t.pid, pidfd)) {
    start_reaper_thread();
    reaper_->child_started();
  }
  std::string limited_by;
  if (t.spec.memory_bytes() > 0 && limits_.mode() != LimitMode::None) {
    auto handle = limits_.apply(t.pid, fmt::format("job-{}-{}", t.job, t.attempt),
                                t.spec.memory_bytes());
    if (handle.ok()) {
      t.cgroup = *handle;
      limited_by = limit_mode_name(limits_.mode());
    } else {
      log::warn("job {}: {}", t.job, handle.error().to_string());
    }
  }
  if (t.spec.run_timeout_ms() > 0) {
    t.run_timer = std::make_unique<asio::steady_timer>(io_);
    t.run_timer->expires_after(std::chrono::milliseconds(t.spec.run_timeout_ms()));
    t.run_timer->async_wait([this, job = t.job](error_code ec) {
      if (ec)
        return;
      auto it = attempts_.find(job);
      if (it == attempts_.end() || it->second->exited)
        return;
      it->second->why = JobAttempt::Why::Timeout;
      cancel(job, 0, config_.kill_grace_ms, "run timeout");
    });
  }
  used_slots_ += t.slots;
  by_pid_[t.pid] = t.job;
  if (auto kept = keeper_table_.add(t.procs()); !kept.ok())
    log::error("{}", kept.error().to_string());
  pb::JobEvent ev = event_of(t, pb::JobEvent::STARTED);
  ev.set_limits(limited_by);
  hooks_.event(std::move(ev), /*urgent=*/false);
  t.streams_open = 2;
  t.fds[0] = out[0];
  t.fds[1] = err[0];
  t.spawned_mono = net::steady_ms();
  // Most short jobs end before they are worth watching: their pipes are read once, at exit.
  unwatched_.push_back(t.job);
  arm_watch_timer();
}

void JobRunner::arm_watch_timer() {
  if (watch_armed_ || unwatched_.empty())
    return;
  watch_armed_ = true;
  watch_timer_.expires_after(std::chrono::milliseconds(kWatchAfterMs));
  watch_timer_.async_wait([this](error_code ec) {
    watch_armed_ = false;
    if (ec)
      return;
    auto now = net::steady_ms();
    while (!unwatched_.empty()) {
      auto it = attempts_.find(unwatched_.front());
      if (it != attempts_.end() && !it->second->watched && !it->second->exited) {
        if (now - it->second->spawned_mono < kWatchAfterMs)
          break; // the rest started later still
        watch(*it->second);
      }
      unwatched_.pop_front();
    }
    arm_watch_timer();
  });
}

/// Hands the job's pipes to the event loop: its output now streams as it is written.
void JobRunner::watch(JobAttempt& t) {
  if (t.watched)
    return;
  t.watched = true;
  for (int s = 0; s < 2; ++s)
    if (t.fds[s] >= 0) {
      t.pipes[s] = std::make_shared<asio::posix::stream_descriptor>(io_, t.fds[s]);
      t.fds[s] = -1;
      spawn_root(io_.get_executor(), fmt::format("reading job {}'s output", t.job),
                 read_stream(t.job, s, t.pipes[s]));
    }
}

/// After the leader exited: reads what its unwatched pipes hold, one poll() for both. Falls

/// back to watching when a pipe is still open elsewhere or output credit is short.
void JobRunner::drain_unwatched(JobAttempt& t) {
  while (!t.watched && (t.fds[0] >= 0 || t.fds[1] >= 0)) {
    pollfd p[2];
    int n = 0, which[2];
    for (int s = 0; s < 2; ++s)
      if (t.fds[s] >= 0) {
        p[n] = {t.fds[s], POLLIN, 0};
        which[n++] = s;
      }
    if (::poll(p, static_cast<nfds_t>(n), 0) <= 0) {
      watch(t); // empty but still open: someone else holds it
      return;
    }
    for (int i = 0; i < n; ++i) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      int s = which[i];
      if (budget_ < static_cast<std::int64_t>(kReadChunk)) {
        watch(t); // the loop's readers wait for credit
        return;
      }
      // Readable or hung up: this read does not block. (Most reads find the end of an empty
      // stream: the buffer is the runner's, not a fresh 64 KiB per read.)
      if (!drain_buffer_)
        drain_buffer_ = std::make_unique<char[]>(kReadChunk);
      ssize_t got;
      do
        got = ::read(t.fds[s], drain_buffer_.get(), kReadChunk);
      while (got < 0 && errno == EINTR);
      if (got <= 0) {
        ::close(t.fds[s]);
        t.fds[s] = -1;
        --t.streams_open;
        continue;
      }
      emit_output(t, s, std::string(drain_buffer_.get(), static_cast<std::size_t>(got)));
    }
  }
}

void JobRunner::emit_output(JobAttempt& t, int stream, std::string data) {
  pb::OutputChunk c;
  c.set_job_id(t.job);
  c.set_attempt(t.attempt);
  c.set_stream(stream == 0 ? pb::STREAM_STDOUT : pb::STREAM_STDERR);
  c.set_offset(t.offsets[stream]);
  auto n = static_cast<std::int64_t>(data.size());
  c.set_data(std::move(data));
  t.offsets[stream] += n;
  budget_ -= n;
  hooks_.output(std::move(c));
}

Awaitable<void> JobRunner::read_stream(std::uint64_t job,
                            int stream,
                            std::shared_ptr<asio::posix::stream_descriptor> pipe) {
  std::string buf;
  while (true) {
    while (budget_ <= 0 && !stopping_) {
      credit_wakeup_.expires_at(asio::steady_timer::time_point::max());
      co_await credit_wakeup_.async_wait(use_nothrow);
    }
    std::size_t want = stopping_ ? kReadChunk
                                 : std::min<std::size_t>(kReadChunk, static_cast<std::size_t>(budget_));
    buf.resize(want);
    // Wait for readiness, then read: a fresh pipe is empty, so reading first (what
    // async_read_some does) would only cost a failed system call per stream.
    auto [ec] = co_await pipe->async_wait(asio::posix::descriptor_base::wait_read, use_nothrow);
    auto it = attempts_.find(job);
    if (it == attempts_.end())
      co_return;
    JobAttempt& t = *it->second;
    ssize_t got = 0;
    if (!ec) {
      do
        got = ::read(pipe->native_handle(), buf.data(), want);
      while (got < 0 && errno == EINTR);
      if (got < 0 && errno == EAGAIN)
        continue;
    }
    auto n = static_cast<std::size_t>(std::max<ssize_t>(got, 0));
    if (ec || got <= 0) {
      error_code ignored;
      pipe->close(ignored);
      --t.streams_open;
      maybe_finish(t);
      co_return;
    }
    emit_output(t, stream, std::string(buf.data(), n));
  }
}

/// A child exited (from the reaper thread, posted to the loop).
void JobRunner::reap_strays() {
  if (!pidfds_ || reaper_started_)
    return; // the reaper thread reaps every child
  for (pid_t child : own_children())
    if (!by_pid_.contains(child))
      ::waitpid(child, nullptr, WNOHANG);
}

void JobRunner::start_reaper_thread() {
  if (reaper_started_)
    return;
  reaper_started_ = true;
  reaper_->start([this](pid_t pid, int status, rusage ru) {
    asio::post(io_, [this, pid, status, ru] { on_child_exit(pid, status, ru); });
  });
}

bool JobRunner::watch_exit(pid_t pid, int fd) {
  if (!pidfds_)
    return false;
  if (fd < 0) // (spawn_process gives one where clone can: Linux 5.2)
    fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    // Out of descriptors: the reaper thread takes this one. Each exit is still reaped once, by
    // one or the other, and reported once.
    log::warn("job process {}: no pidfd ({}); waiting for it on a thread", pid, errno_text(errno));
    return false;
  }
  auto d = std::make_shared<asio::posix::stream_descriptor>(io_, fd);
  d->async_wait(asio::posix::descriptor_base::wait_read,
                [this, pid, d](error_code ec) mutable {
                  if (!ec)
                    reap(pid, std::move(d));
                });
  return true;
}

void JobRunner::reap(pid_t pid, std::shared_ptr<asio::posix::stream_descriptor> pidfd) {
  int status = 0;
  rusage ru{};
  pid_t r;
  do
    r = ::wait4(pid, &status, WNOHANG, &ru);
  while (r < 0 && errno == EINTR);
  if (r == 0) { // not yet (readable only once it has exited): wait again
    pidfd->async_wait(asio::posix::descriptor_base::wait_read,
                      [this, pid, pidfd](error_code ec) {
                        if (!ec)
                          reap(pid, pidfd);
                      });
    return;
  }
  if (r == pid)
    on_child_exit(pid, status, ru);
  // ECHILD: the reaper thread (started for a child that got no pidfd) reaped it and posts it.
}

void JobRunner::on_child_exit(pid_t pid, int status, const rusage& ru) {
  auto it = by_pid_.find(pid);
  if (it == by_pid_.end())
    return; // an orphan of some job, reparented to us (subreaper), or the keeper
  std::uint64_t job = it->second;
  by_pid_.erase(it);
  auto t_it = attempts_.find(job);
  if (t_it == attempts_.end())
    return;
  JobAttempt& t = *t_it->second;
  t.exited = true;
  t.exited_ms = wall_ms();
  t.status = status;
  t.usage = ru;
  t.start_error = t.child.reaped();
  used_slots_ -= std::min(used_slots_, t.slots);
  // The freed slot's next job starts before anything else is done for this one (its group,
  // its pipes, its event): a short job's slot would otherwise idle through all of that.
  start_queued();
  // The job is over when its leader exits: what it left behind in its process group goes
  // too (as Slurm does at the end of a step). Stragglers elsewhere are found below.
  // What the job left running outside its group is found by the periodic sweep.
  if (t.kill_requested) {
    kill_job(t.procs()); // returns once every process of it is dead (zombies at most)
    reap_strays();       // so that none is even a zombie when its end is reported
  } else {
    ::kill(-t.pid, SIGKILL);
  }
  keeper_table_.remove(t.pid);
  if (t.kill_timer)
    t.kill_timer->cancel();
  if (t.run_timer)
    t.run_timer->cancel();
  drain_unwatched(t);
  if (t.streams_open > 0) {
    // Something outside the group still holds the pipes: give it a moment, then kill the
    // whole tree so the pipes close.
    t.drain_timer = std::make_unique<asio::steady_timer>(io_);
    t.drain_timer->expires_after(std::chrono::milliseconds(kDrainMs));
    t.drain_timer->async_wait([this, job](error_code e) {
      if (e)
        return;
      if (auto i = attempts_.find(job); i != attempts_.end()) {
        kill_job(i->second->procs());
        for (auto& p : i->second->pipes)
          if (p) {
            error_code ignored;
            p->cancel(ignored);
          }
      }
    });
  }
  maybe_finish(t);
}

void JobRunner::maybe_finish(JobAttempt& t) {
  if (!t.exited || t.streams_open > 0)
    return;
  pb::JobEvent ev = event_of(t, pb::JobEvent::FINISHED);
  ev.set_time_ms(t.exited_ms); // (its pipes may have closed later)
  ev.set_error(t.start_error);
  if (WIFEXITED(t.status))
    ev.set_exit_code(WEXITSTATUS(t.status));
  else if (WIFSIGNALED(t.status))
    ev.set_signal(WTERMSIG(t.status));
  ev.set_killed(t.kill_requested && t.why != JobAttempt::Why::Timeout);
  ev.set_timed_out(t.why == JobAttempt::Why::Timeout);
  ev.set_memory_exceeded(!t.cgroup.empty() && limits_.oom_killed(t.cgroup));
  if (!t.cgroup.empty() && !limits_.release(t.cgroup))
    pending_cgroups_.push_back(t.cgroup); // stragglers still inside: the sweep retries
  auto* u = ev.mutable_usage();
  u->set_user_cpu_us(t.usage.ru_utime.tv_sec * 1'000'000 + t.usage.ru_utime.tv_usec);
  u->set_system_cpu_us(t.usage.ru_stime.tv_sec * 1'000'000 + t.usage.ru_stime.tv_usec);
  u->set_max_rss_kib(t.usage.ru_maxrss);
  hooks_.event(std::move(ev), true);
  erase(t.job);
}

void JobRunner::emit_finished(const JobAttempt& t, const std::string& error,
                              std::optional<int> exit_code) {
  pb::JobEvent ev = event_of(t, pb::JobEvent::FINISHED);
  ev.set_error(error);
  if (exit_code)
    ev.set_exit_code(*exit_code);
  ev.set_killed(t.kill_requested);
  hooks_.event(std::move(ev), true);
}

void JobRunner::erase(std::uint64_t job) {
  if (auto it = attempts_.find(job); it != attempts_.end())
    for (int& fd : it->second->fds)
      if (fd >= 0) {
        ::close(fd);
        fd = -1;
      }
  attempts_.erase(job);
  if (auto next = next_attempts_.find(job); next != next_attempts_.end()) {
    asio::post(io_, [this, a = std::move(next->second)]() mutable {
      if (!stopping_) {
        assign(a);
        start_queued();
      }
    });
    next_attempts_.erase(next);
  }
  if (stopping_ && attempts_.empty() && hooks_.all_ended)
    hooks_.all_ended();
}

void JobRunner::cancel(std::uint64_t job, std::uint32_t attempt, std::int64_t grace_ms,
                       const std::string& reason) {
  auto it = attempts_.find(job);
  if (it == attempts_.end() || (attempt != 0 && it->second->attempt != attempt))
    return;
  JobAttempt& t = *it->second;
  if (t.kill_requested && grace_ms > 0)
    return;
  t.kill_requested = true;
  if (t.why == JobAttempt::Why::None)
    t.why = JobAttempt::Why::Cancel;
  if (!t.started) {
    std::erase(launch_queue_, job);
    emit_finished(t, reason);
    return erase(job);
  }
  if (t.exited)
    return;
  log::info("killing job {} ({})", job, reason);
  if (grace_ms <= 0) {
    kill_job(t.procs());
    return;
  }
  signal_job(t.procs(), SIGTERM);
  t.kill_timer = std::make_unique<asio::steady_timer>(io_);
  t.kill_timer->expires_after(std::chrono::milliseconds(grace_ms));
  t.kill_timer->async_wait([this, job](error_code ec) {
    if (ec)
      return;
    if (auto i = attempts_.find(job); i != attempts_.end() && !i->second->exited)
      kill_job(i->second->procs());
  });
}

} // namespace sortie::agent
