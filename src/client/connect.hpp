// SPDX-License-Identifier: Apache-2.0
// Opening an authenticated link to a profile's hub (connect-or-start), shared by Client and
// Session.
#pragma once

#include "protocol/blocking_link.hpp"
#include "sortie/client.hpp"

namespace sortie::detail {

struct HubLink {
  net::BlockingLink link;
  pb::Welcome welcome;
};

/// Connects and authenticates as a client; with start_if_needed, starts the hub when none runs.
Result<HubLink> open_hub_link(const ConnectOptions& options);

} // namespace sortie::detail
