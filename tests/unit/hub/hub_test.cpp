// SPDX-License-Identifier: Apache-2.0
// Hub handlers called directly: recording peers stand in for clients and agents, the store is a
// real one in a temporary directory, the clock is manual. No sockets, no sleeps.
#include <map>
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>

#include <fmt/format.h>

#include "common/clock.hpp"
#include "fakes/fake_host.hpp"
#include "fakes/manual_clock.hpp"
#include "fakes/recording_peer.hpp"
#include "fakes/temp_dir.hpp"
#include "hub/hub.hpp"
#include "hub/placement.hpp"
#include "protocol/auth.hpp"

namespace sortie::hub {
namespace {

using testing::ManualClock;
using testing::RecordingPeer;
using testing::TempDir;
using Body = pb::Envelope::BodyCase;

// The launch queue's depth (docs/architecture.md, "Schedule"): about 50 ms of work per slot,
// between 1 and 48 rounds.
TEST(LaunchRounds, AboutFiftyMillisecondsOfWorkPerSlot) {
  EXPECT_EQ(launch_rounds(0), 48u); // /bin/true: under a millisecond, as the hub measures it
  EXPECT_EQ(launch_rounds(1), 48u);
  EXPECT_EQ(launch_rounds(2), 25u);
  EXPECT_EQ(launch_rounds(10), 5u);
  EXPECT_EQ(launch_rounds(50), 1u);
  EXPECT_EQ(launch_rounds(60'000), 1u);
}

class HubTest : public ::testing::Test {
protected:
  HubTest() : work_(asio::make_work_guard(io_)) {
    config_.profile = Profile{"test", dir_.path()};
    config_.agent_reconnect_window_ms = 10'000;
    start_hub();
  }
  ~HubTest() override { stop_hub(); }

  void start_hub() {
    auto s = store::Store::open({dir_.path() / "store.db", dir_.path() / "output", false});
    ASSERT_TRUE(s.ok()) << s.error().to_string();
    store_ = std::move(*s);
    auto state = store_->load();
    ASSERT_TRUE(state.ok());
    hub_ = std::make_unique<Hub>(io_.get_executor(), config_, *store_, clock_, host_);
    ASSERT_TRUE(hub_->load(std::move(*state)).ok());
    store_->start([this](std::function<void()> f) { asio::post(io_, std::move(f)); });
  }

  /// When the hub requeues the jobs of an agent it last heard from now: after the agent's lease
  /// (link deadline + one heartbeat interval + reconnect window) and a 5 s margin for the kill.
  std::int64_t requeue_after_ms() const {
    return std::max(config_.heartbeat_deadline_ms, 4 * config_.heartbeat_interval_ms) +
           config_.heartbeat_interval_ms + config_.agent_reconnect_window_ms + 5'000;
  }

  /// A restart: the hub object and its store go away (nothing more is written) and come back.
  void restart_hub() {
    settle();
    stop_hub();
    start_hub();
  }

  void stop_hub() {
    if (store_)
      store_->stop();
    hub_.reset();
    store_.reset();
    io_.restart();
    io_.poll(); // drop completions of the old hub; they see it gone
  }

  /// Runs everything posted and every store commit until nothing is left to do.
  void settle() {
    for (int round = 0; round < 6; ++round) {
      io_.poll();
      bool done = false;
      store::WriteBatch barrier;
      barrier.on_commit.push_back([&](const Result<void>&) { done = true; });
      store_->submit(std::move(barrier));
      while (!done)
        ASSERT_GT(io_.run_one_for(std::chrono::seconds(10)), 0u) << "store never answered";
    }
  }

  void client_send(pb::Envelope env, std::uint64_t rid = 1) {
    env.set_request_id(rid);
    hub_->on_client_frame(client_, env);
  }

  std::uint64_t submit(int n, const std::string& label = "", std::uint32_t slots = 1) {
    pb::Envelope env;
    for (int i = 0; i < n; ++i) {
      auto* spec = env.mutable_submit()->add_items()->mutable_spec();
      spec->add_argv("/bin/true");
      spec->add_argv(std::to_string(i));
      spec->set_label(label);
      spec->set_slots(slots);
    }
    client_send(env);
    settle();
    auto replies = client_->take(Body::kSubmitReply);
    EXPECT_EQ(replies.size(), 1u);
    return replies.empty() ? 0 : replies[0].submit_reply().first_job_id();
  }

  std::shared_ptr<RecordingPeer> register_agent(const std::string& node,
                                                std::uint32_t slots,
                                                std::uint64_t agent_id = 0,
                                                std::vector<pb::AgentJob> jobs = {},
                                                pb::JobEvents unacked = {},
                                                const std::string& label = "") {
    auto peer = std::make_shared<RecordingPeer>("agent " + node);
    pb::AgentRegister reg;
    reg.set_agent_id(agent_id);
    reg.set_node_name(node);
    reg.set_hostname("elsewhere");
    reg.set_slots(slots);
    reg.set_label(label);
    reg.set_pid(1234);
    for (auto& j : jobs)
      *reg.add_jobs() = j;
    *reg.mutable_unacked() = unacked;
    // A reconnect proves the session key of the agent's last registration, as the agent does.
    if (auto s = sessions_.find(agent_id); s != sessions_.end())
      reg.set_session_proof(protocol::agent_session_proof(s->second.first, agent_id, s->second.second));
    hub_->on_agent_register(peer, reg);
    settle();
    for (const auto& e : peer->sent)
      if (e.has_agent_registered()) {
        auto& r = e.agent_registered();
        auto& session = sessions_[r.agent_id()];
        if (!r.session_key().empty())
          session.first = r.session_key();
        session.second = r.epoch();
      }
    return peer;
  }
  /// Each agent's session key and epoch, from its registrations.
  std::map<std::uint64_t, std::pair<std::string, std::uint64_t>> sessions_;

  static std::uint64_t agent_id_of(RecordingPeer& agent) {
    auto regs = agent.take(Body::kAgentRegistered);
    EXPECT_EQ(regs.size(), 1u);
    return regs.empty() ? 0 : regs[0].agent_registered().agent_id();
  }

  /// Job ids assigned to an agent so far (consumes the Assign messages).
  static std::vector<std::uint64_t> assigned(RecordingPeer& agent) {
    std::vector<std::uint64_t> ids;
    for (auto& a : agent.take(Body::kAssign))
      for (auto& j : a.assign().jobs())
        ids.push_back(j.job_id());
    return ids;
  }

  void agent_event(RecordingPeer& agent,
                   std::shared_ptr<RecordingPeer> peer,
                   std::uint64_t job,
                   pb::JobEvent::Kind kind,
                   int exit_code = 0,
                   std::uint64_t seq = 0,
                   std::uint32_t attempt = 1) {
    (void)agent;
    pb::Envelope env;
    auto* evs = env.mutable_job_events();
    evs->set_seq(seq);
    auto* ev = evs->add_events();
    ev->set_job_id(job);
    ev->set_attempt(attempt);
    ev->set_kind(kind);
    ev->set_time_ms(clock_.now_ms());
    if (kind == pb::JobEvent::FINISHED)
      ev->set_exit_code(exit_code);
    hub_->on_agent_frame(peer, env);
    settle();
  }

  void run_to_end(std::shared_ptr<RecordingPeer> agent, std::uint64_t job, int exit_code, std::uint64_t seq) {
    agent_event(*agent, agent, job, pb::JobEvent::STARTED);
    agent_event(*agent, agent, job, pb::JobEvent::FINISHED, exit_code, seq);
  }

  JobState state(std::uint64_t id) {
    const Job* j = hub_->job_for_test(id);
    EXPECT_NE(j, nullptr) << "job " << id;
    return j ? j->state : JobState::Queued;
  }

  TempDir dir_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  HubConfig config_;
  testing::FakeHost host_;
  ManualClock clock_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Hub> hub_;
  std::shared_ptr<RecordingPeer> client_ = std::make_shared<RecordingPeer>("client");
};

TEST_F(HubTest, SubmissionIsAcknowledgedOnlyAfterItsCommit) {
  pb::Envelope env;
  auto* spec = env.mutable_submit()->add_items()->mutable_spec();
  spec->add_argv("/bin/true");
  client_send(env, 7);
  EXPECT_TRUE(client_->sent.empty()); // nothing said before the store committed
  settle();
  auto replies = client_->take(Body::kSubmitReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].request_id(), 7u);
  EXPECT_EQ(replies[0].submit_reply().first_job_id(), 1u);
  EXPECT_EQ(state(1), JobState::Queued);
}

TEST_F(HubTest, JobRunsOnAnAgentAndSucceeds) {
  auto first = submit(3);
  auto agent = register_agent("n1", 2);
  auto agent_id = agent_id_of(*agent);
  EXPECT_NE(agent_id, 0u);
  // Two slots plus a launch queue of two: all three are handed out, oldest first.
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{first, first + 1, first + 2}));
  EXPECT_EQ(state(first), JobState::Assigned);

