// SPDX-License-Identifier: Apache-2.0
// Who may send what: the role of each end of a link (client, agent, hub; engine and relay to
// come) and, for every message of the Envelope, the roles that may send it. The hub's router and
// the agent both refuse a message its sender's role may not send, with one error.
#pragma once

#include <cstdint>

#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::protocol {

enum class Role : std::uint8_t { Client, Agent, Hub, Engine, Relay };
inline constexpr int kRoles = 5;

/// "client", "agent", ...
const char* role_name(Role role);
/// The roles that may send `body`, as bits (1 << Role); 0 for a body the protocol does not know.
std::uint32_t senders_of(pb::Envelope::BodyCase body);
inline bool may_send(Role role, pb::Envelope::BodyCase body) {
  return (senders_of(body) >> static_cast<int>(role)) & 1u;
}
/// "protocol error: a client may not send 'assign'" (InvalidArgument).
Error not_allowed(Role role, const pb::Envelope& env);

} // namespace sortie::protocol
