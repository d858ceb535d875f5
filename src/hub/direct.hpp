// SPDX-License-Identifier: Apache-2.0
// Direct engine links (docs/protocol/05-tasks.md §5.9): an engine of a local pilot runs on the
// hub's machine, so the hub gives it a socket of its own (a file beside hub.sock) and a key;
// the engine connects there first, and its frames skip the agent's hop both ways. Its agent still
// makes its usual socket: the engine falls back to it when this link ends (the hub restarted), so
// nothing else depends on the direct link.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "hub/peer.hpp"
#include "hub/state.hpp"
#include "protocol/asio.hpp"
#include "protocol/link.hpp"

namespace sortie::hub {

class DirectEngines {
public:
  /// A frame from the engine of `job` behind direct link `link` (checked: role engine may send
  /// it; an EngineReady carries the job and attempt the socket is for).
  using Frame = std::function<void(const std::shared_ptr<Peer>& peer, std::uint64_t link,
                                   JobId job, pb::Envelope& env)>;
  using Closed = std::function<void(std::uint64_t link)>;

  DirectEngines(asio::any_io_executor executor, std::filesystem::path dir);
  ~DirectEngines();
  DirectEngines(const DirectEngines&) = delete;
  DirectEngines& operator=(const DirectEngines&) = delete;

  /// Where frames go (the tasks room).
  void on(Frame frame, Closed closed);
  /// A socket for this attempt of an engine job, listening from now on: its path and key
  /// (nullopt if it cannot be made: the engine then uses its agent's).
  std::optional<std::pair<std::string, std::string>> listen(JobId job, std::uint32_t attempt);
  /// The job's attempt ended: its socket and links go.
  void ended(JobId job);
  void close_all();

  /// Direct links have ids from here up, apart from agents' link ids (Sender::via).
  static constexpr std::uint64_t kFirstLink = std::uint64_t{1} << 40;

private:
  struct Listener;
  Awaitable<void> accept_loop(std::shared_ptr<Listener> listener);
  Awaitable<void> serve(std::uint64_t id, std::shared_ptr<net::Link> link,
                        std::shared_ptr<Listener> listener);

  asio::any_io_executor executor_;
  std::filesystem::path dir_;
  Frame frame_;
  Closed closed_;
  std::map<std::uint64_t, std::shared_ptr<Listener>> listeners_; ///< by job
  std::map<std::uint64_t, std::pair<JobId, std::shared_ptr<net::Link>>> links_; ///< by link id
  std::uint64_t next_link_ = kFirstLink;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

} // namespace sortie::hub
