// SPDX-License-Identifier: Apache-2.0
// The hub's process shell: the profile lock, listeners, one coroutine per connection (handshake,
// then frames handed to the Hub by role), signals and an orderly stop. The Hub itself never sees a
// socket.
#include "hub/server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <signal.h>

#include <boost/asio/signal_set.hpp>

#include <deque>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "hub/hub.hpp"
#include "launch/process.hpp"
#include "protocol/auth.hpp"
#include "protocol/handshake.hpp"
#include "protocol/socket_stream.hpp"
#include "protocol/tls_stream.hpp"

namespace sortie::hub {
namespace {

// Connections in their handshake at once, at most (the oldest is closed to admit a new one).
constexpr std::size_t kMaxUnauthenticated = 64;
// A client that does not read what it asked for is not read either while the hub holds this
// much unsent for it (one more reply at most): memory stays bounded whatever a client does.
constexpr std::size_t kClientBacklog = 64u << 20;

class LinkPeer final : public Peer {
public:
  LinkPeer(std::shared_ptr<net::Link> link, std::string name)
      : link_(std::move(link)), name_(std::move(name)) {}
  // Peer
  void send(const pb::Envelope& env) override { link_->send(env); }
  void close_with_error(const Error& error) override { link_->close_with_error(error); }
  bool closed() const override { return link_->closed(); }
  std::size_t queued_bytes() const override { return link_->queued_bytes(); }
  void when_drained(std::function<void()> fn) override { link_->when_drained(std::move(fn)); }
  std::int64_t silent_ms() const override { return link_->silent_ms(); }
  std::string describe() const override {
    return name_.empty() ? link_->peer() : fmt::format("{} ({})", name_, link_->peer());
  }

private:
  std::shared_ptr<net::Link> link_;
  std::string name_;
};

void report(int fd, const std::string& line) {
  if (fd < 0)
    return;
  std::string s = line + "\n";
  [[maybe_unused]] auto n = ::write(fd, s.data(), s.size());
}

class Server final : public HubHost {
public:
  Server(asio::io_context& io, HubConfig config, std::string key, std::shared_ptr<SSL_CTX> tls)
      : io_(io), config_(std::move(config)), key_(std::move(key)), tls_(std::move(tls)), tcp_(io),
        unix_(io),
        signals_(io, SIGTERM, SIGINT), children_(io, SIGCHLD) {}

  Result<void> listen(std::uint16_t previous_port) {
    error_code ec;
    auto addr = asio::ip::make_address(config_.listen_host, ec);
    if (ec)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("cannot listen on '{}': not an IP address (use e.g. 127.0.0.1 "
                                    "or 0.0.0.0)",
                                    config_.listen_host));
    auto try_bind = [&](std::uint16_t port) -> error_code {
      error_code e;
      tcp_ = asio::ip::tcp::acceptor(io_);
      tcp_.open(addr.is_v6() ? asio::ip::tcp::v6() : asio::ip::tcp::v4(), e);
      if (!e)
        tcp_.set_option(asio::socket_base::reuse_address(true), e);
      if (!e)
        tcp_.bind({addr, port}, e);
      if (!e)
        tcp_.listen(asio::socket_base::max_listen_connections, e);
      return e;
    };
    std::uint16_t port = config_.listen_port;
    ec = try_bind(port ? port : previous_port);
    if (ec && !port && previous_port)
      ec = try_bind(0); // the previous port is taken: any port will do
    if (ec)
      return make_error(ErrorCode::Unavailable,
                        fmt::format("cannot listen on {}:{}: {}", config_.listen_host,
                                    port ? port : previous_port, ec.message()));
    port_ = tcp_.local_endpoint().port();

    socket_path_ = config_.profile.socket_file().string();
    ::unlink(socket_path_.c_str()); // we hold the profile lock: any socket here is stale
    unix_.open(asio::local::stream_protocol(), ec);
    if (!ec)
      unix_.bind(asio::local::stream_protocol::endpoint(socket_path_), ec);
    if (!ec)
      unix_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
      return make_error(ErrorCode::Unavailable,
                        fmt::format("cannot listen on {}: {}", socket_path_, ec.message()));
    ::chmod(socket_path_.c_str(), 0600);
    return ok_result();
  }

