// SPDX-License-Identifier: Apache-2.0
// ByteStream over an Asio stream socket (TCP or unix). Header-only because acceptors in the hub
// and connectors in protocol/ both wrap their sockets with it.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>

#include "protocol/link.hpp"

namespace sortie::net {

template <typename Socket>
class SocketStream final : public ByteStream {
public:
  SocketStream(Socket socket, std::string description)
      : socket_(std::move(socket)), description_(std::move(description)) {}

  Awaitable<std::pair<error_code, std::size_t>> read_some(asio::mutable_buffer buffer) override {
    auto [ec, n] = co_await socket_.async_read_some(buffer, use_nothrow);
    co_return std::pair{ec, n};
  }
  Awaitable<error_code> write_all(asio::const_buffer data) override {
    auto [ec, n] = co_await asio::async_write(socket_, data, use_nothrow);
    (void)n;
    co_return ec;
  }
  void close() override {
    error_code ignored;
    socket_.shutdown(Socket::shutdown_both, ignored);
    socket_.close(ignored);
  }
  std::string describe() const override { return description_; }

private:
  Socket socket_;
  std::string description_;
};

inline std::unique_ptr<ByteStream> make_socket_stream(asio::ip::tcp::socket socket,
                                                      std::string description) {
  return std::make_unique<SocketStream<asio::ip::tcp::socket>>(std::move(socket),
                                                               std::move(description));
}

inline std::unique_ptr<ByteStream> make_socket_stream(asio::local::stream_protocol::socket socket,
                                                      std::string description) {
  return std::make_unique<SocketStream<asio::local::stream_protocol::socket>>(
      std::move(socket), std::move(description));
}

} // namespace sortie::net
