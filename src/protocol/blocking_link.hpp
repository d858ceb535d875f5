// SPDX-License-Identifier: Apache-2.0
// A blocking Link for the client library and the CLI: plain POSIX sockets and poll(), the same
// framing and handshake as the event-loop Link, no event loop of its own. Clients do not send
// heartbeats; they skip the hub's and use them to notice a dead hub (read timeouts).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "protocol/frame.hpp"

namespace sortie::net {

class BlockingTls;

class BlockingLink {
public:
  BlockingLink();
  ~BlockingLink();
  BlockingLink(BlockingLink&& other) noexcept;
  BlockingLink& operator=(BlockingLink&& other) noexcept;

  /// `path` starting with '@' names an abstract socket (Linux: no file).
  static Result<BlockingLink> connect_unix(const std::string& path, std::int64_t timeout_ms);
  /// TCP, then TLS: the hub's certificate must have `fingerprint` (hub.json's tls_fingerprint).
  static Result<BlockingLink> connect_tcp(const std::string& host,
                                          std::uint16_t port,
                                          std::int64_t timeout_ms,
                                          const std::string& fingerprint);

  /// Runs the connecting side of the handshake with the raw token `key`.
  Result<pb::Welcome> handshake(const std::string& key,
                                pb::Role role,
                                const std::string& peer_name,
                                std::int64_t timeout_ms);

  Result<void> send(const pb::Envelope& env);
  /// Plain (unix-socket) links only: writes `env` through `buffer` without touching the link's
  /// own state, so that one thread may send while another waits in receive(); callers serialise
  /// their writes. A failed write leaves the link open: the receiving side notices the loss.
  bool can_send_alongside() const { return fd_ >= 0 && !tls_; }
  Result<void> send_alongside(const pb::Envelope& env, std::string& buffer) const;
  /// The next frame that is not a heartbeat. Fails with Timeout after `timeout_ms` without any
  /// frame (heartbeats included); < 0 waits forever. An ErrorReply is returned as a frame; the
  /// caller decides whether it ends the request.
  /// `timeout_ms` bounds silence (a heartbeat restarts it); `total_ms`, if not negative, bounds
  /// the whole call, heartbeats or not.
  Result<pb::Envelope> receive(std::int64_t timeout_ms, std::int64_t total_ms = -1);

  /// While receive() waits, `fd` becoming readable ends the wait with Cancelled ("woken"), so
  /// that one thread can both wait for frames and send what others queued (-1: none).
  void set_wake_fd(int fd) { wake_fd_ = fd; }

  void close();
  bool is_open() const { return fd_ >= 0; }
  const std::string& peer() const { return peer_; }

private:
  BlockingLink(int fd, std::string peer);
  int fd_ = -1;
  int wake_fd_ = -1;
  std::unique_ptr<BlockingTls> tls_; ///< TCP links; none on the unix socket
  std::string peer_;
  protocol::FrameDecoder decoder_;
  std::string out_;
};

} // namespace sortie::net