  std::uint16_t port() const { return port_; }
  const std::string& socket_path() const { return socket_path_; }

  // HubHost
  void request_stop(bool restart) override { stop(restart); }
  void run_agent_session(std::unique_ptr<net::ByteStream> stream, std::string key,
                         std::function<void(const Error&)> failed) override {
    if (!stopping_)
      spawn_session(std::move(stream), std::move(key), std::move(failed));
  }
  launch::ChildWatch* child_watch() override { return &child_watch_; }
  std::string listen_address() const override {
    return fmt::format("{}:{}", config_.listen_host, port_);
  }

  void run(Hub& hub) {
    hub_ = &hub;
    spawn_root(io_.get_executor(), "accepting TCP connections", accept_tcp());
    spawn_root(io_.get_executor(), "accepting unix-socket connections", accept_unix());
    watch_signals();
    watch_children();
  }

  void stop(bool restart = false) {
    if (stopping_)
      return;
    stopping_ = true;
    log::info("{}", restart ? "restarting" : "stopping");
    error_code ignored;
    tcp_.close(ignored);
    unix_.close(ignored);
    hub_->shutdown([this] {
      // Let the last replies and Shutdown messages reach their peers, then end the loop.
      for (auto& w : links_)
        if (auto l = w.lock())
          l->close_after_flush(make_error(ErrorCode::Unavailable, "the hub stopped"));
      spawn_root(io_.get_executor(), "the hub's last flush", drain());
    }, restart);
  }

private:
  Awaitable<void> drain() {
    asio::steady_timer t(io_);
    for (int i = 0; i < 100; ++i) {
      bool open = false;
      for (auto& w : links_)
        if (auto l = w.lock(); l && !l->closed())
          open = true;
      if (!open)
        break;
      t.expires_after(std::chrono::milliseconds(20));
      co_await t.async_wait(use_nothrow);
    }
    signals_.cancel();
    children_.cancel();
    io_.stop();
  }

  void watch_signals() {
    signals_.async_wait([this](error_code ec, int sig) {
      if (ec)
        return;
      log::info("received signal {}", sig);
      stop();
      watch_signals();
    });
  }

  void watch_children() {
    children_.async_wait([this](error_code ec, int) {
      if (ec)
        return;
      int status = 0;
      pid_t pid;
      while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0)
        if (!child_watch_.dispatch(pid, status))
          log::debug("reaped process {} that no driver waited for", pid);
      watch_children();
    });
  }

  Awaitable<void> accept_tcp() {
    // Every TCP connection is TLS (the unix socket stays plain: only this user can open it).
    return accept_loop(tcp_, true, [this](asio::ip::tcp::socket socket) {
      error_code ignored;
      socket.set_option(asio::ip::tcp::no_delay(true), ignored);
      auto remote = socket.remote_endpoint(ignored);
      auto name = fmt::format("tcp:{}:{}", remote.address().to_string(), remote.port());
      return net::make_tls_server_stream(tls_, std::move(socket), std::move(name));
    });
  }

  Awaitable<void> accept_unix() {
    // The socket is the user's own (mode 0600): its connections are not limited.
    return accept_loop(unix_, false, [](asio::local::stream_protocol::socket socket) {
      return net::make_socket_stream(std::move(socket), "unix");
    });
  }

  /// Accepts connections until the hub stops. When accept fails for want of descriptors or
  /// memory, it backs off (up to 1 s) instead of spinning, and says so once a second at most.
  template <typename Acceptor, typename MakeStream>
  Awaitable<void> accept_loop(Acceptor& acceptor, bool limited, MakeStream make_stream) {
    asio::steady_timer backoff_timer(io_);
    std::int64_t backoff_ms = 0;
    while (!stopping_) {
      auto [ec, socket] = co_await acceptor.async_accept(use_nothrow);
      if (ec) {
        if (stopping_ || ec == asio::error::operation_aborted)
          break;
        backoff_ms = std::clamp<std::int64_t>(backoff_ms * 2, 10, 1000);
        accept_log_.warn(fmt::format("accept failed: {} (pausing {} ms; {} connections open)",
                                     ec.message(), backoff_ms, links_.size()));
        backoff_timer.expires_after(std::chrono::milliseconds(backoff_ms));
        co_await backoff_timer.async_wait(use_nothrow);
        continue;
      }
      backoff_ms = 0;
      spawn_session(make_stream(std::move(socket)), {}, {}, limited);
    }
  }

