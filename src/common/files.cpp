// SPDX-License-Identifier: Apache-2.0
// Whole-file reads (regular files only) and atomic, fsynced replacement.
#include "common/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace sortie {

std::string errno_text(int err) { return std::strerror(err); }

namespace {
constexpr off_t kMaxReadFileBytes = 1LL << 30; // map files of a million entries fit easily
} // namespace

Result<std::string> read_file(const std::filesystem::path& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer. Only regular files are read, so a
  // FIFO or a device cannot stall whoever reads (the hub's event loop among them).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    return make_error(err == ENOENT ? ErrorCode::NotFound
                      : err == EACCES ? ErrorCode::PermissionDenied
                                      : ErrorCode::Io,
                      fmt::format("cannot read {}: {}", path.string(), errno_text(err)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("cannot read {}: it is not a regular file (a FIFO, a device or "
                                  "a directory); give a regular file",
                                  path.string()));
  }
  if (st.st_size > kMaxReadFileBytes) {
    ::close(fd);
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("cannot read {}: it is {} bytes, more than the {} this file may "
                                  "have",
                                  path.string(), st.st_size, kMaxReadFileBytes));
  }
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int err = errno;
      ::close(fd);
      return make_error(ErrorCode::Io,
                        fmt::format("cannot read {}: {}", path.string(), errno_text(err)));
    }
    if (n == 0)
      break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > static_cast<std::size_t>(kMaxReadFileBytes)) { // it grew while we read
      ::close(fd);
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("cannot read {}: it grew past {} bytes", path.string(),
                                    kMaxReadFileBytes));
    }
  }
  ::close(fd);
  return out;
}

Result<void> write_file_atomic(const std::filesystem::path& path, const std::string& content,
                               unsigned mode) {
  std::filesystem::path tmp = path;
  tmp += fmt::format(".tmp.{}", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0)
    return make_error(ErrorCode::Io,
                      fmt::format("cannot create {}: {}", tmp.string(), errno_text(errno)));
  // open() applies the umask; make the mode exact (hub.json must be 0600, not more).
  ::fchmod(fd, mode);
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return make_error(ErrorCode::Io,
                        fmt::format("cannot write {}: {}", tmp.string(), errno_text(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return make_error(ErrorCode::Io,
                      fmt::format("cannot write {}: {}", tmp.string(), errno_text(err)));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return make_error(ErrorCode::Io,
                      fmt::format("cannot replace {}: {}", path.string(), errno_text(err)));
  }
  return ok_result();
}

Result<void> make_dirs(const std::filesystem::path& path, unsigned mode) {
  std::filesystem::path cur;
  for (const auto& part : path) {
    cur /= part;
    if (cur.empty() || cur == "/")
      continue;
    if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST)
      return make_error(ErrorCode::Io,
                        fmt::format("cannot create directory {}: {}", cur.string(),
                                    errno_text(errno)));
  }
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(ErrorCode::Io, fmt::format("{} exists but is not a directory", path.string()));
  return ok_result();
}

} // namespace sortie
