// SPDX-License-Identifier: Apache-2.0
// What the hub's handlers need from a connection: send a message, close it, know if it is gone.
// The server adapts net::Link to it; handler tests use a recording fake (tests/fakes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

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

} // namespace sortie::hub
