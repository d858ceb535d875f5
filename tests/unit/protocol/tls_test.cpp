// SPDX-License-Identifier: Apache-2.0
// TLS on TCP links: the hub's identity on disk, the pin, and both clients (blocking and event
// loop) against the hub's server stream over real loopback sockets.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>

#include <filesystem>
#include <fstream>
#include <thread>

#include "protocol/blocking_link.hpp"
#include "protocol/tls_stream.hpp"

namespace sortie::net {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/sortie-tls-test-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

TEST(Tls, IdentityIsMadeOnceAndKeptAcrossStarts) {
  TempDir dir;
  auto cert = dir.path / "hub.crt", key = dir.path / "hub.key";
  auto made = load_or_make_tls_identity(cert, key, "sortie hub test");
  ASSERT_TRUE(made.ok()) << made.error().to_string();
  EXPECT_EQ(made->fingerprint.size(), 64u);
  struct stat st{};
  ASSERT_EQ(::stat(key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto again = load_or_make_tls_identity(cert, key, "sortie hub test");
  ASSERT_TRUE(again.ok()) << again.error().to_string();
  EXPECT_EQ(again->fingerprint, made->fingerprint);
  EXPECT_EQ(again->key_pem, made->key_pem);
}

TEST(Tls, ADamagedOrExposedIdentityIsRefusedWithTheWayOut) {
  TempDir dir;
  auto cert = dir.path / "hub.crt", key = dir.path / "hub.key";
  ASSERT_TRUE(load_or_make_tls_identity(cert, key, "x").ok());
  ::chmod(key.c_str(), 0644);
  auto exposed = load_or_make_tls_identity(cert, key, "x");
  ASSERT_FALSE(exposed.ok());
  EXPECT_NE(exposed.error().message.find("chmod 600"), std::string::npos);
  ::chmod(key.c_str(), 0600);

  // Another identity's key with this certificate.
  TempDir other;
  ASSERT_TRUE(load_or_make_tls_identity(other.path / "c", other.path / "k", "y").ok());
  fs::copy_file(other.path / "k", key, fs::copy_options::overwrite_existing);
  auto mismatched = load_or_make_tls_identity(cert, key, "x");
  ASSERT_FALSE(mismatched.ok());
  EXPECT_NE(mismatched.error().message.find("is not the key of"), std::string::npos);

  std::ofstream(cert) << "garbage";
  auto garbage = load_or_make_tls_identity(cert, key, "x");
  ASSERT_FALSE(garbage.ok());
  EXPECT_NE(garbage.error().message.find("is not a PEM certificate"), std::string::npos);
  EXPECT_NE(garbage.error().message.find("delete"), std::string::npos);

  fs::remove(key);
  auto half = load_or_make_tls_identity(cert, key, "x");
  ASSERT_FALSE(half.ok());
  EXPECT_NE(half.error().message.find("exists without"), std::string::npos);
}

/// A hub-like echo server on 127.0.0.1: each frame received is sent back.
class EchoServer {
public:
  explicit EchoServer(const TlsIdentity& identity)
      : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0}) {
    context_ = *make_server_context(identity);
    asio::co_spawn(io_, accept(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~EchoServer() {
    io_.stop();
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  asio::io_context& io() { return io_; }

private:
  Awaitable<void> accept() {
    while (true) {
      auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
      if (ec)
        co_return;
      auto link = std::make_shared<Link>(
          io_.get_executor(), make_tls_server_stream(context_, std::move(socket), "test"));
      link->start();
      asio::co_spawn(io_, echo(link), asio::detached);
    }
  }
  static Awaitable<void> echo(std::shared_ptr<Link> link) {
    while (true) {
      auto frame = co_await link->receive();
      if (!frame.ok())
        co_return;
      link->send(*frame);
    }
  }

  asio::io_context io_;
  asio::ip::tcp::acceptor acceptor_;
  std::shared_ptr<SSL_CTX> context_;
  std::thread thread_;
};

pb::Envelope hello(const std::string& name) {
  pb::Envelope env;
  env.mutable_hello()->set_peer_name(name);
  return env;
}

struct Server {
  TempDir dir;
  TlsIdentity identity;
  std::unique_ptr<EchoServer> echo;
  Server() {
    identity = *load_or_make_tls_identity(dir.path / "hub.crt", dir.path / "hub.key", "t");
    echo = std::make_unique<EchoServer>(identity);
  }
};

TEST(Tls, TheBlockingClientTalksThroughTlsToThePinnedServer) {
  Server server;
  auto link = BlockingLink::connect_tcp("127.0.0.1", server.echo->port(), 5000,
                                        server.identity.fingerprint);
  ASSERT_TRUE(link.ok()) << link.error().to_string();
  // Frames before authentication are small (kMaxFrameBeforeAuth): many of them make many TLS
  // records each way, and the reader finds some already decrypted.
  for (int i = 0; i < 200; ++i)
    ASSERT_TRUE(link->send(hello(std::to_string(i) + std::string(3000, 'x'))).ok());
  for (int i = 0; i < 200; ++i) {
    auto echoed = link->receive(5000);
    ASSERT_TRUE(echoed.ok()) << echoed.error().to_string();
    EXPECT_EQ(echoed->hello().peer_name(), std::to_string(i) + std::string(3000, 'x'));
  }
}

TEST(Tls, AnotherCertificateOrNoPinIsRefused) {
  Server server;
  std::string wrong(64, '0');
  auto link = BlockingLink::connect_tcp("127.0.0.1", server.echo->port(), 5000, wrong);
  ASSERT_FALSE(link.ok());
  EXPECT_EQ(link.error().code, ErrorCode::PermissionDenied);
  EXPECT_NE(link.error().message.find("is not the one hub.json names"), std::string::npos);
  auto none = BlockingLink::connect_tcp("127.0.0.1", server.echo->port(), 5000, "");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("tls_fingerprint"), std::string::npos);
}

TEST(Tls, APlainTextPeerIsToldThatTcpLinksUseTls) {
  Server server;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server.echo->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  std::string plain;
  protocol::encode_frame(hello("plain"), plain);
  ASSERT_EQ(::send(fd, plain.data(), plain.size(), 0), static_cast<ssize_t>(plain.size()));
  std::string got;
  char buffer[4096];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0)
    got.append(buffer, static_cast<std::size_t>(n));
  ::close(fd);
  EXPECT_NE(got.find("did not start TLS"), std::string::npos) << got;
}

TEST(Tls, TheEventLoopClientPinsTheCertificateToo) {
  Server server;
  asio::io_context io;
  Result<pb::Envelope> echoed = make_error(ErrorCode::Internal, "not run");
  Error refused;
  asio::co_spawn(io, [&]() -> Awaitable<void> {
    auto stream = co_await connect_tcp(io.get_executor(), "127.0.0.1", server.echo->port(),
                                       server.identity.fingerprint);
    if (!stream.ok()) {
      echoed = stream.error();
      co_return;
    }
    auto link = std::make_shared<Link>(io.get_executor(), std::move(*stream));
    link->start();
    link->send(hello("async"));
    echoed = co_await link->receive();
    link->close(make_error(ErrorCode::Cancelled, "done"));
    auto wrong = co_await connect_tcp(io.get_executor(), "127.0.0.1", server.echo->port(),
                                      std::string(64, 'f'));
    refused = wrong.ok() ? Error{} : wrong.error();
  }, asio::detached);
  io.run_for(std::chrono::seconds(20));
  ASSERT_TRUE(echoed.ok()) << echoed.error().to_string();
  EXPECT_EQ(echoed->hello().peer_name(), "async");
  EXPECT_EQ(refused.code, ErrorCode::PermissionDenied);
}

} // namespace
} // namespace sortie::net
