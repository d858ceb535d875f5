// SPDX-License-Identifier: Apache-2.0
// The agent: registers with the hub, hands the job attempts it is given to its runner
// (runner.hpp), sends their events and output in order against the hub's credit, keeps its lease
// with its keeper, and reconnects after a drop.
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

#include "agent/engines.hpp"
#include "agent/limits.hpp"
#include "agent/process.hpp"
#include "agent/runner.hpp"
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

// How long a busy agent (work in its launch queue) lets events and output gather: each frame it
// sends costs the hub a commit; the hub keeps ~50 ms of work per slot queued here.
constexpr auto kLazyFlush = std::chrono::milliseconds(20);

std::string host_name() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

using OutItem = std::variant<pb::JobEvent, pb::OutputChunk>;

} // namespace

class Agent {
public:
  Agent(asio::io_context& io, AgentOptions options, Keeper keeper, MemoryLimits limits)
      : io_(io), options_(std::move(options)), keeper_fd_(keeper.fd),
        keeper_table_fd_(keeper.table_fd), keeper_pid_(keeper.pid), limits_(std::move(limits)),
        hostname_(host_name()), lazy_flush_(io), signals_(io, SIGTERM, SIGINT),
        engines_(io,
                 [this](pb::Envelope& env) {
                   if (!link_ || link_->closed() || agent_id_ == 0)
                     return false;
                   link_->send(env);
                   return true;
                 }),
        runner_(io, runner_config(), limits_,
                RunnerHooks{[this](pb::JobEvent ev, bool urgent) {
                              if (ev.kind() == pb::JobEvent::FINISHED)
                                engines_.ended(ev.job_id());
                              push(std::move(ev), urgent);
                            },
                            [this](pb::OutputChunk c) {
                              outbox_bytes_ += static_cast<std::int64_t>(c.data().size());
                              push(std::move(c));
                            },
                            [this] { finish_shutdown(); },
                            [this](std::uint64_t job, std::uint32_t attempt,
                                   const std::string& socket, const std::string& key) {
                              return engines_.prepare(job, attempt, socket, key);
                            }}) {
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
    runner_.start();
    auto ex = io_.get_executor();
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
                   last_error_.to_string(), runner_.held());
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
                   last_error_.to_string(), runner_.held());
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
    if (reg.kill_grace_ms() > 0) {
      kill_grace_ms_ = reg.kill_grace_ms();
      runner_.set_kill_grace(kill_grace_ms_);
    }
    lease_ms_ = reg.lease_ms();
    heartbeat_ms_ = interval;
    // The first lease, before any job can start: the hub heard our registration, so it waits at
    // least a lease from when we sent it. Heartbeat echoes renew it from here (lease_loop).
    if (lease_ms_ > 0)
      keeper_write(keeper_fd_, keeper_lease(register_sent_ms + lease_ms_));
    runner_.set_credit(static_cast<std::int64_t>(reg.output_credit()) - inflight_bytes_ -
                       outbox_bytes_);
    link_ = link;
    log::info("{} agent {} (node {}, {} slots) with the hub at {}",
              first ? "registered as" : "reconnected as", agent_id_, options_.node_name,
              options_.slots, link->peer());
    for (auto id : reg.kill_jobs())
      runner_.cancel(id, 0, 0, "the hub does not know this job");
    // Output the hub may not have written: send it again (writes are idempotent by offset).
    if (!inflight_.empty()) {
      pb::Envelope env;
      for (const auto& c : inflight_)
        *env.mutable_output()->add_chunks() = c;
      link->send(env);
    }
    post_flush();
    engines_.rejoin(); // engines announce themselves to this hub

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
    runner_.describe(*r);
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
    if (env.route_size() > 0) // for one of our engines
      return engines_.down(env);
    switch (env.body_case()) {
    case pb::Envelope::kAssign:
      for (auto& a : *env.mutable_assign()->mutable_jobs())
        runner_.assign(a);
      runner_.start_queued();
      return;
    case pb::Envelope::kKill: {
      const auto& k = env.kill();
      for (const auto& ref : k.jobs())
        runner_.cancel(ref.job_id(), ref.attempt(), k.grace_ms(), k.reason());
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
    case pb::Envelope::kEngineHost: {
      const auto& h = env.engine_host();
      if (h.end())
        engines_.ended(h.job_id());
      else
        engines_.host(h.job_id(), h.attempt(), h.socket(), h.key());
      return;
    }
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
  // Credit, lease

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

  void release_credit(std::uint64_t bytes) {
    runner_.add_credit(static_cast<std::int64_t>(bytes));
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
  }

  void shutdown(const std::string& reason) {
    if (stopping_)
      return;
    stopping_ = true;
    runner_.stop_all(kill_grace_ms_, reason); // finish_shutdown() once every job has ended
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
    runner_.stop_reaper();
    engines_.close_all();
    io_.stop();
  }

  void kill_everything_and_stop() {
    stopping_ = true;
    runner_.kill_all();
    engines_.close_all();
    ::close(keeper_fd_);
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
    if (urgent && runner_.queue_empty()) {
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

  /// The runner's view of this node.
  RunnerConfig runner_config() const {
    RunnerConfig c;
    c.node_name = options_.node_name.empty() ? hostname_ : options_.node_name;
    c.address = options_.address.empty() ? hostname_ : options_.address;
    c.slots = options_.slots ? options_.slots : cores();
    c.gpus = options_.gpus_declared ? options_.gpus : detect_gpus();
    c.keeper_table_fd = keeper_table_fd_;
    c.nonce = protocol::to_hex(protocol::random_bytes(8));
    for (char** e = environ; *e; ++e)
      c.base_env.emplace_back(*e);
    return c;
  }
  static std::uint32_t cores() {
    return static_cast<std::uint32_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
  }

  asio::io_context& io_;
  AgentOptions options_;
  int keeper_fd_;
  int keeper_table_fd_;
  pid_t keeper_pid_; ///< told to the hub: it waits for the keeper before requeueing our jobs
  MemoryLimits limits_;
  std::int64_t kill_grace_ms_ = 3000;
  std::string hostname_;
  std::uint32_t cores_ = 1;

  std::shared_ptr<net::Link> link_;
  std::uint64_t agent_id_ = 0;
  std::int64_t reconnect_window_ms_ = 60'000;
  std::int64_t lease_ms_ = 0;        ///< from the hub; 0: no lease (an older hub)
  std::string session_key_;          ///< proves our reconnects (from the first registration)
  std::uint64_t epoch_ = 0;          ///< of our last registration
  std::int64_t heartbeat_ms_ = 5000; ///< the hub's heartbeat interval
  Error last_error_;

  std::deque<OutItem> outbox_;
  bool flush_posted_ = false;
  asio::steady_timer lazy_flush_;
  bool lazy_armed_ = false;
  std::uint64_t next_seq_ = 1;
  std::vector<std::pair<std::uint64_t, pb::JobEvent>> unacked_;
  std::deque<pb::OutputChunk> inflight_;
  std::int64_t inflight_bytes_ = 0;
  std::int64_t outbox_bytes_ = 0;

  asio::signal_set signals_;
  EngineBridge engines_;
  JobRunner runner_; // after everything its hooks use
  bool stopping_ = false;
  bool shut_down_ = false;
  int exit_code_ = 0;
};

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
