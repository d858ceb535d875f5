// SPDX-License-Identifier: Apache-2.0
// Both halves of the handshake (02-handshake.md) as coroutines over an event-loop Link.
#include "protocol/handshake.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <fmt/format.h>

#include "common/version.hpp"
#include "protocol/auth.hpp"
#include "protocol/client_handshake.hpp"

namespace sortie::net {
namespace {

using namespace boost::asio::experimental::awaitable_operators;

/// receive() bounded by a timeout; on timeout the link is closed.
Awaitable<Result<pb::Envelope>> receive_within(std::shared_ptr<Link> link, std::int64_t timeout_ms) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(std::chrono::milliseconds(timeout_ms));
  auto r = co_await (link->receive() || timer.async_wait(use_nothrow));
  if (r.index() == 0)
    co_return std::move(std::get<0>(r));
  link->close(make_error(ErrorCode::Timeout,
                         fmt::format("handshake not completed within {} ms", timeout_ms),
                         link->peer()));
  co_return link->close_reason();
}

} // namespace

Awaitable<Result<pb::Welcome>> connect_handshake(std::shared_ptr<Link> link,
                                                 std::string key,
                                                 pb::Role role,
                                                 std::string peer_name,
                                                 std::int64_t timeout_ms) {
  protocol::ClientHandshake steps(std::move(key), role, std::move(peer_name));
  auto fail = [&](const Error& e) {
    auto error = e.with_context(link->peer());
    link->close(error);
    return error;
  };
  link->send(steps.hello());
  auto challenge = co_await receive_within(link, timeout_ms);
  if (!challenge.ok())
    co_return challenge.error();
  auto auth = steps.on_challenge(*challenge);
  if (!auth.ok())
    co_return fail(auth.error());
  link->send(*auth);
  auto welcome = co_await receive_within(link, timeout_ms);
  if (!welcome.ok())
    co_return welcome.error();
  auto done = steps.on_welcome(*welcome);
  if (!done.ok())
    co_return fail(done.error());
  link->set_max_frame(protocol::kDefaultMaxFrame);
  co_return *done;
}

Awaitable<Result<Accepted>> accept_handshake(std::shared_ptr<Link> link,
                                             std::string key,
                                             pb::Welcome welcome,
                                             std::int64_t timeout_ms) {
  auto first = co_await receive_within(link, timeout_ms);
  if (!first.ok())
    co_return first.error();
  if (!first->has_hello()) {
    auto e = protocol::unexpected_frame(*first, "hello").with_context(link->peer());
    link->close_with_error(e);
    co_return e;
  }
  Accepted accepted{first->hello()};
  const auto& hello = accepted.hello;
  if (hello.protocol_version() != protocol::kProtocolVersion) {
    auto e = make_error(ErrorCode::FailedPrecondition,
                        fmt::format("protocol version {} is not supported: this hub speaks version "
                                    "{} (sortie {}); use the same sortie release on both sides",
                                    hello.protocol_version(), protocol::kProtocolVersion,
                                    kSortieVersion),
                        link->peer());
    link->close_with_error(e);
    co_return e;
  }
  if (hello.nonce().size() != protocol::kNonceSize || hello.role() == pb::ROLE_UNSPECIFIED) {
    auto e = make_error(ErrorCode::InvalidArgument, "malformed hello (nonce or role missing)",
                        link->peer());
    link->close_with_error(e);
    co_return e;
  }
  std::string nonce = protocol::random_bytes(protocol::kNonceSize);
  pb::Envelope challenge;
  auto* c = challenge.mutable_challenge();
  c->set_protocol_version(protocol::kProtocolVersion);
  c->set_nonce(nonce);
  c->set_proof(protocol::hub_proof(key, hello.nonce(), nonce));
  link->send(challenge);

  auto auth = co_await receive_within(link, timeout_ms);
  if (!auth.ok())
    co_return auth.error();
  if (!auth->has_auth()) {
    auto e = protocol::unexpected_frame(*auth, "auth").with_context(link->peer());
    link->close_with_error(e);
    co_return e;
  }
  if (!protocol::proofs_equal(auth->auth().proof(),
                              protocol::peer_proof(key, hello.role(), nonce, hello.nonce()))) {
    auto e = make_error(ErrorCode::PermissionDenied,
                        "authentication failed: the peer does not know this hub's token (its "
                        "hub.json is from another hub or an earlier install)",
                        link->peer());
    link->close_with_error(e);
    co_return e;
  }
  link->set_max_frame(protocol::kDefaultMaxFrame);
  pb::Envelope w;
  *w.mutable_welcome() = std::move(welcome);
  link->send(w);
  co_return accepted;
}

Awaitable<Result<void>> accept_engine(std::shared_ptr<Link> link, std::string key) {
  pb::Welcome welcome;
  welcome.set_heartbeat_interval_ms(0);
  auto accepted = co_await accept_handshake(link, std::move(key), welcome, 10'000);
  if (!accepted.ok())
    co_return accepted.error();
  if (accepted->hello.role() != pb::ROLE_ENGINE) {
    auto e = make_error(ErrorCode::PermissionDenied, "only the job's engine may use this socket");
    link->close_with_error(e);
    co_return e;
  }
  co_return ok_result();
}

} // namespace sortie::net
