// SPDX-License-Identifier: Apache-2.0
// Profiles: where a profile's directory and unix socket are, and making them private.
#include "common/profile.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <unistd.h>

#include <cstdlib>
#include <functional>

#include <fmt/format.h>

#include "common/files.hpp"

namespace sortie {
namespace {

bool valid_profile_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.')
    return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return false;
  return true;
}

} // namespace

std::filesystem::path Profile::socket_file() const {
  auto p = dir / "hub.sock";
  if (p.string().size() < 100)
    return p;
  auto h = std::hash<std::string>{}(dir.string());
  return std::filesystem::path(fmt::format("/tmp/sortie-{}", ::getuid())) /
         fmt::format("{:016x}.sock", h);
}

Result<Profile> resolve_profile(const std::string& name_flag) {
  std::string name = name_flag;
  if (name.empty()) {
    const char* env = std::getenv("SORTIE_PROFILE");
    name = env && *env ? env : "default";
  }
  if (!valid_profile_name(name))
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("'{}' is not a valid profile name: use letters, digits, '-', "
                                  "'_' and '.' (at most 64, not starting with '.')",
                                  name));
  std::filesystem::path home;
  if (const char* h = std::getenv("SORTIE_HOME"); h && *h) {
    home = h;
  } else if (const char* u = std::getenv("HOME"); u && *u) {
    home = std::filesystem::path(u) / ".sortie";
  } else {
    return make_error(ErrorCode::FailedPrecondition,
                      "neither SORTIE_HOME nor HOME is set: set SORTIE_HOME to the directory that "
                      "should hold sortie's profiles");
  }
  return Profile{name, std::filesystem::absolute(home) / name};
}

Profile profile_at(const std::filesystem::path& dir) {
  return Profile{dir.filename().string(), std::filesystem::absolute(dir)};
}

Result<void> create_profile_dirs(const Profile& profile) {
  SORTIE_TRY(make_dirs(profile.dir, 0700));
  SORTIE_TRY(make_dirs(profile.output_dir(), 0700));
  SORTIE_TRY(make_dirs(profile.agent_log_dir(), 0700));
  auto sock = profile.socket_file();
  if (sock.parent_path() != profile.dir) {
    // A shared place (/tmp): the directory must be ours and private, or another user could
    // put a socket of theirs where clients look for the hub.
    auto dir = sock.parent_path();
    SORTIE_TRY(make_dirs(dir, 0700));
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::getuid() ||
        (st.st_mode & 077) != 0)
      return make_error(ErrorCode::PermissionDenied,
                        fmt::format("{} must be a directory owned by you with mode 700 (it holds "
                                    "the hub's socket): remove it, or give it to yourself with "
                                    "chmod 700",
                                    dir.string()));
  }
  return ok_result();
}

} // namespace sortie
