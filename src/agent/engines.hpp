// SPDX-License-Identifier: Apache-2.0
// The agent's side of its engines (docs/protocol/05-tasks.md): each engine job gets a unix socket
// of its own (an abstract name: no file, no path length limit) and a key of its own, in its
// environment; the engine connects and authenticates with that key (role engine). Its frames go
// up to the hub routed through the link id the agent gave it (04-routing.md), with the job and
// attempt it runs as written by the agent; frames the hub routes to that id come down to it.
// While the agent has no hub, frames from engines are dropped: engines keep what matters
// (results not acknowledged) and send it again when told the hub is back (EngineRejoin).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/local/stream_protocol.hpp>

#include "protocol/asio.hpp"
#include "protocol/link.hpp"
#include "protocol/route.hpp"

namespace sortie::agent {

class EngineBridge {
public:
  /// `up`: sends a routed frame to the hub; false if there is no hub link now.
  EngineBridge(asio::io_context& io, std::function<bool(pb::Envelope&)> up);
  ~EngineBridge();

  /// Before an engine job starts: its socket (listening from now on) and key, and where the
  /// Python package is, as "NAME=VALUE" environment entries. An MPI engine job across nodes
  /// comes with the `socket` and `key` the hub chose (else the agent makes them).
  std::vector<std::string> prepare(std::uint64_t job, std::uint32_t attempt,
                                   const std::string& socket = {}, const std::string& key = {});
  /// An MPI engine job run from another node holds slots here (EngineHost): its ranks here
  /// connect to this socket. (Another agent on this host may serve it already: then that one.)
  void host(std::uint64_t job, std::uint32_t attempt, const std::string& socket,
            const std::string& key);
  /// The job's process ended: its engines' links close and its socket goes.
  void ended(std::uint64_t job);
  /// A frame from the hub routed to one of this agent's engines.
  void down(pb::Envelope& env);
  /// The agent is registered with a hub (again): every engine announces itself again.
  void rejoin();
  void close_all();

private:
  struct Listener;
  struct EngineLink {
    std::uint64_t job = 0;
    std::uint32_t attempt = 0;
    std::shared_ptr<net::Link> link;
  };
  Awaitable<void> accept_loop(std::shared_ptr<Listener> listener);
  /// Listens at `socket` (made up when empty) for the engines of `job`; false if it cannot.
  bool listen(std::uint64_t job, std::uint32_t attempt, std::string socket, std::string key,
              std::shared_ptr<Listener>& made);
  Awaitable<void> serve(std::uint64_t id, std::shared_ptr<net::Link> link,
                        std::shared_ptr<Listener> listener);

  asio::io_context& io_;
  std::function<bool(pb::Envelope&)> up_;
  std::map<std::uint64_t, std::shared_ptr<Listener>> listeners_; ///< by job
  std::map<std::uint64_t, EngineLink> links_;                     ///< by link id
  protocol::RouteTable routes_;
  std::uint64_t next_link_ = 1;
  std::string python_path_; ///< the sortie Python package's directory ("" if not found)
};

} // namespace sortie::agent
