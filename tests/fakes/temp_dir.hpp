// SPDX-License-Identifier: Apache-2.0
// A temporary directory per test, removed at the end.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace sortie::testing {

class TempDir {
public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sortie-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

} // namespace sortie::testing
