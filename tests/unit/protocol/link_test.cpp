// SPDX-License-Identifier: Apache-2.0
// The event loop's Link: what a peer sent before it closed its end is read, even when a write to
// it failed first (an agent's last events and goodbye, then its exit).
#include <gtest/gtest.h>
#include <signal.h>

#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/write.hpp>

#include <string>
#include <vector>

#include "protocol/frame.hpp"
#include "protocol/link.hpp"
#include "protocol/socket_stream.hpp"

namespace sortie::net {
namespace {

/// Reads `link` to its end: the goodbye reasons of its frames, then the error it ended with.
Awaitable<void> read_all(std::shared_ptr<Link> link, std::vector<std::string>* got, Error* end) {
  while (true) {
    auto frame = co_await link->receive();
    if (!frame.ok()) {
      *end = frame.error();
      co_return;
    }
    got->push_back(frame->goodbye().reason());
  }
}

TEST(Link, APeersLastFramesAreReadEvenWhenWritingToItFailed) {
  ::signal(SIGPIPE, SIG_IGN); // as in every sortie process; the link's writes say NOSIGNAL too
  asio::io_context io;
  asio::local::stream_protocol::socket mine(io), theirs(io);
  asio::local::connect_pair(mine, theirs);
  // The peer's last words, then its end closed.
  std::string bytes;
  pb::Envelope event, bye;
  event.set_request_id(7);
  event.mutable_goodbye()->set_reason("its jobs ended");
  bye.mutable_goodbye()->set_reason("agent shutting down");
  protocol::encode_frame(event, bytes);
  protocol::encode_frame(bye, bytes);
  asio::write(theirs, asio::buffer(bytes));
  theirs.close();

  auto link = std::make_shared<Link>(io.get_executor(),
                                     make_socket_stream(std::move(mine), "the peer"));
  link->start();
  pb::Envelope shutdown;
  shutdown.mutable_shutdown()->set_reason("the hub is stopping");
  link->send(shutdown);
  while (link->queued_bytes() > 0 && !link->closed()) // until the write has been tried (and failed)
    ASSERT_EQ(io.run_one(), 1u);
  bool drained = false;
  link->when_drained([&] { drained = true; }); // nothing waits for a write that cannot happen

  std::vector<std::string> got;
  Error end;
  spawn_root(io.get_executor(), "the test's reader", read_all(link, &got, &end));
  io.restart(); // the loop stopped when the writer ended, its last work
  io.run();
  EXPECT_EQ(got, (std::vector<std::string>{"its jobs ended", "agent shutting down"}));
  EXPECT_EQ(end.code, ErrorCode::Unavailable);
  EXPECT_NE(end.message.find("connection closed by peer"), std::string::npos) << end.message;
  EXPECT_TRUE(link->closed());
  EXPECT_TRUE(drained);
  link->send(shutdown); // dropped: nothing is kept for a peer that reads no more
  EXPECT_EQ(link->queued_bytes(), 0u);
}

} // namespace
} // namespace sortie::net
