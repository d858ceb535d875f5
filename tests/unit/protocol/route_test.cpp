// SPDX-License-Identifier: Apache-2.0
// The role table and route stacks (docs/protocol/04-routing.md): who may send what, a frame
// routed up through two hops and back down, and forged or broken routes refused.
#include <gtest/gtest.h>

#include "protocol/roles.hpp"
#include "protocol/route.hpp"

namespace sortie::protocol {
namespace {

using Body = pb::Envelope::BodyCase;

TEST(Roles, EveryMessageOfTheEnvelopeHasASender) {
  const auto* oneof = pb::Envelope::descriptor()->FindOneofByName("body");
  ASSERT_NE(oneof, nullptr);
  for (int i = 0; i < oneof->field_count(); ++i) {
    auto body = static_cast<Body>(oneof->field(i)->number());
    EXPECT_NE(senders_of(body), 0u) << oneof->field(i)->name() << " has no sender in roles.cpp";
  }
}

TEST(Roles, EachSideSendsOnlyItsOwnMessages) {
  EXPECT_TRUE(may_send(Role::Client, Body::kSubmit));
  EXPECT_FALSE(may_send(Role::Agent, Body::kSubmit));
  EXPECT_FALSE(may_send(Role::Hub, Body::kSubmit));
  EXPECT_TRUE(may_send(Role::Hub, Body::kAssign));
  EXPECT_FALSE(may_send(Role::Client, Body::kAssign));
  EXPECT_FALSE(may_send(Role::Agent, Body::kAssign));
  EXPECT_TRUE(may_send(Role::Agent, Body::kJobEvents));
  EXPECT_FALSE(may_send(Role::Client, Body::kJobEvents));
  EXPECT_FALSE(may_send(Role::Client, Body::kChallenge));
  EXPECT_TRUE(may_send(Role::Client, Body::kGoodbye));
  EXPECT_FALSE(may_send(Role::Client, Body::BODY_NOT_SET));
  pb::Envelope env;
  env.mutable_assign();
  EXPECT_EQ(not_allowed(Role::Client, env).message, "protocol error: a client may not send 'assign'");
  EXPECT_EQ(not_allowed(Role::Agent, env).message, "protocol error: an agent may not send 'assign'");
}

/// engine --7--> agent --3--> relay ----> hub: two routing hops.
TEST(Route, AFrameGoesUpThroughTwoHopsAndComesBack) {
  RouteTable agent, relay;
  agent.add(7, Role::Engine);
  relay.add(3, Role::Agent);

  pb::Envelope up;
  up.set_request_id(42);
  up.mutable_job_events();
  ASSERT_TRUE(agent.up(7, up).ok());
  ASSERT_TRUE(relay.up(3, up).ok());
  ASSERT_EQ(up.route_size(), 2);
  EXPECT_EQ(up.route(0), 7u); // the hop nearest the sender first
  EXPECT_EQ(up.route(1), 3u);
  EXPECT_TRUE(check_route(Role::Relay, up).ok()); // as the hub sees it arrive

  // The hub answers along the same route.
  pb::Envelope down;
  down.set_request_id(up.request_id());
  down.mutable_job_events_ack()->set_seq(1);
  *down.mutable_route() = up.route();
  auto first = relay.down(down);
  ASSERT_TRUE(first.ok()) << first.error().to_string();
  EXPECT_EQ(*first, 3u);
  auto second = agent.down(down);
  ASSERT_TRUE(second.ok()) << second.error().to_string();
  EXPECT_EQ(*second, 7u);
  EXPECT_EQ(down.route_size(), 0); // arrived: nothing left
  EXPECT_FALSE(agent.down(down).ok()); // and nowhere further to go
}

TEST(Route, AForgedRouteIsRefused) {
  RouteTable agent;
  agent.add(7, Role::Engine);
  // An engine that claims to carry a frame for someone else.
  pb::Envelope env;
  env.mutable_job_events();
  env.add_route(99);
  auto r = agent.up(7, env);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::PermissionDenied);
  EXPECT_NE(r.error().message.find("forged route"), std::string::npos) << r.error().message;
  EXPECT_EQ(env.route_size(), 1); // untouched
  // A client does not route either.
  pb::Envelope from_client;
  from_client.mutable_submit();
  from_client.add_route(1);
  EXPECT_FALSE(check_route(Role::Client, from_client).ok());
  // Down: a route naming a link this node does not have.
  pb::Envelope down;
  down.mutable_kill();
  down.add_route(8);
  auto d = agent.down(down);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, ErrorCode::NotFound);
  // Up from a link that is not there.
  EXPECT_FALSE(agent.up(5, env).ok());
}

TEST(Route, RoutesAreBoundedInLength) {
  RouteTable relay;
  relay.add(1, Role::Relay);
  pb::Envelope env;
  env.mutable_output();
  for (int i = 0; i < kMaxHops; ++i)
    env.add_route(100 + i);
  EXPECT_TRUE(check_route(Role::Relay, env).ok());
  EXPECT_FALSE(relay.up(1, env).ok()); // one more would exceed it
  env.add_route(1000);
  EXPECT_FALSE(check_route(Role::Relay, env).ok());
}

} // namespace
} // namespace sortie::protocol