  pb::Envelope wait;
  wait.mutable_wait()->mutable_selector()->set_all(true);
  client_send(wait, 9);
  settle();
  EXPECT_TRUE(client_->take(Body::kWaitProgress).empty());

  run_to_end(agent, first, 0, 1);
  run_to_end(agent, first + 1, 3, 2);
  agent_event(*agent, agent, first + 2, pb::JobEvent::STARTED);
  EXPECT_EQ(state(first + 2), JobState::Running);
  agent_event(*agent, agent, first + 2, pb::JobEvent::FINISHED, 0, 3);
  EXPECT_EQ(state(first), JobState::Succeeded);
  EXPECT_EQ(state(first + 1), JobState::Failed);
  EXPECT_EQ(hub_->job_for_test(first + 1)->reason, "exit code 3");
  // Each finished event is acknowledged (after its commit).
  EXPECT_EQ(agent->take(Body::kJobEventsAck).size(), 3u);
  auto progress = client_->take(Body::kWaitProgress);
  ASSERT_EQ(progress.size(), 1u);
  EXPECT_TRUE(progress[0].wait_progress().done());
  EXPECT_EQ(progress[0].wait_progress().succeeded(), 2u);
  EXPECT_EQ(progress[0].wait_progress().failed(), 1u);
  ASSERT_EQ(progress[0].wait_progress().failed_ids_size(), 1);
  EXPECT_EQ(progress[0].wait_progress().failed_ids(0), first + 1);
}

TEST_F(HubTest, LabelledJobsWaitForTheirPilot) {
  auto job = submit(1, "gpu");
  auto cpu = register_agent("cpu1", 4, 0, {}, {}, "cpu");
  EXPECT_TRUE(assigned(*cpu).empty());
  auto gpu = register_agent("gpu1", 1, 0, {}, {}, "gpu");
  EXPECT_EQ(assigned(*gpu), (std::vector<std::uint64_t>{job}));
}

TEST_F(HubTest, InvalidSubmissionsChangeNothingAndSayWhy) {
  struct Case {
    std::function<void(pb::SubmitRequest&)> make;
    const char* expect;
  };
  std::vector<Case> cases = {
      {[](pb::SubmitRequest&) {}, "at least one job"},
      {[](pb::SubmitRequest& r) { r.add_items(); }, "command is empty"},
      {[](pb::SubmitRequest& r) {
         auto* s = r.add_items()->mutable_spec();
         s->add_argv("x");
         s->set_cwd("relative/dir");
       },
       "not absolute"},
      {[](pb::SubmitRequest& r) {
         auto* i = r.add_items();
         i->mutable_spec()->add_argv("x");
         i->mutable_array()->set_first(5);
         i->mutable_array()->set_last(1);
       },
       "array 5-1"},
      {[](pb::SubmitRequest& r) {
         auto* s = r.add_items()->mutable_spec();
         s->add_argv("x");
         auto* e = s->add_env();
         e->set_name("A=B");
       },
       "environment variable"},
      {[](pb::SubmitRequest& r) {
         auto* s = r.add_items()->mutable_spec();
         s->add_argv("x");
         s->set_label("no spaces please");
       },
       "label"},
  };
  for (auto& c : cases) {
    pb::Envelope env;
    c.make(*env.mutable_submit());
    client_send(env);
    settle();
    auto errors = client_->take(Body::kError);
    ASSERT_EQ(errors.size(), 1u) << c.expect;
    EXPECT_EQ(errors[0].error().code(), pb::INVALID_ARGUMENT);
    EXPECT_NE(errors[0].error().message().find(c.expect), std::string::npos)
        << errors[0].error().message();
  }
  EXPECT_EQ(hub_->job_for_test(1), nullptr);
  EXPECT_EQ(submit(1), 1u); // no id was used up
}

TEST_F(HubTest, CancellingAQueuedJobNeedsNoAgent) {
  auto job = submit(2);
  pb::Envelope env;
  auto* r = env.mutable_cancel()->mutable_selector()->add_ids();
  r->set_first(job);
  client_send(env);
  settle();
  auto replies = client_->take(Body::kCancelReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].cancel_reply().cancelled(), 1u);
  EXPECT_EQ(state(job), JobState::Cancelled);
  auto agent = register_agent("n1", 4);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{job + 1}));
}

