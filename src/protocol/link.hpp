// SPDX-License-Identifier: Apache-2.0
// A Link carries framed Envelopes (01-framing.md) over a byte stream: a TCP or unix socket, or a
// pair of pipes such as an ssh process's stdin and stdout. One Link belongs to one event loop.
//
// Reading is pull-based: the owner's coroutine calls receive() for the next frame. Writing is
// push-based: send() encodes into a pending buffer that an internal writer coroutine flushes with
// one write per loop turn, so many small messages cost one syscall. Heartbeats are handled inside
// the Link: it sends one when it has been quiet for the interval and closes the link when the
// peer has been silent past the deadline.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "protocol/asio.hpp"
#include "protocol/errors.hpp"
#include "protocol/frame.hpp"

namespace sortie::net {

/// The transport under a Link.
class ByteStream {
public:
  virtual ~ByteStream() = default;
  /// Reads at least one byte; returns 0 bytes with an error at EOF or failure.
  virtual Awaitable<std::pair<error_code, std::size_t>> read_some(asio::mutable_buffer buffer) = 0;
  /// Writes all of `data`.
  virtual Awaitable<error_code> write_all(asio::const_buffer data) = 0;
  /// Closes the transport; pending operations complete with an error.
  virtual void close() = 0;
  /// For logs: "unix:/path", "tcp:127.0.0.1:4242", "pipes:ssh host".
  virtual std::string describe() const = 0;
};

class Link : public std::enable_shared_from_this<Link> {
public:
  Link(asio::any_io_executor executor, std::unique_ptr<ByteStream> stream);
  ~Link();
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;

  /// Starts the writer. Call once, before the first send().
  void start();

  /// The next frame other than a heartbeat. After an error the link is closed and every later
  /// call returns the same error. Only one receive() may be outstanding.
  Awaitable<Result<pb::Envelope>> receive();

  /// Queues `env` for sending; never blocks. Ignored once the link is closed.
  void send(const pb::Envelope& env);
  /// Queues a frame encoded elsewhere (e.g. shared by many receivers).
  void send_encoded(std::string_view frame);

  /// Sends an ErrorReply (request_id 0) and closes once it has been written.
  void close_with_error(const Error& error);
  /// Flushes what is queued, then closes.
  void close_after_flush(const Error& reason);
  /// Closes now; queued frames are dropped.
  void close(const Error& reason);

  bool closed() const { return closed_; }
  const Error& close_reason() const { return close_reason_; }
  std::size_t queued_bytes() const { return pending_.size() + writing_.size(); }
  /// Runs `fn` once, when everything queued so far has been written (or the link closed).
  void when_drained(std::function<void()> fn);

  /// Once authenticated, larger frames are allowed (kMaxFrameBeforeAuth before).
  void set_max_frame(std::uint32_t max_frame) { decoder_.set_max_frame(max_frame); }

  /// Sends a Heartbeat when nothing was sent for `interval_ms`; closes the link when nothing was
  /// received for `deadline_ms` (0: no deadline).
  void start_heartbeat(std::int64_t interval_ms, std::int64_t deadline_ms);

  const std::string& peer() const { return peer_; }
  /// Milliseconds since the last frame from the peer (heartbeats included).
  std::int64_t silent_ms() const;
  /// The newest of this side's heartbeat times (steady_ms) that the peer has echoed: the peer had
  /// received everything sent up to then (0: none yet).
  std::int64_t echoed_ms() const { return echoed_ms_; }

private:
  Awaitable<void> write_loop();
  Awaitable<void> heartbeat_loop(std::int64_t interval_ms, std::int64_t deadline_ms);
  void wake_writer();
  void run_drained();

  asio::any_io_executor executor_;
  std::unique_ptr<ByteStream> stream_;
  std::string peer_;
  protocol::FrameDecoder decoder_;
  std::string pending_;
  std::string writing_;
  std::vector<std::function<void()>> drained_;
  asio::steady_timer writer_wakeup_;
  asio::steady_timer heartbeat_timer_;
  bool writer_waiting_ = false;
  bool closing_ = false; // close once the pending frames are written
  bool closed_ = false;
  /// The peer stopped reading (its end is closed): nothing more is written, but what it sent
  /// before, still on its way or buffered here, is read; its end of the stream closes the link.
  bool write_failed_ = false;
  Error close_reason_;
  std::int64_t last_received_ms_ = 0;
  std::int64_t last_sent_ms_ = 0;
  std::int64_t last_heartbeat_ms_ = 0;
  std::int64_t peer_sent_ms_ = 0; ///< newest heartbeat time received from the peer (its clock)
  std::int64_t echoed_ms_ = 0;
};

/// Connects to a unix socket.
Awaitable<Result<std::unique_ptr<ByteStream>>> connect_unix(asio::any_io_executor ex,
                                                            std::string path);
/// Connects to host:port over TCP (host is a name or an address) and runs TLS over it; the hub's
/// certificate must have `fingerprint` (hub.json's tls_fingerprint).
Awaitable<Result<std::unique_ptr<ByteStream>>> connect_tcp(asio::any_io_executor ex,
                                                           std::string host,
                                                           std::uint16_t port,
                                                           std::string fingerprint);
/// A stream over two file descriptors (read from `in_fd`, write to `out_fd`), which it owns.
std::unique_ptr<ByteStream> make_pipe_stream(asio::any_io_executor ex,
                                             int in_fd,
                                             int out_fd,
                                             std::string description);

/// Monotonic milliseconds (steady clock), for link deadlines.
std::int64_t steady_ms();

} // namespace sortie::net
