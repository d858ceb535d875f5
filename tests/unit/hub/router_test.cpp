// SPDX-License-Identifier: Apache-2.0
// The hub's router: a message reaches the room that registered it, and what a role may not send,
// what no room takes and routed frames are refused the same way (an ErrorReply for a client, a
// closed link for anyone else).
#include <gtest/gtest.h>

#include "fakes/recording_peer.hpp"
#include "hub/router.hpp"

namespace sortie::hub {
namespace {

using testing::RecordingPeer;
using Body = pb::Envelope::BodyCase;

class RouterTest : public ::testing::Test {
protected:
  RouterTest() {
    router_.add(Body::kSubmit, Role::Client, [this](const Sender& from, pb::Envelope&) {
      ++submits_;
      EXPECT_EQ(from.rid, 9u);
    });
    router_.add(Body::kJobEvents, Role::Agent,
                [this](const Sender&, pb::Envelope&) { ++events_; });
    router_.add(Body::kTaskDone, Role::Engine, [this](const Sender& from, pb::Envelope& env) {
      ++engine_frames_;
      EXPECT_EQ(from.via, 4u);
      EXPECT_EQ(from.agent, &agent_state_);
      EXPECT_EQ(env.route_size(), 0); // consumed by the router
    });
  }
  Sender client() { return Sender{client_, Role::Client, nullptr, 9}; }
  Sender agent() { return Sender{agent_, Role::Agent, &agent_state_, 0}; }

  Router router_;
  int submits_ = 0, events_ = 0, engine_frames_ = 0;
  Agent agent_state_;
  std::shared_ptr<RecordingPeer> client_ = std::make_shared<RecordingPeer>("client");
  std::shared_ptr<RecordingPeer> agent_ = std::make_shared<RecordingPeer>("agent");
};

TEST_F(RouterTest, AMessageReachesItsRoom) {
  pb::Envelope env;
  env.mutable_submit();
  router_.dispatch(client(), env);
  EXPECT_EQ(submits_, 1);
  env.mutable_job_events();
  router_.dispatch(agent(), env);
  EXPECT_EQ(events_, 1);
}

TEST_F(RouterTest, AClientThatSendsWhatItMayNotIsToldAndStays) {
  pb::Envelope env;
  env.mutable_job_events();
  router_.dispatch(client(), env);
  EXPECT_EQ(events_, 0);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].error().message(), "protocol error: a client may not send 'job_events'");
  EXPECT_EQ(errors[0].request_id(), 9u);
  EXPECT_FALSE(client_->closed());
}

TEST_F(RouterTest, AnAgentThatSendsWhatItMayNotIsCutOff) {
  pb::Envelope env;
  env.mutable_submit();
  router_.dispatch(agent(), env);
  EXPECT_EQ(submits_, 0);
  EXPECT_TRUE(agent_->closed());
  EXPECT_EQ(agent_->error.message, "protocol error: an agent may not send 'submit'");
}

TEST_F(RouterTest, AMessageNoRoomTakesIsRefused) {
  pb::Envelope env;
  env.mutable_hub_status(); // a client may send it, but no room registered it here
  router_.dispatch(client(), env);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].error().message().find("'hub_status' is not taken"), std::string::npos);
}

TEST_F(RouterTest, AFrameRoutedThroughAnAgentComesFromItsEngine) {
  pb::Envelope env;
  env.mutable_task_done();
  env.add_route(4);
  router_.dispatch(agent(), env);
  EXPECT_EQ(engine_frames_, 1);
  EXPECT_FALSE(agent_->closed());
}

TEST_F(RouterTest, ForgedAndUnknownRoutesAreRefused) {
  // A client never routes: its route is forged.
  pb::Envelope env;
  env.mutable_submit();
  env.add_route(4);
  router_.dispatch(client(), env);
  EXPECT_EQ(submits_, 0);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].error().message().find("forged route"), std::string::npos);
  // An engine behind an agent sends only what engines may: the agent should have stopped it.
  pb::Envelope submit;
  submit.mutable_submit();
  submit.add_route(4);
  router_.dispatch(agent(), submit);
  EXPECT_EQ(submits_, 0);
  EXPECT_TRUE(agent_->closed());
  EXPECT_EQ(agent_->error.message, "protocol error: an engine may not send 'submit'");
}

TEST_F(RouterTest, RoutesDeeperThanOneHopAreRefused) {
  // Agents behind relays come later: two hops name a peer this hub cannot know.
  pb::Envelope routed;
  routed.mutable_task_done();
  routed.add_route(4);
  routed.add_route(5);
  router_.dispatch(agent(), routed);
  EXPECT_EQ(engine_frames_, 0);
  EXPECT_TRUE(agent_->closed());
  EXPECT_NE(agent_->error.message.find("only engines behind their agent"), std::string::npos);
}

} // namespace
} // namespace sortie::hub
