// SPDX-License-Identifier: Apache-2.0
// The connecting side of the handshake as steps without I/O, shared by both kinds of link.
#include "protocol/client_handshake.hpp"

#include <fmt/format.h>

#include "common/version.hpp"
#include "protocol/auth.hpp"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"

namespace sortie::protocol {

ClientHandshake::ClientHandshake(std::string key, pb::Role role, std::string peer_name)
    : key_(std::move(key)), role_(role), peer_name_(std::move(peer_name)),
      nonce_(random_bytes(kNonceSize)) {}

pb::Envelope ClientHandshake::hello() const {
  pb::Envelope env;
  auto* h = env.mutable_hello();
  h->set_protocol_version(kProtocolVersion);
  h->set_role(role_);
  h->set_nonce(nonce_);
  h->set_peer_name(peer_name_);
  h->set_software_version(kSortieVersion);
  return env;
}

Result<pb::Envelope> ClientHandshake::on_challenge(const pb::Envelope& env) const {
  if (!env.has_challenge())
    return unexpected_frame(env, "challenge");
  const auto& c = env.challenge();
  if (!proofs_equal(c.proof(), hub_proof(key_, nonce_, c.nonce())))
    return make_error(ErrorCode::PermissionDenied,
                      "the hub could not prove it knows this profile's token: hub.json belongs "
                      "to another hub, or another program listens at its address");
  pb::Envelope auth;
  auth.mutable_auth()->set_proof(peer_proof(key_, role_, c.nonce(), nonce_));
  return auth;
}

Result<pb::Welcome> ClientHandshake::on_welcome(const pb::Envelope& env) const {
  if (!env.has_welcome())
    return unexpected_frame(env, "welcome");
  return env.welcome();
}

Error unexpected_frame(const pb::Envelope& env, const char* expected) {
  if (env.has_error())
    return net::error_from_pb(env.error());
  return make_error(ErrorCode::InvalidArgument,
                    fmt::format("protocol error: expected {}, got {}", expected, body_name(env)));
}

} // namespace sortie::protocol
