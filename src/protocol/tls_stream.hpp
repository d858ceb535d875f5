// SPDX-License-Identifier: Apache-2.0
// TLS ByteStreams for the event loop (Boost.Asio's ssl::stream): the hub's side of every TCP
// connection, and the agent's side of its TCP link to the hub. See tls.hpp for the identity and
// the pin.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include "protocol/link.hpp"
#include "protocol/tls.hpp"

namespace sortie::net {

/// The hub's side of an accepted TCP connection. The TLS handshake runs with the first read, so
/// the handshake deadline of the caller bounds it. A peer that does not open with a TLS
/// ClientHello gets a plain ErrorReply saying that TCP links use TLS, then the connection closes.
std::unique_ptr<ByteStream> make_tls_server_stream(std::shared_ptr<SSL_CTX> context,
                                                   asio::ip::tcp::socket socket,
                                                   std::string description);

/// The connecting side: the TLS handshake over `socket` (within `timeout_ms`), then the hub's
/// certificate is checked against `fingerprint`.
Awaitable<Result<std::unique_ptr<ByteStream>>> tls_client_stream(asio::ip::tcp::socket socket,
                                                                 std::string fingerprint,
                                                                 std::string description,
                                                                 std::int64_t timeout_ms);

} // namespace sortie::net
