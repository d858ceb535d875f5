// SPDX-License-Identifier: Apache-2.0
// What the hub's handlers need from a connection: send a message, close it, know if it is gone.
// The server adapts net::Link to it; handler tests use a recording fake (tests/fakes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "protocol/errors.hpp"
#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::hub {

class Peer {
public:
  virtual ~Peer() = default;
  /// Queues a message; never blocks. Ignored after close.
  virtual void send(const pb::Envelope& env) = 0;
  /// Sends `error` as an ErrorReply, then closes.
  virtual void close_with_error(const Error& error) = 0;
  virtual bool closed() const = 0;
  /// Bytes queued but not yet written (to stop feeding slow readers).
  virtual std::size_t queued_bytes() const = 0;
  /// Runs `fn` once (later, never from inside this call) when what is queued has been written
  /// or the connection closed.
  virtual void when_drained(std::function<void()> fn) = 0;
  /// Milliseconds since the last frame arrived from the peer (heartbeats included).
  virtual std::int64_t silent_ms() const = 0;
  /// For logs: the transport and the peer's name.
  virtual std::string describe() const = 0;
};

/// Sends `env` as the reply to request `rid`.
inline void reply(const std::shared_ptr<Peer>& peer, pb::Envelope& env, std::uint64_t rid) {
  env.set_request_id(rid);
  peer->send(env);
}

/// Answers request `rid` with an ErrorReply; the connection stays open.
inline void reply_error(const std::shared_ptr<Peer>& peer, std::uint64_t rid, const Error& error) {
  pb::Envelope env;
  net::error_to_pb(error, *env.mutable_error());
  reply(peer, env, rid);
}

/// Answers request `rid` with Ok.
inline void reply_ok(const std::shared_ptr<Peer>& peer, std::uint64_t rid) {
  pb::Envelope env;
  env.mutable_ok();
  reply(peer, env, rid);
}

} // namespace sortie::hub
