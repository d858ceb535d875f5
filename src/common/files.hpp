// SPDX-License-Identifier: Apache-2.0
// File helpers: whole-file reads and atomic replacement (write to a temporary, fsync, rename).
#pragma once

#include <filesystem>
#include <string>

#include "sortie/result.hpp"

namespace sortie {

Result<std::string> read_file(const std::filesystem::path& path);
/// Replaces `path` atomically with `content`, created with permission bits `mode` (e.g. 0600).
Result<void> write_file_atomic(const std::filesystem::path& path, const std::string& content,
                               unsigned mode);
/// Creates a directory and its parents with the given mode for the ones it creates.
Result<void> make_dirs(const std::filesystem::path& path, unsigned mode);
/// The errno text, e.g. "No such file or directory".
std::string errno_text(int err);

} // namespace sortie
