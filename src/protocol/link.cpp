// SPDX-License-Identifier: Apache-2.0
// The event-loop Link: framed envelopes over a byte stream, batched writes, heartbeats.
#include "protocol/link.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <chrono>

#include <fmt/format.h>

#include "common/log.hpp"
#include "protocol/socket_stream.hpp"
#include "protocol/tls_stream.hpp"

namespace sortie::net {
namespace {

constexpr std::size_t kKeepBufferBytes = 1u << 20; // larger write buffers are freed once written

class PipeStream final : public ByteStream {
public:
  PipeStream(asio::any_io_executor ex, int in_fd, int out_fd, std::string description)
      : in_(ex, in_fd), out_(ex, out_fd), description_(std::move(description)) {}

  Awaitable<std::pair<error_code, std::size_t>> read_some(asio::mutable_buffer buffer) override {
    auto [ec, n] = co_await in_.async_read_some(buffer, use_nothrow);
    co_return std::pair{ec, n};
  }
  Awaitable<error_code> write_all(asio::const_buffer data) override {
    auto [ec, n] = co_await asio::async_write(out_, data, use_nothrow);
    (void)n;
    co_return ec;
  }
  void close() override {
    error_code ignored;
    in_.close(ignored);
    out_.close(ignored);
  }
  std::string describe() const override { return description_; }

private:
  asio::posix::stream_descriptor in_;
  asio::posix::stream_descriptor out_;
  std::string description_;
};

} // namespace

std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Link::Link(asio::any_io_executor executor, std::unique_ptr<ByteStream> stream)
    : executor_(executor), stream_(std::move(stream)), peer_(stream_->describe()),
      writer_wakeup_(executor), heartbeat_timer_(executor) {
  last_received_ms_ = last_sent_ms_ = steady_ms();
}

Link::~Link() {
  if (stream_)
    stream_->close();
}

void Link::start() {
  spawn_root(executor_, "the writer of link " + peer_,
             [self = shared_from_this()] { return self->write_loop(); });
}

Awaitable<Result<pb::Envelope>> Link::receive() {
  // Keep the link alive across suspensions even if its owner drops it meanwhile.
  auto self = shared_from_this();
  pb::Envelope env;
  while (true) {
    if (closed_)
      co_return close_reason_;
    Error error;
    switch (decoder_.next(env, error)) {
    case protocol::FrameDecoder::Status::Frame:
      last_received_ms_ = steady_ms();
      if (env.has_heartbeat()) {
        peer_sent_ms_ = std::max(peer_sent_ms_, env.heartbeat().sent_ms());
        echoed_ms_ = std::max(echoed_ms_, std::min(env.heartbeat().echo_ms(), last_heartbeat_ms_));
        continue;
      }
      co_return std::move(env);
    case protocol::FrameDecoder::Status::Error:
      close(error.with_context(peer_));
      co_return close_reason_;
    case protocol::FrameDecoder::Status::NeedMore:
      break;
    }
    auto span = decoder_.prepare();
    auto [ec, n] = co_await stream_->read_some(asio::buffer(span.data(), span.size()));
    if (closed_)
      co_return close_reason_;
    if (ec == asio::error::operation_aborted && !closed_)
      co_return make_error(ErrorCode::Cancelled, "receive cancelled", peer_);
    if (ec) {
      if (ec == asio::error::eof || ec == asio::error::connection_reset)
        close(make_error(ErrorCode::Unavailable,
                         decoder_.buffered() ? "connection closed in the middle of a frame"
                                             : "connection closed by peer",
                         peer_));
      else if (std::string_view cat = ec.category().name();
               cat.starts_with("asio.ssl") || cat == "sortie.tls")
        // Not a network failure: the bytes were altered, or the peer does not speak TLS.
        close(make_error(ErrorCode::PermissionDenied, "TLS failed: " + ec.message(), peer_));
      else
        close(make_error(ErrorCode::Unavailable, "read failed: " + ec.message(), peer_));
      co_return close_reason_;
    }
    decoder_.commit(n);
  }
}

void Link::send(const pb::Envelope& env) {
  if (closed_ || closing_ || write_failed_)
    return;
  protocol::encode_frame(env, pending_);
  wake_writer();
}

void Link::send_encoded(std::string_view frame) {
  if (closed_ || closing_ || write_failed_)
    return;
  pending_.append(frame);
  wake_writer();
}

void Link::wake_writer() {
  if (writer_waiting_) {
    writer_waiting_ = false;
    writer_wakeup_.cancel();
  }
}

Awaitable<void> Link::write_loop() {
  auto self = shared_from_this();
  while (!closed_) {
    if (pending_.empty()) {
      run_drained();
      if (closed_)
        break;
      if (closing_) {
        close(close_reason_);
        break;
      }
      writer_waiting_ = true;
      writer_wakeup_.expires_at(asio::steady_timer::time_point::max());
      co_await writer_wakeup_.async_wait(use_nothrow);
      writer_waiting_ = false;
      continue;
    }
    writing_.swap(pending_);
    auto ec = co_await stream_->write_all(asio::buffer(writing_));
    writing_.clear();
    // A burst must not pin its peak size for the life of the link.
    if (writing_.capacity() > kKeepBufferBytes)
      std::string().swap(writing_);
    if (pending_.empty() && pending_.capacity() > kKeepBufferBytes)
      std::string().swap(pending_);
    if (closed_)
      break;
    if (ec && !closing_ &&
        (ec == asio::error::broken_pipe || ec == asio::error::connection_reset)) {
      // The peer closed its end, perhaps right after its last frames (an agent's events and
      // goodbye): those are still to be read, and its end of the stream closes the link then.
      write_failed_ = true;
      std::string().swap(pending_);
      run_drained();
      break;
    }
    if (ec) {
      close(make_error(ErrorCode::Unavailable, "write failed: " + ec.message(), peer_));
      break;
    }
    last_sent_ms_ = steady_ms();
  }
}

void Link::when_drained(std::function<void()> fn) {
  if (closed_ || write_failed_ || (pending_.empty() && writing_.empty())) {
    asio::post(executor_, std::move(fn));
    return;
  }
  drained_.push_back(std::move(fn));
}

void Link::run_drained() {
  auto fns = std::move(drained_);
  drained_.clear();
  for (auto& fn : fns)
    fn();
}

void Link::close_with_error(const Error& error) {
  if (closed_ || closing_)
    return;
  if (write_failed_) // the peer reads no more
    return close(error);
  pb::Envelope env;
  error_to_pb(error, *env.mutable_error());
  protocol::encode_frame(env, pending_);
  close_after_flush(error);
}

void Link::close_after_flush(const Error& reason) {
  if (closed_ || closing_)
    return;
  closing_ = true;
  close_reason_ = reason;
  if (write_failed_ || (pending_.empty() && writing_.empty())) {
    close(reason);
    return;
  }
  wake_writer();
}

void Link::close(const Error& reason) {
  if (closed_)
    return;
  closed_ = true;
  if (!closing_)
    close_reason_ = reason;
  closing_ = false;
  std::string().swap(pending_);
  stream_->close();
  for (auto& fn : drained_)
    asio::post(executor_, std::move(fn));
  drained_.clear();
  writer_wakeup_.cancel();
  heartbeat_timer_.cancel();
}

std::int64_t Link::silent_ms() const { return steady_ms() - last_received_ms_; }

void Link::start_heartbeat(std::int64_t interval_ms, std::int64_t deadline_ms) {
  if (interval_ms <= 0)
    return;
  spawn_root(executor_, "the heartbeats of link " + peer_,
             [self = shared_from_this(), interval_ms, deadline_ms] {
               return self->heartbeat_loop(interval_ms, deadline_ms);
             });
}

Awaitable<void> Link::heartbeat_loop(std::int64_t interval_ms, std::int64_t deadline_ms) {
  auto self = shared_from_this();
  // Wake at a fraction of the interval so neither the send nor the deadline is late by much.
  auto tick = std::chrono::milliseconds(std::max<std::int64_t>(interval_ms / 4, 10));
  while (!closed_) {
    heartbeat_timer_.expires_after(tick);
    co_await heartbeat_timer_.async_wait(use_nothrow);
    if (closed_)
      break;
    auto now = steady_ms();
    if (deadline_ms > 0 && now - last_received_ms_ > deadline_ms) {
      close(make_error(ErrorCode::Timeout,
                       fmt::format("no message from the peer for {} ms (heartbeat deadline)",
                                   now - last_received_ms_),
                       peer_));
      break;
    }
    // Every interval, busy or not: the echo in it is what renews an agent's lease.
    if (now - last_heartbeat_ms_ >= interval_ms) {
      pb::Envelope hb;
      hb.mutable_heartbeat()->set_sent_ms(now);
      hb.mutable_heartbeat()->set_echo_ms(peer_sent_ms_);
      send(hb);
      last_heartbeat_ms_ = now;
      last_sent_ms_ = now;
    }
  }
}

Awaitable<Result<std::unique_ptr<ByteStream>>> connect_unix(asio::any_io_executor ex,
                                                            std::string path) {
  asio::local::stream_protocol::socket socket(ex);
  auto [ec] = co_await socket.async_connect(asio::local::stream_protocol::endpoint(path),
                                            use_nothrow);
  if (ec)
    co_return make_error(ErrorCode::Unavailable,
                         fmt::format("cannot connect to {}: {}", path, ec.message()));
  co_return make_socket_stream(std::move(socket), "unix:" + path);
}

Awaitable<Result<std::unique_ptr<ByteStream>>> connect_tcp(asio::any_io_executor ex,
                                                           std::string host,
                                                           std::uint16_t port,
                                                           std::string fingerprint) {
  asio::ip::tcp::resolver resolver(ex);
  auto [rec, endpoints] =
      co_await resolver.async_resolve(host, std::to_string(port), use_nothrow);
  if (rec)
    co_return make_error(ErrorCode::Unavailable,
                         fmt::format("cannot resolve {}: {}", host, rec.message()));
  asio::ip::tcp::socket socket(ex);
  auto [ec, ep] = co_await asio::async_connect(socket, endpoints, use_nothrow);
  if (ec)
    co_return make_error(ErrorCode::Unavailable,
                         fmt::format("cannot connect to {}:{}: {}", host, port, ec.message()));
  error_code ignored;
  socket.set_option(asio::ip::tcp::no_delay(true), ignored);
  co_return co_await tls_client_stream(std::move(socket), std::move(fingerprint),
                                       fmt::format("tcp:{}:{}", host, port), 10'000);
}

std::unique_ptr<ByteStream> make_pipe_stream(asio::any_io_executor ex,
                                             int in_fd,
                                             int out_fd,
                                             std::string description) {
  return std::make_unique<PipeStream>(ex, in_fd, out_fd, std::move(description));
}

} // namespace sortie::net
