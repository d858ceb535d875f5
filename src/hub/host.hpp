// SPDX-License-Identifier: Apache-2.0
// What the hub needs from the process it runs in (the server, or a test): to stop, to run an
// agent session over a remote pilot's ssh pipes, a place to wait for the commands it runs, and
// how peers reach it. The server implements it; the hub is given one when it is built.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "launch/process.hpp"
#include "protocol/link.hpp"
#include "sortie/result.hpp"

namespace sortie::hub {

class HubHost {
public:
  virtual ~HubHost() = default;
  /// A client asked the hub to stop (or restart); the host then calls Hub::shutdown.
  virtual void request_stop(bool restart) = 0;
  /// Runs an agent session over a remote pilot's ssh pipes, authenticated with `key` instead of
  /// the profile's token; `failed` is called if the link ends before its agent registered (ssh
  /// printed something else, hung, or was refused).
  virtual void run_agent_session(std::unique_ptr<net::ByteStream> stream, std::string key,
                                 std::function<void(const Error&)> failed) = 0;
  /// Where drivers wait for the commands they run (null: this host runs none).
  virtual launch::ChildWatch* child_watch() = 0;
  /// host:port, for status.
  virtual std::string listen_address() const = 0;
};

} // namespace sortie::hub