TEST_F(HubTest, CancellingARunningJobKillsItOnItsAgent) {
  auto job = submit(1);
  auto agent = register_agent("n1", 1);
  ASSERT_EQ(assigned(*agent).size(), 1u);
  agent_event(*agent, agent, job, pb::JobEvent::STARTED);
  pb::Envelope env;
  env.mutable_cancel()->mutable_selector()->add_ids()->set_first(job);
  client_send(env);
  settle();
  auto kills = agent->take(Body::kKill);
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].kill().jobs(0).job_id(), job);
  EXPECT_EQ(state(job), JobState::Running); // until the agent reports the end
  pb::Envelope fin;
  auto* ev = fin.mutable_job_events()->add_events();
  ev->set_job_id(job);
  ev->set_attempt(1);
  ev->set_kind(pb::JobEvent::FINISHED);
  ev->set_signal(15);
  ev->set_killed(true);
  hub_->on_agent_frame(agent, fin);
  settle();
  EXPECT_EQ(state(job), JobState::Cancelled);
}

TEST_F(HubTest, LostAgentsJobsAreRequeuedAndRunElsewhere) {
  auto job = submit(1);
  auto a = register_agent("n1", 1);
  ASSERT_EQ(assigned(*a).size(), 1u);
  agent_event(*a, a, job, pb::JobEvent::STARTED);
  hub_->on_agent_closed(a, make_error(ErrorCode::Unavailable, "connection closed"), false);
  settle();
  // Not local, so the hub cannot know the agent died: it waits until the agent's keeper has
  // certainly ended it (one lease after the last frame heard) plus the kill margin.
  EXPECT_EQ(state(job), JobState::Running);
  clock_.advance(requeue_after_ms() - 1000);
  hub_->tick_for_test();
  settle();
  EXPECT_EQ(state(job), JobState::Running);
  clock_.advance(2000);
  hub_->tick_for_test();
  settle();
  EXPECT_EQ(state(job), JobState::Queued);
  const Job* j = hub_->job_for_test(job);
  EXPECT_EQ(j->lost_count, 1);
  EXPECT_NE(j->reason.find("was lost"), std::string::npos) << j->reason;
  auto b = register_agent("n2", 1);
  agent_id_of(*b);
  EXPECT_EQ(assigned(*b), (std::vector<std::uint64_t>{job}));
  EXPECT_EQ(hub_->job_for_test(job)->attempt, 2);
}

