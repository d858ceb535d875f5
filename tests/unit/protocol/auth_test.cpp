// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include "protocol/auth.hpp"

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

} // namespace
} // namespace sortie::protocol
