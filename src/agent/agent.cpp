// SPDX-License-Identifier: Apache-2.0
// The agent: registers with the hub, runs the job attempts it is given (launch queue, process trees,
// output, timeouts), keeps its lease with its keeper, and reconnects after a drop.
#include "agent/agent.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <functional>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <fstream>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <variant>

#include <fmt/format.h>

#include "agent/limits.hpp"
#include "agent/process.hpp"
#include "common/clock.hpp"
#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "protocol/auth.hpp"
#include "protocol/handshake.hpp"
#include "protocol/link.hpp"
#include "protocol/roles.hpp"

extern char** environ;

namespace sortie::agent {
namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
constexpr std::int64_t kDrainMs = 500; // after the leader exits, how long pipes may stay open
constexpr auto kLazyFlush = std::chrono::milliseconds(10);
constexpr std::int64_t kWatchAfterMs = 10; // a job's pipes join the event loop after this long

std::int64_t wall_ms() { return wall_now_ms(); }

std::string host_name() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

/// One attempt of a job on this node, from its assignment to its FINISHED event. ("Task" is
/// kept for one call to an engine.)
struct JobAttempt {
  std::uint64_t job = 0;
  std::uint32_t attempt = 0;
  pb::JobSpec spec;
  std::optional<std::int64_t> array_index;
  std::uint32_t slots = 1;
  pid_t pid = 0;
  bool started = false;
  bool exited = false;
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
  pb::EnvList base_env; ///< its submission's exported environment, under spec.env
  JobProcesses procs() const { return JobProcesses{pid, tag}; }
  ~JobAttempt() {
    if (!hostfile.empty())
      ::unlink(hostfile.c_str());
  }
};

using OutItem = std::variant<pb::JobEvent, pb::OutputChunk>;

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

class Agent {
public:
  Agent(asio::io_context& io, AgentOptions options, Keeper keeper, MemoryLimits limits)
      : io_(io), options_(std::move(options)), keeper_fd_(keeper.fd), keeper_pid_(keeper.pid),
        limits_(std::move(limits)),
        lazy_flush_(io),
        watch_timer_(io), credit_wakeup_(io),
        signals_(io, SIGTERM, SIGINT) {
    for (char** e = environ; *e; ++e)
      base_env_.emplace_back(*e);
    hostname_ = host_name();
    nonce_ = protocol::to_hex(protocol::random_bytes(8));
    if (options_.node_name.empty())
      options_.node_name = hostname_;
    cores_ = static_cast<std::uint32_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
    if (options_.slots == 0)
      options_.slots = cores_;
    if (!options_.gpus_declared)
      options_.gpus = detect_gpus();
    if (options_.memory == 0)
      options_.memory = total_memory_bytes();
    log::info("node {}: {} slots, {} cores, {} of memory, {} GPUs; memory limits by {}",
              options_.node_name, options_.slots, cores_, format_size_bytes(options_.memory),
              options_.gpus.size(),
              limits_.mode() == LimitMode::None ? "nothing" : limit_mode_name(limits_.mode()));
  }

  void start() {
    watch_signals();
    reaper_.start([this](pid_t pid, int status, rusage ru) {
      asio::post(io_, [this, pid, status, ru] { on_child_exit(pid, status, ru); });
    });
    auto ex = io_.get_executor();
    spawn_root(ex, "the agent's sweep of orphans", sweep_loop());
    spawn_root(ex, "the agent's lease loop", lease_loop());
    spawn_root(ex, "the agent's connection loop", connection_loop(), [this](bool failed) {
      if (failed) {
        exit_code_ = 1;
        kill_everything_and_stop();
      }
    });
  }

  int exit_code() const { return exit_code_; }

private:
  // ---------------------------------------------------------------------------------------
  // Connection

