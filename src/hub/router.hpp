// SPDX-License-Identifier: Apache-2.0
// Which room handles which message. Each room registers the messages it takes and from which
// role; the router refuses what the sender's role may not send (protocol/roles.hpp) with one
// error, and what no room takes from that role with another. A client that sends what it may
// not gets an ErrorReply and keeps its connection; any other peer's link is closed, since an
// agent that does so is broken or hostile.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>

#include "hub/peer.hpp"
#include "hub/state.hpp"
#include "protocol/roles.hpp"

namespace sortie::hub {

using protocol::Role;

/// Who sent a message.
struct Sender {
  std::shared_ptr<Peer> peer;
  Role role = Role::Client;
  Agent* agent = nullptr; ///< the registered agent: for role Agent, and Engine (its agent)
  std::uint64_t rid = 0;  ///< the request id to echo in replies
  /// Role Engine: the frame came routed through `agent` from the engine behind its link `via`
  /// (the engine's job id, 04-routing.md); replies go back down that route.
  std::uint64_t via = 0;
};

class Router {
public:
  using Handler = std::function<void(const Sender&, pb::Envelope&)>;
  /// `role` may send `body` (the protocol's table says so: checked) and `handler` takes it.
  void add(pb::Envelope::BodyCase body, Role role, Handler handler);
  void dispatch(const Sender& from, pb::Envelope& env) const;
  /// Refuses a message: an ErrorReply for a client or an engine (routed back to it), a closed
  /// link for anyone else.
  static void refuse(const Sender& from, const Error& error);

private:
  static int key(pb::Envelope::BodyCase body, Role role) {
    return static_cast<int>(body) * protocol::kRoles + static_cast<int>(role);
  }
  std::unordered_map<int, Handler> handlers_;
};

} // namespace sortie::hub
