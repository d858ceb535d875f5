// SPDX-License-Identifier: Apache-2.0
// The connecting side of the handshake (docs/protocol/02-handshake.md) as steps without I/O: the
// event-loop Link (handshake.cpp) and the blocking link of the client library each only move
// the frames these steps make and check.
#pragma once

#include <string>

#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::protocol {

class ClientHandshake {
public:
  /// `key`: the raw token (token_key()) or an ssh link's own key.
  ClientHandshake(std::string key, pb::Role role, std::string peer_name);

  /// The first frame: Hello with a fresh nonce.
  pb::Envelope hello() const;
  /// Checks the hub's Challenge (the hub must prove it knows the key first) and makes the Auth
  /// to send. An ErrorReply from the hub comes back as its error.
  Result<pb::Envelope> on_challenge(const pb::Envelope& env) const;
  /// Checks the Welcome that ends the handshake.
  Result<pb::Welcome> on_welcome(const pb::Envelope& env) const;

private:
  std::string key_;
  pb::Role role_;
  std::string peer_name_;
  std::string nonce_;
};

/// The error for a frame that is not the one expected (or the hub's ErrorReply).
Error unexpected_frame(const pb::Envelope& env, const char* expected);

} // namespace sortie::protocol