  Awaitable<void> connection_loop() {
    if (options_.stdio_in >= 0) {
      // One link, over ssh: when it ends, so does the agent (the hub cannot reach us again).
      bool registered = co_await connect_once();
      if (!stopping_) {
        log::error("the link to the hub ended ({}); killing {} jobs and exiting",
                   last_error_.to_string(), attempts_.size());
        exit_code_ = registered ? 2 : 3;
        kill_everything_and_stop();
      }
      co_return;
    }
    std::int64_t give_up_at = net::steady_ms() + options_.connect_window_ms;
    std::int64_t backoff = 100;
    while (!stopping_) {
      bool was_registered = co_await connect_once();
      if (stopping_)
        break;
      if (was_registered) {
        give_up_at = net::steady_ms() + reconnect_window_ms_;
        backoff = 100;
        log::warn("lost the hub ({}); jobs keep running; reconnecting for up to {}",
                  last_error_.to_string(), format_duration_ms(reconnect_window_ms_));
      }
      if (net::steady_ms() >= give_up_at) {
        log::error("could not reach the hub in time ({}); killing {} jobs and exiting",
                   last_error_.to_string(), attempts_.size());
        exit_code_ = 2;
        kill_everything_and_stop();
        co_return;
      }
      asio::steady_timer t(io_);
      t.expires_after(std::chrono::milliseconds(backoff));
      co_await t.async_wait(use_nothrow);
      backoff = std::min<std::int64_t>(backoff * 2, 2000);
    }
  }

  /// The transport to the hub and the key that authenticates it: the ssh session we were
  /// started on, or the hub's socket named in its hub.json.
  Awaitable<Result<std::pair<std::unique_ptr<net::ByteStream>, std::string>>> open_transport() {
    using Out = std::pair<std::unique_ptr<net::ByteStream>, std::string>;
    if (options_.stdio_in >= 0) {
      auto stream = net::make_pipe_stream(io_.get_executor(), options_.stdio_in, options_.stdio_out,
                                          "stdio");
      options_.stdio_in = options_.stdio_out = -1; // the stream owns them now
      co_return Out{std::move(stream), options_.stdio_key};
    }
    auto hf = read_hub_file(options_.hub_file);
    if (!hf.ok())
      co_return hf.error();
    auto key = token_key(*hf);
    if (!key.ok())
      co_return key.error();
    Result<std::unique_ptr<net::ByteStream>> stream = make_error(ErrorCode::Unavailable, "");
    if (!hf->socket.empty() && ::access(hf->socket.c_str(), F_OK) == 0)
      stream = co_await net::connect_unix(io_.get_executor(), hf->socket);
    if (!stream.ok())
      stream = co_await net::connect_tcp(io_.get_executor(), hf->host, hf->port,
                                       hf->tls_fingerprint);
    if (!stream.ok())
      co_return stream.error();
    co_return Out{std::move(*stream), *key};
  }

