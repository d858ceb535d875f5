// SPDX-License-Identifier: Apache-2.0
// Conversions between sortie::Error and the wire's ErrorReply.
#pragma once

#include "protocol/sortie.pb.h"
#include "sortie/result.hpp"

namespace sortie::net {

Error error_from_pb(const pb::ErrorReply& e);
void error_to_pb(const Error& e, pb::ErrorReply& out);

} // namespace sortie::net
