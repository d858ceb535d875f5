// SPDX-License-Identifier: Apache-2.0
// A blocking link for the client library: POSIX sockets, poll(), TLS on TCP.
#include "protocol/blocking_link.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include "protocol/auth.hpp"
#include "protocol/client_handshake.hpp"
#include "protocol/errors.hpp"
#include "protocol/tls.hpp"

namespace sortie::net {
namespace {

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Connects a non-blocking socket within the timeout, then makes it blocking again.
Result<void> connect_with_timeout(int fd, const sockaddr* addr, socklen_t len,
                                  std::int64_t timeout_ms, const std::string& what) {
  int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  int rc = ::connect(fd, addr, len);
  if (rc != 0 && errno != EINPROGRESS)
    return make_error(ErrorCode::Unavailable,
                      fmt::format("cannot connect to {}: {}", what, std::strerror(errno)));
  if (rc != 0) {
    pollfd p{fd, POLLOUT, 0};
    int n = ::poll(&p, 1, static_cast<int>(timeout_ms));
    if (n == 0)
      return make_error(ErrorCode::Timeout,
                        fmt::format("cannot connect to {}: no answer within {} ms", what,
                                    timeout_ms));
    int err = 0;
    socklen_t el = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (n < 0 || err != 0)
      return make_error(ErrorCode::Unavailable, fmt::format("cannot connect to {}: {}", what,
                                                            std::strerror(n < 0 ? errno : err)));
  }
  ::fcntl(fd, F_SETFL, flags);
  return ok_result();
}

/// Writes all of `data` to the blocking socket `fd`.
Result<void> write_all(int fd, const std::string& data, const std::string& peer) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return make_error(ErrorCode::Unavailable,
                        fmt::format("lost the connection to the hub: {}", std::strerror(errno)),
                        peer);
    }
    done += static_cast<size_t>(n);
  }
  return ok_result();
}

} // namespace

BlockingLink::BlockingLink(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}

BlockingLink::BlockingLink() = default;

BlockingLink::~BlockingLink() { close(); }

BlockingLink::BlockingLink(BlockingLink&& other) noexcept
    : fd_(other.fd_), tls_(std::move(other.tls_)), peer_(std::move(other.peer_)),
      decoder_(std::move(other.decoder_)), out_(std::move(other.out_)) {
  other.fd_ = -1;
}

BlockingLink& BlockingLink::operator=(BlockingLink&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.fd_;
    tls_ = std::move(other.tls_);
    peer_ = std::move(other.peer_);
    decoder_ = std::move(other.decoder_);
    out_ = std::move(other.out_);
    other.fd_ = -1;
  }
  return *this;
}

void BlockingLink::close() {
  tls_.reset();
  if (fd_ >= 0)
    ::close(fd_);
  fd_ = -1;
}

Result<BlockingLink> BlockingLink::connect_unix(const std::string& path, std::int64_t timeout_ms) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("unix socket path is too long: {}", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  socklen_t len = sizeof addr;
  if (!path.empty() && path[0] == '@') { // abstract: a leading NUL, and exactly its length
    addr.sun_path[0] = '\0';
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return make_error(ErrorCode::Io, fmt::format("socket(): {}", std::strerror(errno)));
  auto r = connect_with_timeout(fd, reinterpret_cast<sockaddr*>(&addr), len, timeout_ms, path);
  if (!r.ok()) {
    ::close(fd);
    return r.error();
  }
  return BlockingLink(fd, "unix:" + path);
}

Result<BlockingLink> BlockingLink::connect_tcp(const std::string& host,
                                               std::uint16_t port,
                                               std::int64_t timeout_ms,
                                               const std::string& fingerprint) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::string what = fmt::format("{}:{}", host, port);
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0)
    return make_error(ErrorCode::Unavailable,
                      fmt::format("cannot resolve {}: {}", host, ::gai_strerror(rc)));
  Error last = make_error(ErrorCode::Unavailable, "no address for " + what);
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
      continue;
    auto c = connect_with_timeout(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms, what);
    if (c.ok()) {
      ::freeaddrinfo(res);
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto tls = BlockingTls::connect(fd, fingerprint, timeout_ms, what);
      if (!tls.ok()) {
        ::close(fd);
        return tls.error();
      }
      BlockingLink link(fd, "tcp:" + what);
      link.tls_ = std::move(*tls);
      return link;
    }
    last = c.error();
    ::close(fd);
  }
  ::freeaddrinfo(res);
  return last;
}