  /// One connection: connect, handshake, register, serve. True if it got registered.
  Awaitable<bool> connect_once() {
    auto transport = co_await open_transport();
    if (!transport.ok()) {
      last_error_ = transport.error();
      co_return false;
    }
    auto stream = std::move(transport->first);
    const std::string key = transport->second;
    auto link = std::make_shared<net::Link>(io_.get_executor(), std::move(stream));
    link->start();
    auto welcome = co_await net::connect_handshake(link, key, pb::ROLE_AGENT,
                                                   "agent " + options_.node_name, 10'000);
    if (!welcome.ok()) {
      last_error_ = welcome.error();
      if (welcome.error().code == ErrorCode::PermissionDenied)
        log::error("{}", welcome.error().to_string());
      co_return false;
    }
    std::int64_t interval = welcome->heartbeat_interval_ms() ? welcome->heartbeat_interval_ms() : 5000;
    link->start_heartbeat(interval, 4 * interval);
    std::int64_t register_sent_ms = net::steady_ms();
    link->send(make_register());

    auto reply = co_await link->receive();
    if (!reply.ok()) {
      last_error_ = reply.error();
      co_return false;
    }
    if (reply->has_error()) {
      last_error_ = net::error_from_pb(reply->error());
      log::error("the hub refused this agent: {}", last_error_.to_string());
      if (last_error_.code == ErrorCode::InvalidArgument || last_error_.code == ErrorCode::AlreadyExists) {
        exit_code_ = 3;
        kill_everything_and_stop();
      }
      co_return false;
    }
    if (!reply->has_agent_registered()) {
      last_error_ = make_error(ErrorCode::InvalidArgument,
                               fmt::format("protocol error: expected agent_registered, got {}",
                                           protocol::body_name(*reply)));
      link->close(last_error_);
      co_return false;
    }
    const auto& reg = reply->agent_registered();
    bool first = agent_id_ == 0;
    agent_id_ = reg.agent_id();
    if (!reg.session_key().empty())
      session_key_ = reg.session_key();
    epoch_ = reg.epoch();
    reconnect_window_ms_ = reg.reconnect_window_ms() > 0 ? reg.reconnect_window_ms() : 60'000;
    if (reg.kill_grace_ms() > 0)
      kill_grace_ms_ = reg.kill_grace_ms();
    lease_ms_ = reg.lease_ms();
    heartbeat_ms_ = interval;
    // The first lease, before any job can start: the hub heard our registration, so it waits at
    // least a lease from when we sent it. Heartbeat echoes renew it from here (lease_loop).
    if (lease_ms_ > 0)
      keeper_write(keeper_fd_, keeper_lease(register_sent_ms + lease_ms_));
    budget_ = static_cast<std::int64_t>(reg.output_credit()) - inflight_bytes_ - outbox_bytes_;
    link_ = link;
    log::info("{} agent {} (node {}, {} slots) with the hub at {}",
              first ? "registered as" : "reconnected as", agent_id_, options_.node_name,
              options_.slots, link->peer());
    for (auto id : reg.kill_jobs())
      cancel_task(id, 0, "the hub does not know this job");
    // Output the hub may not have written: send it again (writes are idempotent by offset).
    if (!inflight_.empty()) {
      pb::Envelope env;
      for (const auto& c : inflight_)
        *env.mutable_output()->add_chunks() = c;
      link->send(env);
    }
    credit_wakeup_.cancel();
    post_flush();

    while (true) {
      auto frame = co_await link->receive();
      if (!frame.ok()) {
        last_error_ = frame.error();
        break;
      }
      handle(*frame);
    }
    if (link_ == link)
      link_.reset();
    co_return true;
  }

  pb::Envelope make_register() {
    // Whatever finished while disconnected goes into the registration, so the hub settles it
    // before deciding what is lost; queued start events are implied by the job list.
    pb::JobEvents pending_finished;
    std::deque<OutItem> rest;
    for (auto& item : outbox_) {
      if (auto* ev = std::get_if<pb::JobEvent>(&item)) {
        if (ev->kind() == pb::JobEvent::FINISHED)
          *pending_finished.add_events() = *ev;
      } else {
        rest.push_back(std::move(item));
      }
    }
    outbox_.swap(rest);
    if (pending_finished.events_size() > 0) {
      std::uint64_t seq = next_seq_++;
      for (const auto& ev : pending_finished.events())
        unacked_.emplace_back(seq, ev);
    }
    pb::Envelope env;
    auto* r = env.mutable_agent_register();
    r->set_agent_id(agent_id_);
    if (agent_id_ != 0 && !session_key_.empty())
      r->set_session_proof(protocol::agent_session_proof(session_key_, agent_id_, epoch_));
    r->set_pilot_id(options_.pilot);
    r->set_node_name(options_.node_name);
    r->set_hostname(hostname_);
    r->set_address(options_.address);
    r->set_cores(cores_);
    r->set_memory_bytes(options_.memory);
    for (auto g : options_.gpus)
      r->add_gpus(g);
    r->set_walltime_end_ms(options_.walltime_end_ms);
    r->set_limits(limit_mode_name(limits_.mode()));
    r->set_slots(options_.slots);
    r->set_label(options_.label);
    r->set_pid(::getpid());
    r->set_keeper_pid(keeper_pid_);
    for (const auto& [id, t] : attempts_) {
      auto* j = r->add_jobs();
      j->set_job_id(id);
      j->set_attempt(t->attempt);
      j->set_started(t->started);
    }
    std::uint64_t max_seq = 0;
    for (const auto& [seq, ev] : unacked_) {
      *r->mutable_unacked()->add_events() = ev;
      max_seq = std::max(max_seq, seq);
    }
    r->mutable_unacked()->set_seq(max_seq);
    return env;
  }

  void handle(pb::Envelope& env) {
    // The hub is trusted (it proved the token), but a message no hub may send is a bug or a
    // stranger in the middle: say so rather than act on it.
    if (!protocol::may_send(protocol::Role::Hub, env.body_case())) {
      log::warn("ignoring the hub's '{}': {}", protocol::body_name(env),
                protocol::not_allowed(protocol::Role::Hub, env).message);
      return;
    }
    if (env.route_size() > 0) {
      log::warn("ignoring the hub's '{}' routed to link {}: no engine runs behind this agent yet",
                protocol::body_name(env), env.route(env.route_size() - 1));
      return;
    }
    switch (env.body_case()) {
    case pb::Envelope::kAssign:
      for (auto& a : *env.mutable_assign()->mutable_jobs())
        enqueue(a);
      try_launch();
      return;
    case pb::Envelope::kKill: {
      const auto& k = env.kill();
      for (const auto& ref : k.jobs()) {
        auto it = attempts_.find(ref.job_id());
        if (it != attempts_.end() && it->second->attempt == ref.attempt())
          cancel_task(ref.job_id(), k.grace_ms(), k.reason());
      }
      return;
    }
    case pb::Envelope::kJobEventsAck: {
      auto seq = env.job_events_ack().seq();
      std::erase_if(unacked_, [seq](const auto& p) { return p.first <= seq; });
      return;
    }
    case pb::Envelope::kOutputCredit:
      release_credit(env.output_credit().bytes());
      return;
    case pb::Envelope::kShutdown:
      log::info("the hub asked this agent to shut down: {}", env.shutdown().reason());
      shutdown(env.shutdown().reason());
      return;
    case pb::Envelope::kError:
      log::warn("the hub reported: {}", net::error_from_pb(env.error()).to_string());
      return;
    default:
      log::warn("ignoring unexpected message '{}' from the hub", protocol::body_name(env));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Launching

  void enqueue(pb::Assignment& a) {
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
    if (!a.base_env().empty() && !t->base_env.ParseFromString(a.base_env()))
      log::warn("job {}: its exported environment does not parse; started without it", a.job_id());
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

  void try_launch() {
    while (!launch_queue_.empty() && !stopping_) {
      auto it = attempts_.find(launch_queue_.front());
      if (it == attempts_.end()) {
        launch_queue_.pop_front();
        continue;
      }
      JobAttempt& t = *it->second;
      if (used_slots_ + t.slots > options_.slots && used_slots_ > 0)
        break;
      launch_queue_.pop_front();
      launch(t);
    }
    flush_keeper();
  }

  void flush_keeper() {
    if (!keeper_pending_.empty()) {
      keeper_write(keeper_fd_, keeper_pending_);
      keeper_pending_.clear();
    }
  }

  /// Renews the keeper's lease from the hub's echoes of our heartbeats: the lease ends `lease_ms_`
  /// after the newest heartbeat the hub is known to have received. A frozen agent renews
  /// nothing, so its keeper ends it and its jobs before the hub runs them elsewhere.
  Awaitable<void> lease_loop() {
    asio::steady_timer timer(io_);
    std::int64_t written = 0;
    while (!stopping_) {
      timer.expires_after(std::chrono::milliseconds(std::max<std::int64_t>(heartbeat_ms_ / 4, 50)));
      co_await timer.async_wait(use_nothrow);
      if (stopping_)
        break; // the keeper's pipe may be closed already
      if (!link_ || lease_ms_ <= 0 || link_->echoed_ms() <= 0)
        continue;
      std::int64_t end = link_->echoed_ms() + lease_ms_;
      if (end > written) {
        keeper_write(keeper_fd_, keeper_lease(end));
        written = end;
      }
    }
  }

  /// Orphans of finished jobs (reparented to us, the subreaper) are killed here, once a second,
  /// rather than by a /proc lookup after every job.
  Awaitable<void> sweep_loop() {
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
        if (!tag.empty() && !live.contains(tag) && tag.rfind(nonce_ + ".", 0) == 0)
          kill_job(JobProcesses{pid, tag});
      std::erase_if(pending_cgroups_, [this](const std::string& dir) { return limits_.release(dir); });
    }
  }

  /// The name other nodes reach this one by.
  const std::string& address() const { return options_.address.empty() ? hostname_ : options_.address; }

  /// mpiexec with the job's hostfile; across nodes, the job's variables go to the remote ranks
  /// too (mpiexec passes on only its own unless told with -x).
  static std::vector<std::string> mpiexec_argv(const JobAttempt& t) {
    std::vector<std::string> argv = {"mpiexec", "--hostfile", t.hostfile, "-np",
                                     std::to_string(t.spec.mpi_ranks())};
    if (t.mpi_hosts.size() > 1) {
      std::vector<std::string> names;
      for (const auto& e : t.base_env.vars()) // exported shell functions are not for mpiexec
        if (!e.name().starts_with("BASH_FUNC_"))
          names.push_back(e.name());
      for (const auto& e : t.spec.env())
        names.push_back(e.name());
      for (const char* n : {"SORTIE_JOB_ID", "SORTIE_JOB_TAG", "SORTIE_ATTEMPT", "SORTIE_MPI_RANKS",
                            "SORTIE_MPI_LAYOUT", "OMP_NUM_THREADS"})
        names.emplace_back(n);
      for (const auto& n : names) {
        argv.push_back("-x");
        argv.push_back(n);
      }
    }
    return argv;
  }

  std::vector<std::string> job_env(const JobAttempt& t) {
    std::vector<std::string> env = base_env_;
    auto set = [&env](const std::string& name, const std::string& value) {
      std::string prefix = name + "=";
      for (auto& e : env)
        if (e.compare(0, prefix.size(), prefix) == 0) {
          e = prefix + value;
          return;
        }
      env.push_back(prefix + value);
    };
    auto set_default = [&env, &set](const std::string& name, const std::string& value) {
      std::string prefix = name + "=";
      for (const auto& e : env)
        if (e.compare(0, prefix.size(), prefix) == 0)
          return;
      set(name, value);
    };
    // The node's environment, then what the submitter exported, then the job's own.
    for (const auto& e : t.base_env.vars())
      set(e.name(), e.value());
    for (const auto& e : t.spec.env())
      set(e.name(), e.value());
    set("SORTIE_JOB_ID", std::to_string(t.job));
    set("SORTIE_JOB_TAG", t.tag);
    set("SORTIE_ATTEMPT", std::to_string(t.attempt));
    set("SORTIE_NODE", options_.node_name);
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
    // The GPUs it was given, and no others on a node that has some.
    if (!t.gpus.empty() || !options_.gpus.empty()) {
      std::string list;
      for (auto g : t.gpus)
        list += (list.empty() ? "" : ",") + std::to_string(g);
      set("CUDA_VISIBLE_DEVICES", list);
    }
    return env;
  }

  void launch(JobAttempt& t) {
    t.tag = fmt::format("{}.{}.{}", nonce_, t.job, t.attempt);
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
      emit_finished(t, fmt::format("cannot create a pipe: {}", errno_text(errno)));
      return erase_task(t.job);
    }
    if (::pipe2(err, O_CLOEXEC) != 0) {
      ::close(out[0]);
      ::close(out[1]);
      emit_finished(t, fmt::format("cannot create a pipe: {}", errno_text(errno)));
      return erase_task(t.job);
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
        return erase_task(t.job);
      }
      req.argv = mpiexec_argv(t);
    }
    req.argv.insert(req.argv.end(), t.spec.argv().begin(), t.spec.argv().end());
    req.env = job_env(t);
    req.cwd = t.spec.cwd();
    req.stdout_fd = out[1];
    req.stderr_fd = err[1];
    auto pid = spawn_process(req);
    ::close(out[1]);
    ::close(err[1]);
    if (!pid.ok()) {
      ::close(out[0]);
      ::close(err[0]);
      emit_finished(t, pid.error().message, 127);
      return erase_task(t.job);
    }
    t.pid = *pid;
    t.started = true;
    reaper_.child_started();
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
        cancel_task(job, kill_grace_ms_, "run timeout");
      });
    }
    used_slots_ += t.slots;
    by_pid_[t.pid] = t.job;
    keeper_pending_ += keeper_add(t.procs());
    pb::JobEvent ev;
    ev.set_job_id(t.job);
    ev.set_attempt(t.attempt);
    ev.set_kind(pb::JobEvent::STARTED);
    ev.set_time_ms(wall_ms());
    ev.set_pid(t.pid);
    ev.set_limits(limited_by);
    push(std::move(ev), /*urgent=*/false);
    t.streams_open = 2;
    t.fds[0] = out[0];
    t.fds[1] = err[0];
    t.spawned_mono = net::steady_ms();
    // Most short jobs end before they are worth watching: their pipes are read once, at exit.
    unwatched_.push_back(t.job);
    arm_watch_timer();
  }

  void arm_watch_timer() {
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
  void watch(JobAttempt& t) {
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
  void drain_unwatched(JobAttempt& t) {
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
        // Readable or hung up: this read does not block.
        std::string buf(kReadChunk, '\0');
        ssize_t got;
        do
          got = ::read(t.fds[s], buf.data(), buf.size());
        while (got < 0 && errno == EINTR);
        if (got <= 0) {
          ::close(t.fds[s]);
          t.fds[s] = -1;
          --t.streams_open;
          continue;
        }
        buf.resize(static_cast<std::size_t>(got));
        emit_output(t, s, std::move(buf));
      }
    }
  }

  void emit_output(JobAttempt& t, int stream, std::string data) {
    pb::OutputChunk c;
    c.set_job_id(t.job);
    c.set_attempt(t.attempt);
    c.set_stream(stream == 0 ? pb::STREAM_STDOUT : pb::STREAM_STDERR);
    c.set_offset(t.offsets[stream]);
    auto n = static_cast<std::int64_t>(data.size());
    c.set_data(std::move(data));
    t.offsets[stream] += n;
    budget_ -= n;
    outbox_bytes_ += n;
    push(std::move(c));
  }

  Awaitable<void> read_stream(std::uint64_t job,
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

  void release_credit(std::uint64_t bytes) {
    budget_ += static_cast<std::int64_t>(bytes);
    std::int64_t left = static_cast<std::int64_t>(bytes);
    while (left > 0 && !inflight_.empty()) {
      auto& c = inflight_.front();
      auto size = static_cast<std::int64_t>(c.data().size());
      if (size <= left) {
        left -= size;
        inflight_bytes_ -= size;
        inflight_.pop_front();
      } else {
        // A partial credit: keep the tail (offsets stay exact for a resend).
        c.set_offset(c.offset() + left);
        c.mutable_data()->erase(0, static_cast<std::size_t>(left));
        inflight_bytes_ -= left;
        left = 0;
      }
    }
    credit_wakeup_.cancel();
  }

  // ---------------------------------------------------------------------------------------
  // Process exits

  /// A child exited (from the reaper thread, posted to the loop).
  void on_child_exit(pid_t pid, int status, const rusage& ru) {
    {
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
      t.status = status;
      t.usage = ru;
      used_slots_ -= std::min(used_slots_, t.slots);
      // The job is over when its leader exits: what it left behind in its process group goes
      // too (as Slurm does at the end of a step). Stragglers elsewhere are found below.
      // What the job left running outside its group is found by the periodic sweep.
      if (t.kill_requested)
        kill_job(t.procs());
      else
        ::kill(-t.pid, SIGKILL);
      keeper_pending_ += keeper_remove(t.procs());
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
    try_launch();
  }

  void maybe_finish(JobAttempt& t) {
    if (!t.exited || t.streams_open > 0)
      return;
    pb::JobEvent ev;
    ev.set_job_id(t.job);
    ev.set_attempt(t.attempt);
    ev.set_kind(pb::JobEvent::FINISHED);
    ev.set_time_ms(wall_ms());
    ev.set_pid(t.pid);
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
    push(std::move(ev));
    erase_task(t.job);
  }

  void emit_finished(const JobAttempt& t, const std::string& error, std::optional<int> exit_code = {}) {
    pb::JobEvent ev;
    ev.set_job_id(t.job);
    ev.set_attempt(t.attempt);
    ev.set_kind(pb::JobEvent::FINISHED);
    ev.set_time_ms(wall_ms());
    ev.set_error(error);
    if (exit_code)
      ev.set_exit_code(*exit_code);
    ev.set_killed(t.kill_requested);
    push(std::move(ev));
  }

  void erase_task(std::uint64_t job) {
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
          enqueue(a);
          try_launch();
        }
      });
      next_attempts_.erase(next);
    }
    if (stopping_ && attempts_.empty())
      finish_shutdown();
  }

  // ---------------------------------------------------------------------------------------
  // Killing

  void cancel_task(std::uint64_t job, std::int64_t grace_ms, const std::string& reason) {
    auto it = attempts_.find(job);
    if (it == attempts_.end())
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
      return erase_task(job);
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

  void shutdown(const std::string& reason) {
    if (stopping_)
      return;
    stopping_ = true;
    credit_wakeup_.cancel();
    std::vector<std::uint64_t> ids;
    for (const auto& [id, t] : attempts_)
      ids.push_back(id);
    for (auto id : ids)
      cancel_task(id, kill_grace_ms_, reason);
    if (attempts_.empty())
      finish_shutdown();
  }

  void finish_shutdown() {
    if (shut_down_)
      return;
    shut_down_ = true;
    flush();
    if (link_) {
      pb::Envelope bye;
      bye.mutable_goodbye()->set_reason("agent shutting down");
      link_->send(bye);
      link_->close_after_flush(make_error(ErrorCode::Cancelled, "agent shut down"));
    }
    spawn_root(io_.get_executor(), "the agent's last flush", stop_when_flushed());
  }

  Awaitable<void> stop_when_flushed() {
    asio::steady_timer t(io_);
    for (int i = 0; i < 100 && link_ && !link_->closed(); ++i) {
      t.expires_after(std::chrono::milliseconds(20));
      co_await t.async_wait(use_nothrow);
    }
    ::close(keeper_fd_);
    signals_.cancel();
    reaper_.stop();
    io_.stop();
  }

  void kill_everything_and_stop() {
    stopping_ = true;
    for (auto& [id, t] : attempts_)
      if (t->started && !t->exited)
        kill_job(t->procs());
    ::close(keeper_fd_);
    reaper_.stop();
    io_.stop();
  }

  void watch_signals() {
    signals_.async_wait([this](error_code ec, int sig) {
      if (ec)
        return;
      log::info("received signal {}: killing jobs and exiting", sig);
      shutdown(fmt::format("agent received signal {}", sig));
      watch_signals();
    });
  }

  // ---------------------------------------------------------------------------------------
  // Outbox: events and output in the order they happened, one frame per run per loop turn.

  /// Queues an event or output. An agent with work in its launch queue lets messages gather for
  /// kLazyFlush (the hub has time to refill the queue), so a busy agent sends many events per
  /// frame; one whose queue ran dry sends at once so the hub gives it work. A start alone never
  /// hurries.
  void push(OutItem item, bool urgent = true) {
    outbox_.push_back(std::move(item));
    if (urgent && launch_queue_.empty()) {
      post_flush();
    } else if (!lazy_armed_) {
      lazy_armed_ = true;
      lazy_flush_.expires_after(kLazyFlush);
      lazy_flush_.async_wait([this](error_code ec) {
        lazy_armed_ = false;
        if (!ec)
          post_flush();
      });
    }
  }

  void post_flush() {
    if (flush_posted_)
      return;
    flush_posted_ = true;
    asio::post(io_, [this] { flush(); });
  }

  void flush() {
    flush_posted_ = false;
    flush_keeper();
    if (!link_ || link_->closed() || agent_id_ == 0)
      return; // kept until the next registration
    while (!outbox_.empty()) {
      pb::Envelope env;
      if (std::holds_alternative<pb::JobEvent>(outbox_.front())) {
        auto* events = env.mutable_job_events();
        bool finished = false;
        while (!outbox_.empty() && std::holds_alternative<pb::JobEvent>(outbox_.front())) {
          auto& ev = std::get<pb::JobEvent>(outbox_.front());
          finished = finished || ev.kind() == pb::JobEvent::FINISHED;
          *events->add_events() = std::move(ev);
          outbox_.pop_front();
        }
        if (finished) {
          std::uint64_t seq = next_seq_++;
          events->set_seq(seq);
          for (const auto& ev : events->events())
            if (ev.kind() == pb::JobEvent::FINISHED)
              unacked_.emplace_back(seq, ev);
        }
      } else {
        auto* out = env.mutable_output();
        while (!outbox_.empty() && std::holds_alternative<pb::OutputChunk>(outbox_.front())) {
          auto& c = std::get<pb::OutputChunk>(outbox_.front());
          auto size = static_cast<std::int64_t>(c.data().size());
          outbox_bytes_ -= size;
          inflight_bytes_ += size;
          inflight_.push_back(c);
          *out->add_chunks() = std::move(c);
          outbox_.pop_front();
        }
      }
      link_->send(env);
    }
  }

  asio::io_context& io_;
  AgentOptions options_;
  int keeper_fd_;
  pid_t keeper_pid_; ///< told to the hub: it waits for the keeper before requeueing our jobs
  MemoryLimits limits_;
  std::vector<std::string> pending_cgroups_; ///< job cgroups to remove once empty
  std::int64_t kill_grace_ms_ = 3000;
  std::vector<std::string> base_env_;
  std::string hostname_;
  std::string nonce_; ///< makes job tags unique to this agent process
  std::uint32_t cores_ = 1;

  std::shared_ptr<net::Link> link_;
  std::uint64_t agent_id_ = 0;
  std::int64_t reconnect_window_ms_ = 60'000;
  std::int64_t lease_ms_ = 0;        ///< from the hub; 0: no lease (an older hub)
  std::string session_key_;          ///< proves our reconnects (from the first registration)
  std::uint64_t epoch_ = 0;          ///< of our last registration
  std::int64_t heartbeat_ms_ = 5000; ///< the hub's heartbeat interval
  Error last_error_;

  std::unordered_map<std::uint64_t, std::unique_ptr<JobAttempt>> attempts_;
  /// New attempts of jobs whose old attempt is still ending here.
  std::unordered_map<std::uint64_t, pb::Assignment> next_attempts_;
  std::deque<std::uint64_t> launch_queue_;
  std::unordered_map<pid_t, std::uint64_t> by_pid_;
  std::uint32_t used_slots_ = 0;

  std::deque<OutItem> outbox_;
  bool flush_posted_ = false;
  asio::steady_timer lazy_flush_;
  bool lazy_armed_ = false;
  asio::steady_timer watch_timer_;
  bool watch_armed_ = false;
  std::deque<std::uint64_t> unwatched_; ///< started jobs whose pipes the loop does not watch yet
  std::string keeper_pending_;
  std::uint64_t next_seq_ = 1;
  std::vector<std::pair<std::uint64_t, pb::JobEvent>> unacked_;
  std::deque<pb::OutputChunk> inflight_;
  std::int64_t inflight_bytes_ = 0;
  std::int64_t outbox_bytes_ = 0;
  std::int64_t budget_ = 0;
  asio::steady_timer credit_wakeup_;

  asio::signal_set signals_;
  Reaper reaper_; // last: its thread must stop before anything it posts about goes away
  bool stopping_ = false;
  bool shut_down_ = false;
  int exit_code_ = 0;
};

} // namespace

std::vector<std::uint32_t> detect_gpus() {
  std::vector<std::uint32_t> out;
  std::error_code ec;
  std::filesystem::directory_iterator it("/proc/driver/nvidia/gpus", ec);
  std::uint32_t n = 0;
  for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    out.push_back(n++);
  return out;
}

int run_agent(const AgentOptions& options) {
  const char* forced = std::getenv("SORTIE_AGENT_MEMORY_LIMITS");
  auto limits = MemoryLimits::detect(forced && *forced ? forced : options.memory_limits);
  // The keeper is forked before anything else exists (no threads, no event loop).
  auto keeper = start_keeper(limits.agent_dir());
  if (!keeper.ok()) {
    log::error("cannot start the keeper process: {}", keeper.error().to_string());
    return 1;
  }
  become_subreaper();
  ::signal(SIGPIPE, SIG_IGN);
  asio::io_context io(1);
  Agent agent(io, options, *keeper, std::move(limits));
  agent.start();
  io.run();
  return agent.exit_code();
}

} // namespace sortie::agent