TEST_F(HubTest, LostJobsStopAfterTheirRetries) {
  config_.lost_retries = 0;
  stop_hub();
  start_hub();
  auto job = submit(1);
  auto a = register_agent("n1", 1);
  agent_event(*a, a, job, pb::JobEvent::STARTED);
  hub_->on_agent_closed(a, make_error(ErrorCode::Unavailable, "gone"), /*goodbye=*/true);
  settle();
  EXPECT_EQ(state(job), JobState::Lost);
}

TEST_F(HubTest, AReconnectingAgentKeepsItsJobsAndReportsWhatFinished) {
  auto first = submit(2);
  auto a = register_agent("n1", 1);
  auto id = agent_id_of(*a);
  ASSERT_EQ(assigned(*a).size(), 2u);
  agent_event(*a, a, first, pb::JobEvent::STARTED);
  hub_->on_agent_closed(a, make_error(ErrorCode::Unavailable, "network"), false);
  settle();
  // Back with job 1 finished while away and job 2 running.
  pb::AgentJob running;
  running.set_job_id(first + 1);
  running.set_attempt(1);
  running.set_started(true);
  pb::JobEvents unacked;
  unacked.set_seq(5);
  auto* ev = unacked.add_events();
  ev->set_job_id(first);
  ev->set_attempt(1);
  ev->set_kind(pb::JobEvent::FINISHED);
  ev->set_exit_code(0);
  auto b = register_agent("n1", 1, id, {running}, unacked);
  EXPECT_EQ(agent_id_of(*b), id);
  EXPECT_EQ(state(first), JobState::Succeeded);
  EXPECT_EQ(state(first + 1), JobState::Running);
  auto acks = b->take(Body::kJobEventsAck);
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].job_events_ack().seq(), 5u);
}

