// SPDX-License-Identifier: Apache-2.0
// Both halves of the handshake (docs/protocol/02-handshake.md) as coroutines over a Link.
#pragma once

#include <string>

#include "protocol/link.hpp"

namespace sortie::net {

/// Connecting side: Hello, verify the hub's Challenge, Auth, wait for Welcome. On success the link
/// accepts full-size frames. `key` is the raw token (token_key()).
Awaitable<Result<pb::Welcome>> connect_handshake(std::shared_ptr<Link> link,
                                                 std::string key,
                                                 pb::Role role,
                                                 std::string peer_name,
                                                 std::int64_t timeout_ms);

struct Accepted {
  pb::Hello hello;
};

/// Hub side: expects Hello, answers with a Challenge, checks Auth, sends Welcome. A failure is
/// sent to the peer as an ErrorReply and the link is closed.
Awaitable<Result<Accepted>> accept_handshake(std::shared_ptr<Link> link,
                                             std::string key,
                                             pb::Welcome welcome,
                                             std::int64_t timeout_ms);

/// An engine socket's side (its agent's, or the hub's direct one): accept_handshake with the
/// engine's `key`, no heartbeats, and role engine only (anything else: PermissionDenied, sent,
/// and the link closed).
Awaitable<Result<void>> accept_engine(std::shared_ptr<Link> link, std::string key);

} // namespace sortie::net