Result<void> BlockingLink::send(const pb::Envelope& env) {
  if (fd_ < 0)
    return make_error(ErrorCode::Unavailable,
                        "not connected to the hub (the connection was lost or closed): connect "
                        "again");
  out_.clear();
  protocol::encode_frame(env, out_);
  if (tls_) {
    auto r = tls_->write(out_.data(), out_.size());
    if (!r.ok()) {
      close();
      return r.error().with_context(peer_);
    }
    return ok_result();
  }
  if (auto r = write_all(fd_, out_, peer_); !r.ok()) {
    close();
    return r;
  }
  return ok_result();
}

Result<void> BlockingLink::send_alongside(const pb::Envelope& env, std::string& buffer) const {
  if (!can_send_alongside())
    return make_error(ErrorCode::FailedPrecondition,
                      "a TLS link sends from its receiving thread only");
  buffer.clear();
  protocol::encode_frame(env, buffer);
  return write_all(fd_, buffer, peer_);
}

Result<pb::Envelope> BlockingLink::receive(std::int64_t timeout_ms, std::int64_t total_ms) {
  std::int64_t end = total_ms < 0 ? -1 : now_ms() + total_ms;
  auto bounded = [end](std::int64_t d) { return end < 0 ? d : d < 0 ? end : std::min(d, end); };
  std::int64_t deadline = bounded(timeout_ms < 0 ? -1 : now_ms() + timeout_ms);
  pb::Envelope env;
  while (true) {
    if (fd_ < 0)
      return make_error(ErrorCode::Unavailable,
                        "not connected to the hub (the connection was lost or closed): connect "
                        "again");
    Error error;
    switch (decoder_.next(env, error)) {
    case protocol::FrameDecoder::Status::Frame:
      if (env.has_heartbeat()) {
        // The timeout bounds silence: a heartbeat shows the hub is alive.
        if (timeout_ms >= 0)
          deadline = bounded(now_ms() + timeout_ms);
        continue;
      }
      return env;
    case protocol::FrameDecoder::Status::Error:
      close();
      return error.with_context(peer_);
    case protocol::FrameDecoder::Status::NeedMore:
      break;
    }
    auto span = decoder_.prepare();
    if (tls_) { // OpenSSL may hold decrypted bytes already: ask it before polling
      auto [io, got] = tls_->read(span.data(), span.size());
      if (io == BlockingTls::Io::Done) {
        decoder_.commit(got);
        continue;
      }
      if (io != BlockingTls::Io::WantRead) {
        std::string why = io == BlockingTls::Io::Closed ? "the hub closed the connection"
                                                        : tls_->error();
        close();
        return make_error(ErrorCode::Unavailable, why, peer_);
      }
    }
    int wait = -1;
    if (deadline >= 0) {
      std::int64_t left = deadline - now_ms();
      if (left <= 0)
        return make_error(ErrorCode::Timeout, "no answer from the hub in time", peer_);
      wait = static_cast<int>(left);
    }
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = ::poll(p, wake_fd_ >= 0 ? 2 : 1, wait);
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0)
      return make_error(ErrorCode::Timeout, "no answer from the hub in time", peer_);
    if (wake_fd_ >= 0 && (p[1].revents & POLLIN) && !(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
      return make_error(ErrorCode::Cancelled, "woken");
    if (tls_)
      continue;
    ssize_t got = ::recv(fd_, span.data(), span.size(), 0);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0) {
      int err = got < 0 ? errno : 0;
      close();
      return make_error(ErrorCode::Unavailable,
                        err ? fmt::format("lost the connection to the hub: {}", std::strerror(err))
                            : std::string("the hub closed the connection"),
                        peer_);
    }
    decoder_.commit(static_cast<size_t>(got));
  }
}

Result<pb::Welcome> BlockingLink::handshake(const std::string& key,
                                            pb::Role role,
                                            const std::string& peer_name,
                                            std::int64_t timeout_ms) {
  protocol::ClientHandshake steps(key, role, peer_name);
  auto fail = [&](const Error& e) {
    close();
    return e.with_context(peer_);
  };
  SORTIE_TRY(send(steps.hello()));
  SORTIE_ASSIGN_OR_RETURN(challenge, receive(timeout_ms));
  auto auth = steps.on_challenge(challenge);
  if (!auth.ok())
    return fail(auth.error());
  SORTIE_TRY(send(*auth));
  SORTIE_ASSIGN_OR_RETURN(welcome, receive(timeout_ms));
  auto done = steps.on_welcome(welcome);
  if (!done.ok())
    return fail(done.error());
  decoder_.set_max_frame(protocol::kDefaultMaxFrame);
  return *done;
}

} // namespace sortie::net