  /// At most kMaxUnauthenticated TCP connections may be in their handshake: past that the oldest
  /// is closed, so idle or slow connections cannot use up the hub's descriptors while real peers
  /// (whose handshake takes milliseconds, or who use the unix socket) still get in.
  void admit(const std::shared_ptr<net::Link>& link) {
    std::erase_if(handshaking_, [](const std::weak_ptr<net::Link>& w) {
      auto l = w.lock();
      return !l || l->closed();
    });
    if (handshaking_.size() >= kMaxUnauthenticated) {
      if (auto oldest = handshaking_.front().lock()) {
        reject_log_.warn(fmt::format("{} connections have not authenticated; closing the oldest "
                                     "({})",
                                     handshaking_.size(), oldest->peer()));
        oldest->close(make_error(ErrorCode::Unavailable, "too many unauthenticated connections"));
      }
      handshaking_.pop_front();
    }
    handshaking_.push_back(link);
  }

  /// One connection. `stdio_key`: a remote pilot's ssh session, which only its agent may use,
  /// authenticated with the key the hub gave that agent.
  /// `limited`: counted against the handshake limit (TCP connections).
  void spawn_session(std::unique_ptr<net::ByteStream> stream, std::string stdio_key = {},
                     std::function<void(const Error&)> failed = {}, bool limited = false) {
    auto link = std::make_shared<net::Link>(io_.get_executor(), std::move(stream));
    std::erase_if(links_, [](const std::weak_ptr<net::Link>& w) { return w.expired(); });
    links_.push_back(link);
    if (limited)
      admit(link);
    link->start();
    spawn_root(io_.get_executor(), "session " + link->peer(),
               session(link, std::move(stdio_key), std::move(failed)), [link](bool failed_) {
                 if (failed_)
                   link->close(make_error(ErrorCode::Internal, "internal error"));
               });
  }

  Awaitable<void> session(std::shared_ptr<net::Link> link, std::string stdio_key,
                          std::function<void(const Error&)> failed) {
    bool stdio = !stdio_key.empty();
    pb::Welcome welcome;
    welcome.set_session_id(++next_session_);
    welcome.set_heartbeat_interval_ms(static_cast<std::uint32_t>(config_.heartbeat_interval_ms));
    welcome.set_hub_version(kSortieVersion);
    welcome.set_profile(config_.profile.name);
    auto accepted = co_await net::accept_handshake(link, stdio ? stdio_key : key_, welcome,
                                                   config_.handshake_timeout_ms);
    if (!accepted.ok()) {
      reject_log_.warn(fmt::format("connection {} rejected: {}", link->peer(),
                                   accepted.error().to_string()));
      if (failed)
        failed(accepted.error());
      co_return;
    }
    // Authenticated: no longer counted against the handshake limit.
    std::erase_if(handshaking_, [&](const std::weak_ptr<net::Link>& w) {
      auto l = w.lock();
      return !l || l == link;
    });
    const auto& hello = accepted->hello;
    auto peer = std::make_shared<LinkPeer>(link, hello.peer_name());
    if (stopping_) {
      peer->close_with_error(make_error(ErrorCode::Unavailable, "the hub is stopping"));
      co_return;
    }
    if (stdio && hello.role() != pb::ROLE_AGENT) {
      peer->close_with_error(make_error(ErrorCode::PermissionDenied,
                                        "an ssh pilot's link is for its agent only"));
    } else if (hello.role() == pb::ROLE_CLIENT) {
      link->start_heartbeat(config_.heartbeat_interval_ms, 0);
      log::debug("client {} connected", peer->describe());
      while (true) {
        if (link->queued_bytes() > kClientBacklog) {
          log::info("client {} does not read its replies ({} MiB unsent): not read until it "
                    "does",
                    peer->describe(), link->queued_bytes() >> 20);
          asio::steady_timer drained(io_, asio::steady_timer::time_point::max());
          link->when_drained([&drained] { drained.cancel(); });
          co_await drained.async_wait(use_nothrow);
        }
        auto frame = co_await link->receive();
        if (!frame.ok())
          break;
        hub_->on_client_frame(peer, *frame);
      }
      if (link->close_reason().code != ErrorCode::Unavailable)
        log::warn("client {}: {}", peer->describe(), link->close_reason().to_string());
      hub_->on_client_closed(peer);
    } else if (hello.role() == pb::ROLE_AGENT) {
      link->start_heartbeat(config_.heartbeat_interval_ms, config_.heartbeat_deadline_ms);
      auto first = co_await link->receive();
      if (!first.ok()) {
        if (failed)
          failed(first.error());
        co_return;
      }
      if (!first->has_agent_register()) {
        auto error = make_error(ErrorCode::InvalidArgument,
                                fmt::format("protocol error: an agent must register first, got '{}'",
                                            protocol::body_name(*first)));
        if (failed)
          failed(error);
        peer->close_with_error(error);
        co_return;
      }
      hub_->on_agent_register(peer, first->agent_register(), stdio);
      bool goodbye = false;
      while (true) {
        auto frame = co_await link->receive();
        if (!frame.ok())
          break;
        goodbye = goodbye || frame->has_goodbye();
        hub_->on_agent_frame(peer, *frame);
      }
      if (!goodbye)
        log::warn("agent link {} closed: {}", peer->describe(), link->close_reason().to_string());
      hub_->on_agent_closed(peer, link->close_reason(), goodbye);
    } else {
      peer->close_with_error(make_error(ErrorCode::InvalidArgument,
                                        fmt::format("role {} is not served by this hub",
                                                    static_cast<int>(hello.role()))));
    }
  }