TEST_F(HubTest, RestartedHubWaitsForAgentsThenSettlesWhatTheyReport) {
  auto first = submit(3);
  auto a = register_agent("n1", 1);
  auto id = agent_id_of(*a);
  ASSERT_EQ(assigned(*a).size(), 2u); // one running slot + one in the launch queue
  agent_event(*a, a, first, pb::JobEvent::STARTED);
  restart_hub();
  // Reloaded as they were; nothing is rescheduled while the agent may come back.
  EXPECT_EQ(state(first), JobState::Running);
  EXPECT_EQ(state(first + 1), JobState::Assigned);
  EXPECT_EQ(state(first + 2), JobState::Queued);
  // The agent comes back: job 1 finished meanwhile; job 2 never reached it.
  pb::JobEvents unacked;
  unacked.set_seq(1);
  auto* ev = unacked.add_events();
  ev->set_job_id(first);
  ev->set_attempt(1);
  ev->set_kind(pb::JobEvent::FINISHED);
  ev->set_exit_code(0);
  auto b = register_agent("n1", 1, id, {}, unacked);
  EXPECT_EQ(agent_id_of(*b), id);
  EXPECT_EQ(state(first), JobState::Succeeded);
  auto again = assigned(*b);
  EXPECT_EQ(again, (std::vector<std::uint64_t>{first + 1, first + 2}));
  EXPECT_EQ(hub_->job_for_test(first + 1)->lost_count, 0); // never started: not a loss
}

TEST_F(HubTest, RestartedHubGivesUpOnAgentsThatDoNotReturn) {
  auto job = submit(1);
  auto a = register_agent("n1", 1);
  agent_event(*a, a, job, pb::JobEvent::STARTED);
  restart_hub();
  EXPECT_EQ(state(job), JobState::Running);
  clock_.advance(requeue_after_ms() - 1000);
  hub_->tick_for_test();
  settle();
  EXPECT_EQ(state(job), JobState::Running);
  clock_.advance(2000);
  hub_->tick_for_test();
  settle();
  EXPECT_EQ(state(job), JobState::Queued);
}

TEST_F(HubTest, AgentMustRegisterBeforeAnythingElse) {
  auto peer = std::make_shared<RecordingPeer>("rogue");
  pb::Envelope env;
  env.mutable_job_events();
  hub_->on_agent_frame(peer, env);
  EXPECT_TRUE(peer->closed());
  EXPECT_NE(peer->error.message.find("before the agent was registered"), std::string::npos);
}

TEST_F(HubTest, ClientsCannotSendAgentMessages) {
  pb::Envelope env;
  env.mutable_assign();
  client_send(env);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].error().message().find("a client may not send 'assign'"), std::string::npos);
  EXPECT_FALSE(client_->closed());
}

