// SPDX-License-Identifier: Apache-2.0
// Direct engine links: a socket per engine job of a local pilot, beside hub.sock; engines that
// prove its key talk to the hub with no agent in between (05-tasks.md §5.9).
#include "hub/direct.hpp"

#include <unistd.h>

#include <boost/asio/local/stream_protocol.hpp>
#include <fmt/format.h>

#include "common/log.hpp"
#include "protocol/auth.hpp"
#include "protocol/handshake.hpp"
#include "protocol/roles.hpp"
#include "protocol/route.hpp"
#include "protocol/socket_stream.hpp"

namespace sortie::hub {
namespace {

/// The hub's side of one direct link, as the tasks room sees it: frames routed to the engine
/// go straight to it (it is the last hop).
class DirectPeer final : public Peer {
public:
  DirectPeer(std::shared_ptr<net::Link> link, std::string name)
      : link_(std::move(link)), name_(std::move(name)) {}
  void send(const pb::Envelope& env) override {
    if (env.route_size() == 0)
      return link_->send(env);
    pb::Envelope copy = env;
    copy.clear_route();
    link_->send(copy);
  }
  void close_with_error(const Error& error) override { link_->close_with_error(error); }
  bool closed() const override { return link_->closed(); }
  std::size_t queued_bytes() const override { return link_->queued_bytes(); }
  void when_drained(std::function<void()> fn) override { link_->when_drained(std::move(fn)); }
  std::int64_t silent_ms() const override { return link_->silent_ms(); }
  std::string describe() const override { return name_; }

private:
  std::shared_ptr<net::Link> link_;
  std::string name_;
};

} // namespace

struct DirectEngines::Listener {
  JobId job;
  std::uint32_t attempt = 0;
  std::string key;
  std::string path;
  asio::local::stream_protocol::acceptor acceptor;
  bool closed = false;
  explicit Listener(const asio::any_io_executor& ex) : acceptor(ex) {}
};

DirectEngines::DirectEngines(asio::any_io_executor executor, std::filesystem::path dir)
    : executor_(std::move(executor)), dir_(std::move(dir)) {
  // The hub holds its profile's lock: an engine socket here is one a hub killed -9 left (its
  // engines went on through their agents' sockets).
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("engine-") && name.ends_with(".sock"))
      ::unlink(entry.path().c_str());
  }
}

DirectEngines::~DirectEngines() {
  *alive_ = false;
  close_all();
}

void DirectEngines::on(Frame frame, Closed closed) {
  frame_ = std::move(frame);
  closed_ = std::move(closed);
}

std::optional<std::pair<std::string, std::string>> DirectEngines::listen(JobId job,
                                                                        std::uint32_t attempt) {
  ended(job); // an earlier attempt's, if any
  if (dir_.empty())
    return std::nullopt;
  auto l = std::make_shared<Listener>(executor_);
  l->job = job;
  l->attempt = attempt;
  l->key = protocol::to_hex(protocol::random_bytes(32));
  l->path = (dir_ / fmt::format("engine-{}-{}.sock", job.value, attempt)).string();
  if (l->path.size() >= sizeof(sockaddr_un::sun_path))
    return std::nullopt; // too deep a profile directory for a socket: its agent's instead
  ::unlink(l->path.c_str()); // a stale one of an earlier hub of this profile
  error_code ec;
  l->acceptor.open(asio::local::stream_protocol(), ec);
  if (!ec)
    l->acceptor.bind(asio::local::stream_protocol::endpoint(l->path), ec);
  if (!ec)
    l->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    log::warn("job {}: no direct socket for its engine ({}): it goes through its agent", job,
              ec.message());
    return std::nullopt;
  }
  listeners_[job.value] = l;
  spawn_root(executor_, fmt::format("direct engine socket of job {}", job), accept_loop(l));
  return std::pair{l->path, l->key};
}

Awaitable<void> DirectEngines::accept_loop(std::shared_ptr<Listener> l) {
  while (!l->closed) {
    auto [ec, socket] = co_await l->acceptor.async_accept(use_nothrow);
    if (ec || l->closed)
      break;
    auto link = std::make_shared<net::Link>(executor_,
                                            net::make_socket_stream(std::move(socket), "engine"));
    link->start();
    std::uint64_t id = next_link_++;
    spawn_root(executor_, fmt::format("direct engine link {} of job {}", id, l->job),
               serve(id, link, l));
  }
}

Awaitable<void> DirectEngines::serve(std::uint64_t id, std::shared_ptr<net::Link> link,
                                     std::shared_ptr<Listener> l) {
  auto alive = alive_;
  auto accepted = co_await net::accept_engine(link, l->key);
  if (!*alive)
    co_return;
  if (!accepted.ok()) {
    log::warn("job {}: a direct engine connection was refused: {}", l->job,
              accepted.error().to_string());
    co_return;
  }
  if (l->closed) {
    link->close(make_error(ErrorCode::Cancelled, "the engine's job ended"));
    co_return;
  }
  links_[id] = {l->job, link};
  auto peer = std::make_shared<DirectPeer>(
      link, fmt::format("engine of job {} (direct link {})", l->job, id - kFirstLink + 1));
  while (true) {
    auto frame = co_await link->receive();
    if (!*alive)
      co_return;
    if (!frame.ok())
      break;
    auto& env = *frame;
    if (env.has_heartbeat() || env.has_goodbye())
      continue;
    if (auto routed = protocol::check_route(protocol::Role::Engine, env); !routed.ok()) {
      link->close_with_error(routed.error()); // an engine is the last hop: no routes
      break;
    }
    if (!protocol::may_send(protocol::Role::Engine, env.body_case())) {
      link->close_with_error(protocol::not_allowed(protocol::Role::Engine, env));
      break;
    }
    if (env.has_engine_ready()) { // which job it is, its socket says
      env.mutable_engine_ready()->set_job_id(l->job.value);
      env.mutable_engine_ready()->set_attempt(l->attempt);
    }
    if (frame_)
      frame_(peer, id, l->job, env);
  }
  links_.erase(id);
  if (closed_)
    closed_(id);
}

void DirectEngines::ended(JobId job) {
  if (auto it = listeners_.find(job.value); it != listeners_.end()) {
    it->second->closed = true;
    error_code ignored;
    it->second->acceptor.close(ignored);
    ::unlink(it->second->path.c_str());
    listeners_.erase(it);
  }
  for (auto& [id, l] : links_)
    if (l.first == job)
      l.second->close(make_error(ErrorCode::Cancelled, "the engine's job ended"));
}

void DirectEngines::close_all() {
  std::vector<JobId> jobs;
  for (auto& [job, l] : listeners_)
    jobs.push_back(l->job);
  for (auto job : jobs)
    ended(job);
  for (auto& [id, l] : links_)
    l.second->close(make_error(ErrorCode::Cancelled, "the hub is stopping"));
}

} // namespace sortie::hub
