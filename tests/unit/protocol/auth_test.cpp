// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "protocol/auth.hpp"
#include "protocol/client_handshake.hpp"

namespace sortie::protocol {
namespace {

TEST(Auth, ProofsDependOnKeyNoncesAndRole) {
  std::string key = random_bytes(32), other = random_bytes(32);
  std::string a = random_bytes(kNonceSize), b = random_bytes(kNonceSize);
  EXPECT_TRUE(proofs_equal(hub_proof(key, a, b), hub_proof(key, a, b)));
  EXPECT_FALSE(proofs_equal(hub_proof(key, a, b), hub_proof(other, a, b)));
  EXPECT_FALSE(proofs_equal(hub_proof(key, a, b), hub_proof(key, b, a)));
  EXPECT_FALSE(proofs_equal(peer_proof(key, pb::ROLE_CLIENT, a, b), peer_proof(key, pb::ROLE_AGENT, a, b)));
  // A peer proof can never be replayed as a hub proof.
  EXPECT_FALSE(proofs_equal(peer_proof(key, pb::ROLE_CLIENT, b, a), hub_proof(key, a, b)));
  EXPECT_FALSE(proofs_equal("short", hub_proof(key, a, b)));
}

TEST(Auth, RandomBytesDiffer) {
  EXPECT_NE(random_bytes(32), random_bytes(32));
  EXPECT_EQ(to_hex("\x01\xab"), "01ab");
}

TEST(ClientHandshake, ChecksTheHubsProofBeforeProvingItsOwn) {
  std::string key = random_bytes(32);
  ClientHandshake steps(key, pb::ROLE_CLIENT, "test");
  pb::Envelope hello = steps.hello();
  ASSERT_TRUE(hello.has_hello());
  const std::string& nonce = hello.hello().nonce();
  pb::Envelope challenge;
  std::string hub_nonce = random_bytes(kNonceSize);
  challenge.mutable_challenge()->set_nonce(hub_nonce);
  challenge.mutable_challenge()->set_proof(hub_proof(random_bytes(32), nonce, hub_nonce));
  auto refused = steps.on_challenge(challenge);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, ErrorCode::PermissionDenied);
  challenge.mutable_challenge()->set_proof(hub_proof(key, nonce, hub_nonce));
  auto auth = steps.on_challenge(challenge);
  ASSERT_TRUE(auth.ok());
  EXPECT_TRUE(proofs_equal(auth->auth().proof(),
                           peer_proof(key, pb::ROLE_CLIENT, hub_nonce, nonce)));
  pb::Envelope error;
  error.mutable_error()->set_code(pb::PERMISSION_DENIED);
  error.mutable_error()->set_message("authentication failed");
  EXPECT_EQ(steps.on_welcome(error).error().message, "authentication failed");
  EXPECT_EQ(steps.on_welcome(hello).error().code, ErrorCode::InvalidArgument);
}

} // namespace
} // namespace sortie::protocol
