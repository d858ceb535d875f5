// SPDX-License-Identifier: Apache-2.0
// The agent's engine sockets: accept, authenticate with the engine's key, route both ways.
#include "agent/engines.hpp"

#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "common/log.hpp"
#include "protocol/auth.hpp"
#include "protocol/frame.hpp"
#include "protocol/handshake.hpp"
#include "protocol/roles.hpp"
#include "protocol/socket_stream.hpp"

namespace sortie::agent {
namespace {

/// The directory holding the `sortie` Python package beside this program: <build>/python in a
/// build tree (the program is <build>/apps/sortie), <prefix>/lib/sortie/python installed.
std::string find_python_path() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec)
    return {};
  auto dir = exe.parent_path();
  for (auto candidate : {dir.parent_path() / "python", dir.parent_path() / "lib/sortie/python"})
    if (std::filesystem::exists(candidate / "sortie" / "__init__.py", ec))
      return candidate.string();
  return {};
}

} // namespace

struct EngineBridge::Listener {
  std::uint64_t job = 0;
  std::uint32_t attempt = 0;
  std::string key;
  std::string name; ///< "@sortie-engine-...": an abstract socket name
  asio::local::stream_protocol::acceptor acceptor;
  bool closed = false;
  explicit Listener(asio::io_context& io) : acceptor(io) {}
};

EngineBridge::EngineBridge(asio::io_context& io, std::function<bool(pb::Envelope&)> up)
    : io_(io), up_(std::move(up)), python_path_(find_python_path()) {}

EngineBridge::~EngineBridge() { close_all(); }

bool EngineBridge::listen(std::uint64_t job, std::uint32_t attempt, std::string socket,
                          std::string key, std::shared_ptr<Listener>& made) {
  ended(job); // an earlier attempt's, if any
  bool given = !socket.empty(); // by the hub, for every node of an MPI engine job
  auto l = std::make_shared<Listener>(io_);
  l->job = job;
  l->attempt = attempt;
  l->key = key.empty() ? protocol::to_hex(protocol::random_bytes(32)) : std::move(key);
  l->name = socket.empty() ? "@sortie-engine-" + protocol::to_hex(protocol::random_bytes(12))
                           : std::move(socket);
  made = l;
  if (l->name.size() < 2 || l->name[0] != '@') {
    log::error("job {}: engine socket name '{}' is not an abstract name", job, l->name);
    return false;
  }
  std::string abstract = l->name;
  abstract[0] = '\0';
  error_code ec;
  l->acceptor.open(asio::local::stream_protocol(), ec);
  if (!ec)
    l->acceptor.bind(asio::local::stream_protocol::endpoint(abstract), ec);
  if (!ec)
    l->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    if (ec == asio::error::address_in_use && given)
      log::info("job {}: its engine socket is served by another agent on this host", job);
    else // the engine starts without a socket and says so when it cannot connect
      log::error("job {}: cannot make its engine socket: {}", job, ec.message());
    return false;
  }
  listeners_[job] = l;
  spawn_root(io_.get_executor(), fmt::format("engine socket of job {}", job), accept_loop(l));
  return true;
}

std::vector<std::string> EngineBridge::prepare(std::uint64_t job, std::uint32_t attempt,
                                               const std::string& socket,
                                               const std::string& key) {
  std::shared_ptr<Listener> l;
  listen(job, attempt, socket, key, l);
  std::vector<std::string> env;
  env.push_back("SORTIE_ENGINE_SOCKET=" + l->name);
  env.push_back("SORTIE_ENGINE_KEY=" + l->key);
  if (!python_path_.empty()) {
    const char* old = std::getenv("PYTHONPATH");
    env.push_back("PYTHONPATH=" + python_path_ + (old && *old ? std::string(":") + old : ""));
  }
  return env;
}

void EngineBridge::host(std::uint64_t job, std::uint32_t attempt, const std::string& socket,
                        const std::string& key) {
  std::shared_ptr<Listener> l;
  if (listen(job, attempt, socket, key, l))
    log::info("job {}: serving the engine socket of its MPI ranks on this node", job);
}

Awaitable<void> EngineBridge::accept_loop(std::shared_ptr<Listener> l) {
  while (!l->closed) {
    auto [ec, socket] = co_await l->acceptor.async_accept(use_nothrow);
    if (ec || l->closed)
      break;
    auto link = std::make_shared<net::Link>(
        io_.get_executor(), net::make_socket_stream(std::move(socket), "engine"));
    link->start();
    std::uint64_t id = next_link_++;
    spawn_root(io_.get_executor(), fmt::format("engine link {} of job {}", id, l->job),
               serve(id, link, l));
  }
}

Awaitable<void> EngineBridge::serve(std::uint64_t id, std::shared_ptr<net::Link> link,
                                    std::shared_ptr<Listener> l) {
  auto accepted = co_await net::accept_engine(link, l->key);
  if (!accepted.ok()) {
    log::warn("job {}: an engine connection was refused: {}", l->job, accepted.error().to_string());
    co_return;
  }
  if (l->closed) {
    link->close(make_error(ErrorCode::Cancelled, "the engine's job ended"));
    co_return;
  }
  links_[id] = EngineLink{l->job, l->attempt, link};
  routes_.add(id, protocol::Role::Engine);
  while (true) {
    auto frame = co_await link->receive();
    if (!frame.ok())
      break;
    auto& env = *frame;
    if (env.has_heartbeat() || env.has_goodbye())
      continue;
    if (!protocol::may_send(protocol::Role::Engine, env.body_case())) {
      link->close_with_error(protocol::not_allowed(protocol::Role::Engine, env));
      break;
    }
    if (env.has_engine_ready()) { // which job it is, the agent says
      env.mutable_engine_ready()->set_job_id(l->job);
      env.mutable_engine_ready()->set_attempt(l->attempt);
    }
    if (auto r = routes_.up(id, env); !r.ok()) {
      link->close_with_error(r.error());
      break;
    }
    up_(env); // dropped without a hub: the engine sends it again after EngineRejoin
  }
  routes_.remove(id);
  links_.erase(id);
}

void EngineBridge::down(pb::Envelope& env) {
  auto id = routes_.down(env);
  if (!id.ok()) {
    log::debug("dropping the hub's '{}' for an engine that is gone: {}", protocol::body_name(env),
               id.error().to_string());
    return;
  }
  if (auto it = links_.find(*id); it != links_.end())
    it->second.link->send(env);
}

void EngineBridge::rejoin() {
  pb::Envelope env;
  env.mutable_engine_rejoin();
  for (auto& [id, e] : links_)
    e.link->send(env);
}

void EngineBridge::ended(std::uint64_t job) {
  if (auto it = listeners_.find(job); it != listeners_.end()) {
    it->second->closed = true;
    error_code ignored;
    it->second->acceptor.close(ignored);
    listeners_.erase(it);
  }
  for (auto& [id, e] : links_)
    if (e.job == job)
      e.link->close(make_error(ErrorCode::Cancelled, "the engine's job ended"));
}

void EngineBridge::close_all() {
  std::vector<std::uint64_t> jobs;
  for (auto& [job, l] : listeners_)
    jobs.push_back(job);
  for (auto job : jobs)
    ended(job);
  for (auto& [id, e] : links_)
    e.link->close(make_error(ErrorCode::Cancelled, "the agent is stopping"));
}

} // namespace sortie::agent
