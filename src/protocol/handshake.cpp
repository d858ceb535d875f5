// SPDX-License-Identifier: Apache-2.0
// Both halves of the handshake (02-handshake.md) as coroutines over an event-loop Link.
#include "protocol/handshake.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <fmt/format.h>

#include "common/version.hpp"
#include "protocol/auth.hpp"

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

Error unexpected(const pb::Envelope& env, const char* expected) {
  if (env.has_error())
    return error_from_pb(env.error());
  return make_error(ErrorCode::InvalidArgument,
                    fmt::format("protocol error: expected {}, got {}", expected,
                                protocol::body_name(env)));
}

} // namespace

Awaitable<Result<pb::Welcome>> connect_handshake(std::shared_ptr<Link> link,
                                                 std::string key,
                                                 pb::Role role,
                                                 std::string peer_name,
                                                 std::int64_t timeout_ms) {
  std::string nonce = protocol::random_bytes(protocol::kNonceSize);
  pb::Envelope hello;
  auto* h = hello.mutable_hello();
  h->set_protocol_version(protocol::kProtocolVersion);
  h->set_role(role);
  h->set_nonce(nonce);
  h->set_peer_name(peer_name);
  h->set_software_version(kSortieVersion);
  link->send(hello);

  auto challenge = co_await receive_within(link, timeout_ms);
  if (!challenge.ok())
    co_return challenge.error();
  if (!challenge->has_challenge()) {
    auto e = unexpected(*challenge, "challenge");
    link->close(e);
    co_return e;
  }
  const auto& c = challenge->challenge();
  if (!protocol::proofs_equal(c.proof(), protocol::hub_proof(key, nonce, c.nonce()))) {
    auto e = make_error(ErrorCode::PermissionDenied,
                        "the hub could not prove it knows this profile's token: hub.json belongs "
                        "to another hub, or another program listens at its address",
                        link->peer());
    link->close(e);
    co_return e;
  }
  pb::Envelope auth;
  auth.mutable_auth()->set_proof(protocol::peer_proof(key, role, c.nonce(), nonce));
  link->send(auth);

  auto welcome = co_await receive_within(link, timeout_ms);
  if (!welcome.ok())
    co_return welcome.error();
  if (!welcome->has_welcome()) {
    auto e = unexpected(*welcome, "welcome");
    link->close(e);
    co_return e;
  }
  link->set_max_frame(protocol::kDefaultMaxFrame);
  co_return welcome->welcome();
}

Awaitable<Result<Accepted>> accept_handshake(std::shared_ptr<Link> link,
                                             std::string key,
                                             pb::Welcome welcome,
                                             std::int64_t timeout_ms) {
  auto first = co_await receive_within(link, timeout_ms);
  if (!first.ok())
    co_return first.error();
  if (!first->has_hello()) {
    auto e = unexpected(*first, "hello").with_context(link->peer());
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
    auto e = unexpected(*auth, "auth").with_context(link->peer());
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

} // namespace sortie::net
