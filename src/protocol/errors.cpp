// SPDX-License-Identifier: Apache-2.0
// Errors to and from their protobuf form (ErrorReply).
#include "protocol/errors.hpp"

namespace sortie::net {

Error error_from_pb(const pb::ErrorReply& e) {
  auto code = static_cast<ErrorCode>(e.code());
  if (e.code() <= 0 || e.code() > static_cast<int>(ErrorCode::Internal))
    code = ErrorCode::Internal;
  return Error{code, e.message(), e.context()};
}

void error_to_pb(const Error& e, pb::ErrorReply& out) {
  out.set_code(static_cast<pb::ErrorCode>(e.code));
  out.set_message(e.message);
  out.set_context(e.context);
}

} // namespace sortie::net