TEST_F(HubTest, WaitingForAJobThatDoesNotExistIsAnError) {
  pb::Envelope env;
  env.mutable_wait()->mutable_selector()->add_ids()->set_first(42);
  client_send(env);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].error().code(), pb::NOT_FOUND);
}

TEST_F(HubTest, OutputIsCreditedAfterItIsWritten) {
  auto job = submit(1);
  auto a = register_agent("n1", 1);
  agent_event(*a, a, job, pb::JobEvent::STARTED);
  pb::Envelope out;
  auto* c = out.mutable_output()->add_chunks();
  c->set_job_id(job);
  c->set_attempt(1);
  c->set_offset(0);
  c->set_data("hello\n");
  hub_->on_agent_frame(a, out);
  settle();
  auto credits = a->take(Body::kOutputCredit);
  ASSERT_EQ(credits.size(), 1u);
  EXPECT_EQ(credits[0].output_credit().bytes(), 6u);
  pb::Envelope logs;
  logs.mutable_logs()->set_job_id(job);
  client_send(logs);
  settle();
  auto data = client_->take(Body::kLogsData);
  ASSERT_EQ(data.size(), 2u);
  EXPECT_EQ(data[0].logs_data().data(), "hello\n");
  EXPECT_TRUE(data[1].logs_data().eof());
}

} // namespace
} // namespace sortie::hub

namespace sortie::hub {
namespace {

TEST_F(HubTest, HugeRangesAreRefusedWithoutWalkingThem) {
  auto first = submit(2);
  pb::Envelope wait;
  auto* r = wait.mutable_wait()->mutable_selector()->add_ids();
  r->set_first(first);
  r->set_last(99'999'999'999ull);
  client_send(wait); // returns at once: the hub never walks ids that cannot exist
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].error().message(), "job 3 does not exist");

  pb::Envelope cancel;
  auto* c = cancel.mutable_cancel()->mutable_selector()->add_ids();
  c->set_first(first);
  c->set_last(1'000'000'000'000ull);
  client_send(cancel);
  settle();
  auto replies = client_->take(Body::kCancelReply);
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies[0].cancel_reply().cancelled(), 2u);
  EXPECT_EQ(replies[0].cancel_reply().not_found(), 1'000'000'000'000ull - 2);
}

} // namespace
} // namespace sortie::hub

namespace sortie::hub {
namespace {

class HubRulesTest : public HubTest {
protected:
  std::uint64_t submit_with(const std::function<void(pb::JobSpec&)>& make, const std::string& group = "") {
    pb::Envelope env;
    env.mutable_submit()->set_group_name(group);
    auto* spec = env.mutable_submit()->add_items()->mutable_spec();
    spec->add_argv("/bin/true");
    make(*spec);
    client_send(env);
    settle();
    auto replies = client_->take(Body::kSubmitReply);
    EXPECT_EQ(replies.size(), 1u) << (client_->sent.empty() ? "" : client_->sent[0].DebugString());
    return replies.empty() ? 0 : replies[0].submit_reply().first_job_id();
  }
};

TEST_F(HubRulesTest, DependentsStartOnlyAfterTheirDependenciesSucceed) {
  auto a = submit(1);
  auto b = submit_with([&](pb::JobSpec& s) { s.add_after(a); });
  auto c = submit_with([&](pb::JobSpec& s) { s.add_after(b); });
  auto agent = register_agent("n1", 4);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{a}));
  run_to_end(agent, a, 0, 1);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{b}));
  EXPECT_EQ(state(c), JobState::Queued);
  run_to_end(agent, b, 0, 2);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{c}));
}

TEST_F(HubRulesTest, AFailedDependencyCancelsItsDependentsTransitively) {
  auto a = submit(1);
  auto b = submit_with([&](pb::JobSpec& s) { s.add_after(a); });
  auto c = submit_with([&](pb::JobSpec& s) { s.add_after(b); });
  auto agent = register_agent("n1", 4);
  ASSERT_EQ(assigned(*agent).size(), 1u);
  run_to_end(agent, a, 7, 1);
  EXPECT_EQ(state(b), JobState::Cancelled);
  EXPECT_EQ(hub_->job_for_test(b)->reason, fmt::format("dependency {} failed", a));
  EXPECT_EQ(state(c), JobState::Cancelled);
  EXPECT_EQ(hub_->job_for_test(c)->reason, fmt::format("dependency {} cancelled", b));
  EXPECT_TRUE(assigned(*agent).empty());
}

