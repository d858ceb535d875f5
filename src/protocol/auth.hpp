// SPDX-License-Identifier: Apache-2.0
// The handshake's cryptography (docs/protocol/02-handshake.md): both sides prove knowledge of the
// profile token with HMAC-SHA256 over fresh nonces; the token itself never crosses the wire.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "protocol/sortie.pb.h"

namespace sortie::protocol {

inline constexpr std::size_t kNonceSize = 32;

/// Cryptographically random bytes (OpenSSL RAND_bytes).
std::string random_bytes(std::size_t n);
/// Lower-case hex of `bytes`.
std::string to_hex(std::string_view bytes);
/// The hub's proof: HMAC-SHA256(key, "sortie-hub-v1" | peer_nonce | hub_nonce).
std::string hub_proof(std::string_view key, std::string_view peer_nonce, std::string_view hub_nonce);
/// The peer's proof: HMAC-SHA256(key, "sortie-peer-v1" | role | hub_nonce | peer_nonce).
std::string peer_proof(std::string_view key,
                       pb::Role role,
                       std::string_view hub_nonce,
                       std::string_view peer_nonce);
/// Constant-time comparison.
bool proofs_equal(std::string_view a, std::string_view b);
/// A reconnecting agent's proof that it holds its session key (02-handshake.md §2.6).
std::string agent_session_proof(std::string_view session_key, std::uint64_t agent_id,
                                std::uint64_t epoch);

} // namespace sortie::protocol
