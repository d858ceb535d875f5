// SPDX-License-Identifier: Apache-2.0
// hub.json: reading and validating it, and writing it atomically with mode 0600.
#include "common/hub_file.hpp"

#include <sys/stat.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/files.hpp"

namespace sortie {

Result<HubFile> read_hub_file(const std::filesystem::path& path) {
  auto text = read_file(path);
  if (!text.ok()) {
    if (text.error().code == ErrorCode::NotFound)
      return make_error(ErrorCode::NotFound,
                        fmt::format("no hub has been started for this profile ({} does not "
                                    "exist): run `sortie hub start`",
                                    path.string()));
    return text.error();
  }
  struct stat st{};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    return make_error(ErrorCode::PermissionDenied,
                      fmt::format("{} is readable by other users (mode {:o}); it holds the hub's "
                                  "token: run `chmod 600 {}`",
                                  path.string(), st.st_mode & 0777, path.string()));
  try {
    auto j = nlohmann::json::parse(*text);
    HubFile f;
    f.version = j.value("version", 1);
    f.profile = j.value("profile", "");
    f.pid = j.value("pid", 0);
    f.host = j.value("host", "");
    f.port = j.value("port", static_cast<std::uint16_t>(0));
    f.socket = j.value("socket", "");
    f.token = j.value("token", "");
    f.tls_fingerprint = j.value("tls_fingerprint", "");
    f.started_ms = j.value("started_ms", static_cast<std::int64_t>(0));
    if (f.version != 1)
      return make_error(ErrorCode::FailedPrecondition,
                        fmt::format("{} has version {}, this sortie reads version 1: use the "
                                    "sortie that started the hub",
                                    path.string(), f.version));
    if (f.token.size() < 32)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{} has no valid token: restart the hub to rewrite it",
                                    path.string()));
    return f;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} is not valid JSON ({}): restart the hub to rewrite it",
                                  path.string(), e.what()));
  }
}

Result<void> write_hub_file(const std::filesystem::path& path, const HubFile& f) {
  nlohmann::json j = {{"version", f.version}, {"profile", f.profile}, {"pid", f.pid},
                      {"host", f.host},       {"port", f.port},       {"socket", f.socket},
                      {"token", f.token},     {"tls_fingerprint", f.tls_fingerprint},
                      {"started_ms", f.started_ms}};
  return write_file_atomic(path, j.dump(2) + "\n", 0600);
}

Result<std::string> token_key(const HubFile& file) {
  const std::string& hex = file.token;
  if (hex.size() % 2)
    return make_error(ErrorCode::InvalidArgument, "the hub token is not valid hex");
  std::string out;
  out.reserve(hex.size() / 2);
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'a' && c <= 'f')
      return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
      return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < hex.size(); i += 2) {
    int a = nib(hex[i]), b = nib(hex[i + 1]);
    if (a < 0 || b < 0)
      return make_error(ErrorCode::InvalidArgument, "the hub token is not valid hex");
    out.push_back(static_cast<char>(a * 16 + b));
  }
  return out;
}

} // namespace sortie