TEST_F(HubRulesTest, DependenciesSurviveARestart) {
  auto a = submit(1);
  auto b = submit_with([&](pb::JobSpec& s) { s.add_after(a); });
  restart_hub();
  auto agent = register_agent("n1", 4);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{a}));
  run_to_end(agent, a, 0, 1);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{b}));
}

TEST_F(HubRulesTest, QueueTimeoutEndsAJobThatNeverStarted) {
  auto job = submit_with([](pb::JobSpec& s) { s.set_queue_timeout_ms(60'000); });
  auto other = submit(1);
  clock_.advance(59'000);
  hub_->tick_for_test();
  EXPECT_EQ(state(job), JobState::Queued);
  clock_.advance(2'000);
  hub_->tick_for_test();
  settle();
  EXPECT_EQ(state(job), JobState::TimedOut);
  EXPECT_EQ(hub_->job_for_test(job)->reason,
            "not started within its queue timeout of 1m: no pilot is running: add one (sortie "
            "pilot add)");
  auto agent = register_agent("n1", 4);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{other})); // it left the queue
}

TEST_F(HubRulesTest, QueueTimeoutTakesAJobOutOfItsAgentsLaunchQueue) {
  // A node busy with one job: the next waits in its launch queue (assigned, not started) and
  // times out there, saying how many slots were free.
  auto agent = register_agent("n1", 1);
  auto busy = submit(1);
  auto job = submit_with([](pb::JobSpec& s) { s.set_queue_timeout_ms(60'000); });
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{busy, job}));
  agent_event(*agent, agent, busy, pb::JobEvent::STARTED);
  clock_.advance(61'000);
  hub_->tick_for_test();
  settle();
  auto kills = agent->take(Body::kKill);
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].kill().jobs(0).job_id(), job);
  pb::Envelope fin; // as the agent reports a job it dropped from its launch queue
  auto* ev = fin.mutable_job_events()->add_events();
  ev->set_job_id(job);
  ev->set_attempt(1);
  ev->set_kind(pb::JobEvent::FINISHED);
  ev->set_killed(true);
  ev->set_error("dropped");
  hub_->on_agent_frame(agent, fin);
  settle();
  EXPECT_EQ(state(job), JobState::TimedOut);
  EXPECT_EQ(hub_->job_for_test(job)->reason,
            "not started within its queue timeout of 1m: waiting for free resources: it needs 1 "
            "slot on a node; there is 1 such node, and the most free slots on one now is 0 (of "
            "1)");
  EXPECT_EQ(state(busy), JobState::Running);
}

TEST_F(HubRulesTest, RetryOnFailureRunsAgainUntilTheRetriesAreUsed) {
  auto job = submit_with([](pb::JobSpec& s) {
    s.set_retries(1);
    s.set_retry_on_failure(true);
  });
  auto agent = register_agent("n1", 1);
  ASSERT_EQ(assigned(*agent).size(), 1u);
  run_to_end(agent, job, 1, 1);
  // Requeued at once and handed out again as attempt 2.
  EXPECT_EQ(state(job), JobState::Assigned);
  EXPECT_EQ(hub_->job_for_test(job)->fail_count, 1);
  EXPECT_EQ(assigned(*agent), (std::vector<std::uint64_t>{job}));
  agent_event(*agent, agent, job, pb::JobEvent::STARTED, 0, 0, 2);
  agent_event(*agent, agent, job, pb::JobEvent::FINISHED, 1, 2, 2);
  EXPECT_EQ(state(job), JobState::Failed); // one retry only
  EXPECT_EQ(hub_->job_for_test(job)->attempt, 2);
}

TEST_F(HubRulesTest, MaxPerNodeCountsANamedGroupAcrossSubmissions) {
  for (int i = 0; i < 2; ++i)
    submit_with([](pb::JobSpec& s) { s.set_max_per_node(1); }, "shared");
  auto agent = register_agent("n1", 4);
  EXPECT_EQ(assigned(*agent).size(), 1u); // the second submission shares the group
}

TEST_F(HubRulesTest, WaitingForAGroupByName) {
  submit_with([](pb::JobSpec&) {}, "step1");
  pb::Envelope wait;
  wait.mutable_wait()->mutable_selector()->add_group_names("step1");
  client_send(wait);
  EXPECT_TRUE(client_->take(Body::kError).empty());
  pb::Envelope bad;
  bad.mutable_wait()->mutable_selector()->add_group_names("nope");
  client_send(bad);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].error().message().rfind("no group is named 'nope'", 0), 0u) << errors[0].error().message();
}

TEST_F(HubRulesTest, AfterMustNameExistingJobs) {
  pb::Envelope env;
  auto* spec = env.mutable_submit()->add_items()->mutable_spec();
  spec->add_argv("x");
  spec->add_after(77);
  client_send(env);
  auto errors = client_->take(Body::kError);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].error().message(), "--after 77: there is no job 77");
}


