// SPDX-License-Identifier: Apache-2.0
// The handshake's cryptography: random bytes, HMAC-SHA256 proofs, constant-time comparison.
#include "protocol/auth.hpp"

#include <fmt/format.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "common/assert.hpp"

namespace sortie::protocol {
namespace {

std::string hmac(std::string_view key, const std::string& message) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  auto* r = HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                 reinterpret_cast<const unsigned char*>(message.data()), message.size(), out, &len);
  SORTIE_CHECK(r != nullptr, "HMAC-SHA256 is always available in OpenSSL 3");
  return std::string(reinterpret_cast<char*>(out), len);
}

} // namespace

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  SORTIE_CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) == 1,
               "the OS random source must work; without it no token or nonce is safe");
  return out;
}

std::string to_hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string hub_proof(std::string_view key, std::string_view peer_nonce, std::string_view hub_nonce) {
  std::string m = "sortie-hub-v1";
  m += peer_nonce;
  m += hub_nonce;
  return hmac(key, m);
}

std::string agent_session_proof(std::string_view session_key, std::uint64_t agent_id,
                                std::uint64_t epoch) {
  return hmac(session_key, fmt::format("sortie agent {} epoch {}", agent_id, epoch));
}

std::string peer_proof(std::string_view key,
                       pb::Role role,
                       std::string_view hub_nonce,
                       std::string_view peer_nonce) {
  std::string m = "sortie-peer-v1";
  m.push_back(static_cast<char>(role));
  m += hub_nonce;
  m += peer_nonce;
  return hmac(key, m);
}

bool proofs_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

} // namespace sortie::protocol
