// SPDX-License-Identifier: Apache-2.0
// A profile is a directory holding one hub's configuration, store, connection file and logs:
// $SORTIE_HOME/<name>, by default ~/.sortie/default (docs/architecture.md §2).
#pragma once

#include <filesystem>
#include <string>

#include "sortie/result.hpp"

namespace sortie {

struct Profile {
  std::string name;
  std::filesystem::path dir;

  std::filesystem::path hub_file() const { return dir / "hub.json"; }
  /// The hub's TLS certificate and key (docs/protocol/02-handshake.md §2.7).
  std::filesystem::path tls_cert_file() const { return dir / "hub.crt"; }
  std::filesystem::path tls_key_file() const { return dir / "hub.key"; }
  std::filesystem::path lock_file() const { return dir / "hub.lock"; }
  std::filesystem::path store_file() const { return dir / "store.db"; }
  /// Job and group ids the hub may have handed out, kept apart from the store (store.hpp).
  std::filesystem::path ids_file() const { return dir / "ids.reserved"; }
  std::filesystem::path log_file() const { return dir / "hub.log"; }
  std::filesystem::path config_file() const { return dir / "config.toml"; }
  std::filesystem::path output_dir() const { return dir / "output"; }
  std::filesystem::path agent_log_dir() const { return dir / "logs"; }
  /// The unix socket path. Socket paths are limited to 107 bytes, so a profile in a deep
  /// directory gets its socket under /tmp/sortie-<uid>/ instead.
  std::filesystem::path socket_file() const;
};

/// The profile named by `name` (if not empty), else $SORTIE_PROFILE, else "default", under
/// $SORTIE_HOME, else ~/.sortie. Does not create anything.
Result<Profile> resolve_profile(const std::string& name);
/// A profile at an explicit directory (used by agents told where their hub lives).
Profile profile_at(const std::filesystem::path& dir);
/// Creates the profile directory (mode 0700) and its subdirectories.
Result<void> create_profile_dirs(const Profile& profile);

} // namespace sortie