TEST_F(HubTest, AReconnectWithoutTheSessionKeyIsRefusedAndChangesNothing) {
  auto job = submit(1);
  auto a = register_agent("n1", 1);
  auto id = agent_id_of(*a);
  ASSERT_EQ(assigned(*a).size(), 1u);
  agent_event(*a, a, job, pb::JobEvent::STARTED);
  // Someone holding the profile's token, but not this agent's session key, claims its id.
  auto impostor = std::make_shared<RecordingPeer>("impostor");
  pb::AgentRegister reg;
  reg.set_agent_id(id);
  reg.set_node_name("n1");
  reg.set_slots(1);
  reg.set_session_proof(protocol::agent_session_proof("not the key", id, 1));
  auto* j = reg.add_jobs();
  j->set_job_id(job);
  j->set_attempt(1);
  j->set_started(true);
  hub_->on_agent_register(impostor, reg);
  settle();
  EXPECT_TRUE(impostor->closed());
  EXPECT_EQ(impostor->error.code, ErrorCode::PermissionDenied) << impostor->error.to_string();
  // Its forged result is not taken; the real agent keeps its session and its job.
  pb::Envelope forged;
  auto* ev = forged.mutable_job_events()->add_events();
  ev->set_job_id(job);
  ev->set_attempt(1);
  ev->set_kind(pb::JobEvent::FINISHED);
  ev->set_exit_code(42);
  hub_->on_agent_frame(impostor, forged);
  settle();
  EXPECT_FALSE(a->closed());
  EXPECT_EQ(state(job), JobState::Running);
  // The real agent, reconnecting with its key, is taken back.
  hub_->on_agent_closed(a, make_error(ErrorCode::Unavailable, "dropped"), false);
  auto back = register_agent("n1", 1, id, {j[0]});
  EXPECT_FALSE(back->closed());
  EXPECT_EQ(agent_id_of(*back), id);
  EXPECT_EQ(state(job), JobState::Running);
}


TEST_F(HubTest, AnAgentThatMissesItsRepliesCanStillReconnect) {
  auto a = register_agent("n1", 1);
  auto id = agent_id_of(*a);
  std::string key = sessions_[id].first;
  // Its link drops again and again before AgentRegistered arrives: it keeps proving epoch 1.
  for (int i = 0; i < 3; ++i) {
    auto peer = std::make_shared<RecordingPeer>("agent n1");
    pb::AgentRegister reg;
    reg.set_agent_id(id);
    reg.set_node_name("n1");
    reg.set_hostname("elsewhere");
    reg.set_slots(1);
    reg.set_session_proof(protocol::agent_session_proof(key, id, 1));
    hub_->on_agent_register(peer, reg);
    settle();
    EXPECT_FALSE(peer->closed()) << "try " << i << ": " << peer->error.to_string();
    hub_->on_agent_closed(peer, make_error(ErrorCode::Unavailable, "dropped"), false);
    settle();
  }
}

} // namespace
} // namespace sortie::hub
