// SPDX-License-Identifier: Apache-2.0
// hub.json, the connection file of a running hub: where it listens and the token that proves a
// peer belongs to this profile. Written with mode 0600; its token is never logged.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "sortie/result.hpp"

namespace sortie {

struct HubFile {
  int version = 1;
  std::string profile;
  int pid = 0;
  std::string host;   ///< TCP address, e.g. "127.0.0.1"
  std::uint16_t port = 0;
  std::string socket; ///< unix socket path; preferred by peers on the same machine
  std::string token;  ///< hex; the HMAC key of the handshake (docs/protocol/02-handshake.md)
  std::string tls_fingerprint; ///< hex SHA-256 of the hub's TLS certificate, pinned by TCP peers
  std::int64_t started_ms = 0;
};

/// Reads and validates hub.json. NotFound when there is none (no hub was ever started here).
Result<HubFile> read_hub_file(const std::filesystem::path& path);
/// Writes hub.json atomically with mode 0600.
Result<void> write_hub_file(const std::filesystem::path& path, const HubFile& file);
/// Decodes the token's hex into the raw key bytes.
Result<std::string> token_key(const HubFile& file);

} // namespace sortie
