// SPDX-License-Identifier: Apache-2.0
// TLS ByteStreams over Asio's ssl::stream: the hub's side (handshake on first use, plain-text
// peers told what is wrong) and the agent's side (handshake and pin at connect).
#include "protocol/tls_stream.hpp"

#include <openssl/ssl.h>

#include <array>

#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>

#include <fmt/format.h>

#include "protocol/errors.hpp"

namespace sortie::net {
namespace {

using TlsSocket = asio::ssl::stream<asio::ip::tcp::socket>;

constexpr unsigned char kTlsHandshakeRecord = 0x16; // the first byte of a ClientHello

/// Errors of our own for the Link's close reason. (Boost's error_category has a protected
/// non-virtual destructor by design.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class TlsCategory final : public boost::system::error_category {
public:
  const char* name() const noexcept override { return "sortie.tls"; }
  std::string message(int) const override {
    return "the peer did not start TLS: sortie's TCP links use TLS 1.3 (use the unix socket, or a "
           "sortie client, on this port)";
  }
};
#pragma GCC diagnostic pop

const TlsCategory& tls_category() {
  static const TlsCategory category;
  return category;
}

/// Reads and writes of a TLS stream, shared by both sides.
class TlsStreamBase : public ByteStream {
public:
  TlsStreamBase(TlsSocket socket, std::string description)
      : socket_(std::move(socket)), description_(std::move(description)) {}

  Awaitable<std::pair<error_code, std::size_t>> read_some(asio::mutable_buffer buffer) override {
    if (auto ec = co_await ready())
      co_return std::pair{ec, std::size_t{0}};
    auto [ec, n] = co_await socket_.async_read_some(buffer, use_nothrow);
    // A peer that goes without TLS's close_notify is a closed connection like any other.
    if (ec == asio::ssl::error::stream_truncated)
      ec = asio::error::eof;
    co_return std::pair{ec, n};
  }
  Awaitable<error_code> write_all(asio::const_buffer data) override {
    if (auto ec = co_await ready())
      co_return ec;
    auto [ec, n] = co_await asio::async_write(socket_, data, use_nothrow);
    (void)n;
    co_return ec;
  }
  void close() override {
    error_code ignored;
    socket_.lowest_layer().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    socket_.lowest_layer().close(ignored);
  }
  std::string describe() const override { return description_; }

protected:
  /// Done (or failed) handshake before the first read or write.
  virtual Awaitable<error_code> ready() { co_return error_code{}; }

  TlsSocket socket_;
  std::string description_;
};

class TlsServerStream final : public TlsStreamBase {
public:
  TlsServerStream(std::shared_ptr<SSL_CTX> context, asio::ip::tcp::socket socket,
                  std::string description)
      : TlsStreamBase(TlsSocket(std::move(socket), SSL_new(context.get())), std::move(description)),
        context_(std::move(context)), done_(socket_.get_executor()) {}

protected:
  /// The first caller runs the handshake; a caller that comes meanwhile (the writer, with an
  /// error for the peer) waits for it.
  Awaitable<error_code> ready() override {
    if (state_ == State::Fresh) {
      state_ = State::Running;
      failure_ = co_await handshake();
      state_ = State::Done;
      done_.cancel();
    }
    while (state_ == State::Running) {
      done_.expires_at(asio::steady_timer::time_point::max());
      co_await done_.async_wait(use_nothrow);
    }
    co_return failure_;
  }

private:
  enum class State { Fresh, Running, Done };

  Awaitable<error_code> handshake() {
    auto& tcp = socket_.next_layer();
    unsigned char first = 0;
    auto [pec, n] = co_await tcp.async_receive(asio::buffer(&first, 1),
                                               asio::socket_base::message_peek, use_nothrow);
    if (pec)
      co_return pec;
    if (n == 0)
      co_return asio::error::eof;
    if (first != kTlsHandshakeRecord) {
      // Tell a plain-text peer (an old client, a hand-made test, a stray program) what is wrong.
      pb::Envelope env;
      error_to_pb(make_error(ErrorCode::FailedPrecondition,
                             error_code(1, tls_category()).message()),
                  *env.mutable_error());
      std::string frame;
      protocol::encode_frame(env, frame);
      co_await asio::async_write(tcp, asio::buffer(frame), use_nothrow);
      // Take in what the peer sent (so far only peeked): closing over unread bytes would reset
      // the connection, and the peer could lose the error before reading it.
      error_code ignored;
      tcp.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
      std::array<char, 4096> sink;
      for (int i = 0; i < 16 && tcp.available(ignored) > 0; ++i)
        tcp.read_some(asio::buffer(sink), ignored);
      co_return error_code(1, tls_category());
    }
    auto [ec] = co_await socket_.async_handshake(asio::ssl::stream_base::server, use_nothrow);
    co_return ec;
  }

  std::shared_ptr<SSL_CTX> context_;
  asio::steady_timer done_;
  State state_ = State::Fresh;
  error_code failure_;
};

class TlsClientStream final : public TlsStreamBase {
public:
  using TlsStreamBase::TlsStreamBase;
  TlsSocket& socket() { return socket_; }
};

} // namespace

std::unique_ptr<ByteStream> make_tls_server_stream(std::shared_ptr<SSL_CTX> context,
                                                   asio::ip::tcp::socket socket,
                                                   std::string description) {
  return std::make_unique<TlsServerStream>(std::move(context), std::move(socket),
                                           std::move(description));
}

Awaitable<Result<std::unique_ptr<ByteStream>>> tls_client_stream(asio::ip::tcp::socket socket,
                                                                 std::string fingerprint,
                                                                 std::string description,
                                                                 std::int64_t timeout_ms) {
  auto ex = socket.get_executor();
  auto stream = std::make_unique<TlsClientStream>(
      TlsSocket(std::move(socket), SSL_new(client_context().get())), description);
  // The deadline closes the socket, which ends the handshake with an error.
  struct Deadline {
    bool passed = false;
    bool over = false; ///< the handshake ended: the stream may be gone
  };
  auto deadline = std::make_shared<Deadline>();
  auto timer = std::make_shared<asio::steady_timer>(ex);
  timer->expires_after(std::chrono::milliseconds(timeout_ms));
  timer->async_wait([deadline, s = stream.get(), timer](error_code ec) {
    if (ec || deadline->over)
      return;
    deadline->passed = true;
    s->close();
  });
  auto [ec] = co_await stream->socket().async_handshake(asio::ssl::stream_base::client,
                                                        use_nothrow);
  deadline->over = true;
  timer->cancel();
  if (deadline->passed)
    co_return make_error(ErrorCode::Timeout,
                         fmt::format("TLS handshake with {}: no answer within {} ms", description,
                                     timeout_ms));
  if (ec)
    co_return make_error(ErrorCode::Unavailable,
                         fmt::format("TLS handshake with {} failed: {}", description,
                                     ec.message()));
  if (auto r = check_pinned(stream->socket().native_handle(), fingerprint, description); !r.ok())
    co_return r.error();
  co_return std::unique_ptr<ByteStream>(std::move(stream));
}

} // namespace sortie::net