  asio::io_context& io_;
  HubConfig config_;
  std::string key_;
  std::shared_ptr<SSL_CTX> tls_;
  asio::ip::tcp::acceptor tcp_;
  asio::local::stream_protocol::acceptor unix_;
  asio::signal_set signals_;
  asio::signal_set children_;
  std::string socket_path_;
  std::uint16_t port_ = 0;
  Hub* hub_ = nullptr;
  std::vector<std::weak_ptr<net::Link>> links_;
  launch::ChildWatch child_watch_;
  std::uint64_t next_session_ = 0;
  bool stopping_ = false;
  std::deque<std::weak_ptr<net::Link>> handshaking_; ///< oldest first
  log::RateLimited accept_log_;
  log::RateLimited reject_log_;
};

/// Takes the profile's lock; fails with who holds it.
Result<int> lock_profile(const Profile& profile) {
  int fd = ::open(profile.lock_file().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    return make_error(ErrorCode::Io, fmt::format("cannot open {}: {}", profile.lock_file().string(),
                                                 errno_text(errno)));
  auto hf = read_hub_file(profile.hub_file());
  // A hub just killed holds the lock until its last thread has finished exiting (one can be in
  // the middle of a large write): wait for that rather than report it as running.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  bool said = false;
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0 && hf.ok() && launch::pid_exiting(hf->pid) &&
         std::chrono::steady_clock::now() < deadline) {
    if (!std::exchange(said, true))
      log::info("waiting for the last hub of profile '{}' (pid {}) to finish exiting",
                profile.name, hf->pid);
    pollfd none{-1, 0, 0};
    ::poll(&none, 0, 10);
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    std::string who;
    if (hf.ok())
      who = fmt::format(" (pid {}, listening on {}:{})", hf->pid, hf->host, hf->port);
    return make_error(ErrorCode::AlreadyExists,
                      fmt::format("a hub is already running for profile '{}'{}: use it, or stop "
                                  "it with `sortie hub stop`",
                                  profile.name, who));
  }
  return fd;
}

} // namespace

