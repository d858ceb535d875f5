// SPDX-License-Identifier: Apache-2.0
// What escapes a root coroutine (spawn_root in asio.hpp) is logged, never lost.
#include "protocol/asio.hpp"

#include "common/log.hpp"

namespace sortie {

void log_escaped(std::string_view what, std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    log::error("{} failed: {}", what, ex.what());
  } catch (...) {
    log::error("{} failed with an exception that is not a std::exception", what);
  }
}

} // namespace sortie
