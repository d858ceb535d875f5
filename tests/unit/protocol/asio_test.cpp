// SPDX-License-Identifier: Apache-2.0
// spawn_root: what escapes a root coroutine is reported, and `then` learns how it ended.
#include <gtest/gtest.h>

#include <stdexcept>

#include "protocol/asio.hpp"

namespace sortie {
namespace {

Awaitable<void> fails() {
  co_await asio::post(asio::use_awaitable);
  throw std::runtime_error("boom");
}

Awaitable<void> ends() { co_return; }

TEST(SpawnRoot, AnEscapedExceptionIsCaughtAndReported) {
  asio::io_context io;
  int failed = -1, ended = -1;
  spawn_root(io.get_executor(), "a test coroutine", fails(), [&](bool f) { failed = f; });
  spawn_root(io.get_executor(), "another", [] { return ends(); }, [&](bool f) { ended = f; });
  io.run(); // an exception lost in the loop would end the test here
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(ended, 0);
}

} // namespace
} // namespace sortie