int run_hub(RunOptions options) {
  // A write to an ssh pilot's pipe whose ssh died is an error on that one link (Link handles
  // it), not the end of the hub: sockets say MSG_NOSIGNAL, pipes cannot.
  ::signal(SIGPIPE, SIG_IGN);
  HubConfig& config = options.config;
  auto fail = [&](const Error& e) {
    log::error("{}", e.to_string());
    report(options.ready_fd, "error " + e.to_string());
    if (options.ready_fd >= 0)
      ::close(options.ready_fd);
    return 1;
  };
  if (auto r = create_profile_dirs(config.profile); !r.ok())
    return fail(r.error());
  auto lock = lock_profile(config.profile);
  if (!lock.ok())
    return fail(lock.error());
  if (auto r = load_config_file(config.profile.config_file(), config); !r.ok())
    return fail(r.error());
  if (!options.listen.empty())
    if (auto r = parse_listen(options.listen, config); !r.ok())
      return fail(r.error());

  // An empty store where a hub has run before was cut short, not made new: starting on it
  // would lose every job it held.
  if (std::error_code ec; std::filesystem::exists(config.profile.hub_file(), ec) &&
                          std::filesystem::exists(config.profile.store_file(), ec) &&
                          std::filesystem::file_size(config.profile.store_file(), ec) == 0 && !ec)
    return fail(make_error(ErrorCode::FailedPrecondition,
                           fmt::format("{} is empty, but a hub has run on this profile before: the "
                                       "store was truncated. Restore it from a backup, or delete "
                                       "it to start with no jobs",
                                       config.profile.store_file().string())));
  auto store = store::Store::open({config.profile.store_file(), config.profile.output_dir(),
                                   config.store_sync_full, config.profile.ids_file(),
                                   /*full_size_log=*/true});
  if (!store.ok())
    return fail(store.error());
  auto state = (*store)->load();
  if (!state.ok())
    return fail(state.error());

  // Keep the token across restarts so agents that outlived the hub can reconnect.
  HubFile hf;
  std::uint16_t previous_port = 0;
  if (auto old = read_hub_file(config.profile.hub_file()); old.ok()) {
    hf.token = old->token;
    previous_port = old->port;
  } else if (old.error().code == ErrorCode::PermissionDenied) {
    // Others could read the token: do not go on with it, nor silently replace it.
    return fail(old.error());
  }
  if (hf.token.size() != 64)
    hf.token = protocol::to_hex(protocol::random_bytes(32));
  auto key = token_key(hf);
  if (!key.ok())
    return fail(key.error());

  auto identity = net::load_or_make_tls_identity(config.profile.tls_cert_file(),
                                                 config.profile.tls_key_file(),
                                                 "sortie hub " + config.profile.name);
  if (!identity.ok())
    return fail(identity.error());
  auto tls = net::make_server_context(*identity);
  if (!tls.ok())
    return fail(tls.error());
  hf.tls_fingerprint = identity->fingerprint;

  asio::io_context io(1);
  Server server(io, config, *key, *tls);
  if (auto r = server.listen(previous_port); !r.ok())
    return fail(r.error());

  SystemClock clock;
  Hub hub(io.get_executor(), config, **store, clock, server);
  if (auto r = hub.load(std::move(*state)); !r.ok())
    return fail(r.error());

  hf.profile = config.profile.name;
  hf.pid = ::getpid();
  // On a wildcard address, peers elsewhere (compute nodes reading a shared hub.json) reach the
  // hub by this machine's name; peers here use the unix socket.
  hf.host = config.listen_host;
  if (config.listen_host == "0.0.0.0" || config.listen_host == "::") {
    char name[256] = {};
    hf.host = ::gethostname(name, sizeof name - 1) == 0 && name[0] ? name : "127.0.0.1";
  }
  hf.port = server.port();
  hf.socket = server.socket_path();
  hf.started_ms = hub.started_ms();
  if (auto r = write_hub_file(config.profile.hub_file(), hf); !r.ok())
    return fail(r.error());

  (*store)->start([&io](std::function<void()> f) { asio::post(io, std::move(f)); });
  hub.start();
  server.run(hub);
  log::info("hub for profile '{}' listening on {}:{} and {} (sortie {}, pid {})",
            config.profile.name, config.listen_host, server.port(), server.socket_path(),
            kSortieVersion, ::getpid());
  report(options.ready_fd,
         fmt::format("ready {}:{} {}", config.listen_host, server.port(), ::getpid()));
  if (options.ready_fd >= 0)
    ::close(options.ready_fd);

  io.run();
  (*store)->stop();
  ::unlink(server.socket_path().c_str());
  log::info("hub stopped");
  log::flush();
  ::close(*lock);
  return 0;
}

} // namespace sortie::hub
