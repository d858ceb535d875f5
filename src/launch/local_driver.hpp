// SPDX-License-Identifier: Apache-2.0
// The driver of local pilots: one `sortie agent --profile-dir DIR --pilot ID ...` process per
// node on this machine, each in its own session (so a terminal's signals or the hub's death do
// not reach it), logging to <profile>/logs/agent-<pilot>-<node>.log. They find the hub through
// the profile's hub.json; the token is never on their command line. Their exits are reported as
// the ssh driver's are (a node gone; all gone), with each process's pid.
#pragma once

#include <memory>

#include "launch/drivers.hpp"

namespace sortie::launch {

std::unique_ptr<Driver> make_local_driver(DriverContext ctx, DriverHooks hooks);

} // namespace sortie::launch
