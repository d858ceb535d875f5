// SPDX-License-Identifier: Apache-2.0
// Routing frames through nodes that carry many peers on one link (docs/protocol/04-routing.md):
// a relay for the agents behind it, an agent for the engines it runs. On the way to the hub each
// routing node pushes the id of the link the frame came in on; on the way back each pops the last
// hop and forwards the frame on that link. A peer that may not route (a client, an engine) never
// sends a route: one that does is refused as forged, as is a route longer than kMaxHops or one
// naming a link the node does not have.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "protocol/roles.hpp"
#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::protocol {

inline constexpr int kMaxHops = 8;

/// Whether peers in this role may carry frames for others (relays, agents for their engines).
bool may_route(Role role);

/// A frame as it arrives from a peer in `role`: its route must be empty unless the role may
/// route, and never longer than kMaxHops.
Result<void> check_route(Role role, const pb::Envelope& env);

/// One routing node's links to the peers behind it, by the ids it gave them.
class RouteTable {
public:
  void add(std::uint64_t link, Role role) { links_[link] = role; }
  void remove(std::uint64_t link) { links_.erase(link); }

  /// A frame from the peer behind `link`, on its way up: checked, then `link` pushed.
  Result<void> up(std::uint64_t link, pb::Envelope& env) const;
  /// A frame on its way down: its last hop is popped and returned, the link to send it on.
  Result<std::uint64_t> down(pb::Envelope& env) const;

private:
  std::unordered_map<std::uint64_t, Role> links_;
};

} // namespace sortie::protocol
