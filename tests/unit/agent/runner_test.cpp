// SPDX-License-Identifier: Apache-2.0
// The agent's job runner on its own, with real processes: the launch queue (in order, as slots
// free), reaping (exit codes, signals, programs that cannot start), kills of whole process trees,
// run timeouts, and what a reconnecting agent reports. The test plays the agent: it records the
// events and output the runner reports.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <fstream>
#include <map>
#include <thread>

#include "agent/runner.hpp"
#include "protocol/auth.hpp"
#include "fakes/temp_dir.hpp"
#include "launch/process.hpp"

namespace sortie::agent {
namespace {

using Kind = pb::JobEvent::Kind;

class RunnerTest : public ::testing::Test {
protected:
  void make(std::uint32_t slots, bool pidfds = true) {
    limits_ = MemoryLimits::detect("none");
    RunnerConfig c;
    c.node_name = "n1";
    c.address = "n1";
    c.slots = slots;
    c.pidfds = pidfds;
    c.keeper_table_fd = ::memfd_create("keeper-table", MFD_CLOEXEC);
    keeper_fd_ = c.keeper_table_fd;
    // Unique like an agent's: tags are how kills find a job's processes, across the machine.
    c.nonce = protocol::to_hex(protocol::random_bytes(8));
    for (char** e = environ; *e; ++e)
      c.base_env.emplace_back(*e);
    runner_ = std::make_unique<JobRunner>(
        io_, c, limits_,
        RunnerHooks{[this](pb::JobEvent ev, bool) {
                      events_.push_back(std::move(ev));
                      max_used_ = std::max(max_used_, runner_->used_slots());
                    },
                    [this](pb::OutputChunk ch) {
                      out_[{ch.job_id(), ch.stream()}] += ch.data();
                      runner_->add_credit(static_cast<std::int64_t>(ch.data().size()));
                    },
                    [this] { all_ended_ = true; }});
    runner_->set_credit(1 << 20);
    runner_->start();
  }
  ~RunnerTest() override {
    if (runner_)
      runner_->kill_all();
    runner_.reset();
    if (keeper_fd_ >= 0)
      ::close(keeper_fd_);
  }

  void assign(std::uint64_t job, std::vector<std::string> argv, std::uint32_t slots = 1,
              std::int64_t run_timeout_ms = 0, std::string cwd = {}) {
    pb::JobSpec spec;
    for (auto& a : argv)
      spec.add_argv(a);
    spec.set_slots(slots);
    spec.set_run_timeout_ms(run_timeout_ms);
    spec.set_cwd(cwd);
    pb::Assignment a;
    a.set_job_id(job);
    a.set_attempt(1);
    a.set_spec(spec.SerializeAsString());
    runner_->assign(a);
  }

  /// Runs the loop until `done` holds (at most 30 s).
  template <typename Pred>
  void run_until(Pred done, const char* what) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done()) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "timed out waiting for " << what;
      io_.run_one_for(std::chrono::milliseconds(100));
    }
  }

  const pb::JobEvent* event(std::uint64_t job, Kind kind) const {
    for (const auto& e : events_)
      if (e.job_id() == job && e.kind() == kind)
        return &e;
    return nullptr;
  }
  /// Position of an event in the order reported (-1: not reported).
  int position(std::uint64_t job, Kind kind) const {
    for (std::size_t i = 0; i < events_.size(); ++i)
      if (events_[i].job_id() == job && events_[i].kind() == kind)
        return static_cast<int>(i);
    return -1;
  }
  std::size_t finished() const {
    std::size_t n = 0;
    for (const auto& e : events_)
      n += e.kind() == pb::JobEvent::FINISHED;
    return n;
  }

  asio::io_context io_;
  MemoryLimits limits_;
  int keeper_fd_ = -1; ///< the keeper table's memfd
  std::unique_ptr<JobRunner> runner_;
  std::vector<pb::JobEvent> events_;
  std::map<std::pair<std::uint64_t, int>, std::string> out_;
  bool all_ended_ = false;
  std::uint32_t max_used_ = 0; ///< slots in use, at most, seen at any event
  testing::TempDir dir_;
};

TEST_F(RunnerTest, TheLaunchQueueStartsJobsInOrderAsSlotsFree) {
  make(1);
  for (std::uint64_t j = 1; j <= 3; ++j)
    assign(j, {"/bin/true"});
  runner_->start_queued();
  run_until([&] { return finished() == 3; }, "three jobs");
  // In order, one at a time: a job starts the moment the one before it exits (its FINISHED may
  // follow once its output is read).
  EXPECT_LT(position(1, pb::JobEvent::STARTED), position(2, pb::JobEvent::STARTED));
  EXPECT_LT(position(2, pb::JobEvent::STARTED), position(3, pb::JobEvent::STARTED));
  EXPECT_EQ(max_used_, 1u);
  for (std::uint64_t j = 1; j <= 3; ++j)
    EXPECT_EQ(event(j, pb::JobEvent::FINISHED)->exit_code(), 0);
  EXPECT_EQ(runner_->used_slots(), 0u);
  EXPECT_EQ(runner_->held(), 0u);
}


// A freed slot is filled before the ended job is dealt with (its output read, its FINISHED
// reported), and the record keeps a slot's jobs apart: an attempt ends when its leader exits,
// not when its end is reported.
TEST_F(RunnerTest, TheNextJobStartsBeforeTheEndedOneIsReported) {
  make(1);
  assign(1, {"sh", "-c", "echo one"});
  assign(2, {"sh", "-c", "echo two >&2"});
  assign(3, {"/bin/true"});
  runner_->start_queued();
  run_until([&] { return finished() == 3; }, "three jobs");
  EXPECT_LT(position(2, pb::JobEvent::STARTED), position(1, pb::JobEvent::FINISHED));
  EXPECT_LT(position(3, pb::JobEvent::STARTED), position(2, pb::JobEvent::FINISHED));
  for (std::uint64_t j = 1; j <= 2; ++j)
    EXPECT_LE(event(j, pb::JobEvent::FINISHED)->time_ms(),
              event(j + 1, pb::JobEvent::STARTED)->time_ms())
        << "job " << j << " ends after the job that took its slot started";
  EXPECT_EQ((out_[{1, pb::STREAM_STDOUT}]), "one\n");
  EXPECT_EQ((out_[{2, pb::STREAM_STDERR}]), "two\n");
  EXPECT_EQ(max_used_, 1u);
}
// Kernels before 5.3 have no pidfds: a thread blocked in wait4 reports the exits instead.
TEST_F(RunnerTest, WithoutPidfdsAThreadReapsTheJobs) {
  make(1, /*pidfds=*/false);
  for (std::uint64_t j = 1; j <= 3; ++j)
    assign(j, {"sh", "-c", "exit " + std::to_string(j)});
  runner_->start_queued();
  run_until([&] { return finished() == 3; }, "three jobs");
  for (std::uint64_t j = 1; j <= 3; ++j)
    EXPECT_EQ(event(j, pb::JobEvent::FINISHED)->exit_code(), static_cast<int>(j));
  EXPECT_EQ(max_used_, 1u);
  assign(4, {"sleep", "300"});
  runner_->start_queued();
  run_until([&] { return event(4, pb::JobEvent::STARTED) != nullptr; }, "job 4 to start");
  runner_->cancel(4, 0, 0, "by the test");
  run_until([&] { return finished() == 4; }, "the cancelled job to end");
  EXPECT_TRUE(event(4, pb::JobEvent::FINISHED)->killed());
}

TEST_F(RunnerTest, AJobThatNeedsMoreSlotsWaitsAndNothingOvertakesIt) {
  make(2);
  auto flag = dir_.path() / "go";
  assign(1, {"sh", "-c", "while [ ! -e \"$1\" ]; do sleep 0.02; done", "sh", flag.string()});
  assign(2, {"/bin/true"}, 2); // needs both slots
  assign(3, {"/bin/true"});    // would fit beside job 1, but comes after job 2
  runner_->start_queued();
  run_until([&] { return event(1, pb::JobEvent::STARTED) != nullptr; }, "job 1 to start");
  EXPECT_EQ(event(2, pb::JobEvent::STARTED), nullptr);
  EXPECT_EQ(event(3, pb::JobEvent::STARTED), nullptr);
  EXPECT_EQ(runner_->used_slots(), 1u);
  std::ofstream(flag).put('x');
  run_until([&] { return finished() == 3; }, "all three");
  EXPECT_LT(position(2, pb::JobEvent::STARTED), position(3, pb::JobEvent::STARTED));
  EXPECT_EQ(max_used_, 2u); // job 2 alone on both slots; never job 1 and job 2 at once
}

TEST_F(RunnerTest, ExitCodesSignalsAndProgramsThatCannotStart) {
  make(4);
  assign(1, {"sh", "-c", "echo out; echo err >&2; exit 3"});
  assign(2, {"sh", "-c", "kill -KILL $$"});
  assign(3, {"/no/such/program"});
  runner_->start_queued();
  run_until([&] { return finished() == 3; }, "three jobs");
  const auto* one = event(1, pb::JobEvent::FINISHED);
  EXPECT_TRUE(one->has_exit_code());
  EXPECT_EQ(one->exit_code(), 3);
  EXPECT_EQ((out_[{1, pb::STREAM_STDOUT}]), "out\n");
  EXPECT_EQ((out_[{1, pb::STREAM_STDERR}]), "err\n");
  const auto* two = event(2, pb::JobEvent::FINISHED);
  EXPECT_TRUE(two->has_signal());
  EXPECT_EQ(two->signal(), SIGKILL);
  const auto* three = event(3, pb::JobEvent::FINISHED);
  EXPECT_EQ(three->exit_code(), 127);
  EXPECT_NE(three->error().find("/no/such/program"), std::string::npos) << three->error();
}

/// A line of /proc/<pid>/status ("SigIgn:\t0000000000001000" -> "0000000000001000").
std::string status_field(const std::string& status, const std::string& name) {
  auto at = status.find("\n" + name + ":");
  if (at == std::string::npos)
    return "(no " + name + ")";
  at = status.find_first_not_of(" \t", at + name.size() + 2);
  return status.substr(at, status.find('\n', at) - at);
}

// What the agent holds does not reach the job: ignored signals, handlers, a blocked mask, its
// session, its descriptors (even ones without close-on-exec), its stdin.
TEST_F(RunnerTest, AJobStartsCleanWhateverTheAgentHolds) {
  make(4);
  struct sigaction ignore {}, handler {}, old_pipe {}, old_usr2 {};
  ignore.sa_handler = SIG_IGN;
  handler.sa_handler = [](int) {};
  ASSERT_EQ(::sigaction(SIGPIPE, &ignore, &old_pipe), 0);
  ASSERT_EQ(::sigaction(SIGUSR2, &handler, &old_usr2), 0);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0); // this thread starts the jobs
  int leaked = ::open("/dev/null", O_RDONLY); // no close-on-exec
  ASSERT_GE(leaked, 3);

  assign(1, {"cat", "/proc/self/status"}); // found along PATH
  assign(2, {"ls", "/proc/self/fd"});      // ls's own: 0-2 and the directory it lists
  assign(3, {"readlink", "/proc/self/fd/0"});
  runner_->start_queued();
  run_until([&] { return finished() == 3; }, "three jobs");
  ::close(leaked);
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ::sigaction(SIGUSR2, &old_usr2, nullptr);

  const auto& status = out_[{1, pb::STREAM_STDOUT}];
  EXPECT_EQ(status_field(status, "SigIgn"), "0000000000000000") << status;
  EXPECT_EQ(status_field(status, "SigCgt"), "0000000000000000") << status;
  EXPECT_EQ(status_field(status, "SigBlk"), "0000000000000000") << status;
  EXPECT_EQ(status_field(status, "NSsid"), status_field(status, "Pid")) << "its own session";
  EXPECT_EQ((out_[{2, pb::STREAM_STDOUT}]), "0\n1\n2\n3\n");
  EXPECT_EQ((out_[{3, pb::STREAM_STDOUT}]), "/dev/null\n");
  for (std::uint64_t j = 1; j <= 3; ++j)
    EXPECT_EQ(event(j, pb::JobEvent::FINISHED)->exit_code(), 0) << j;
}

// Why a job could not start names what failed: the directory it was to run in, or the program.
TEST_F(RunnerTest, AJobThatCannotStartSaysWhy) {
  make(4);
  auto no_exec = dir_.path() / "not-executable";
  std::ofstream(no_exec) << "#!/bin/sh\n";
  assign(1, {"/bin/true"}, 1, 0, (dir_.path() / "gone").string());
  assign(2, {no_exec.string()});
  assign(3, {"no-such-program-anywhere"});
  assign(4, {"pwd"}, 1, 0, dir_.path().string());
  runner_->start_queued();
  run_until([&] { return finished() == 4; }, "four jobs");
  const auto* one = event(1, pb::JobEvent::FINISHED);
  EXPECT_NE(one->error().find("cannot enter working directory '" +
                              (dir_.path() / "gone").string() + "'"),
            std::string::npos)
      << one->error();
  const auto* two = event(2, pb::JobEvent::FINISHED);
  EXPECT_NE(two->error().find("cannot execute '" + no_exec.string() + "'"), std::string::npos)
      << two->error();
  EXPECT_NE(two->error().find(std::strerror(EACCES)), std::string::npos) << two->error();
  const auto* three = event(3, pb::JobEvent::FINISHED);
  EXPECT_NE(three->error().find("cannot execute 'no-such-program-anywhere'"), std::string::npos)
      << three->error();
  EXPECT_NE(three->error().find(std::strerror(ENOENT)), std::string::npos) << three->error();
  // (The runner does not wait for the exec: such a job may have been reported STARTED first.)
  for (std::uint64_t j = 1; j <= 3; ++j)
    EXPECT_EQ(event(j, pb::JobEvent::FINISHED)->exit_code(), 127) << j;
  EXPECT_EQ((out_[{4, pb::STREAM_STDOUT}]), dir_.path().string() + "\n");
  EXPECT_EQ(runner_->used_slots(), 0u);
}

TEST_F(RunnerTest, ACancelKillsTheWholeTree) {
  make(1);
  // The job's shell starts a grandchild and says its pid.
  assign(1, {"sh", "-c", "sleep 300 & echo $!; wait"});
  runner_->start_queued();
  run_until([&] { return out_[{1, pb::STREAM_STDOUT}].find('\n') != std::string::npos; },
            "the grandchild's pid");
  pid_t grandchild = std::stoi(out_[{1, pb::STREAM_STDOUT}]);
  ASSERT_TRUE(launch::pid_alive(grandchild));
  runner_->cancel(1, 0, 0, "by the test");
  run_until([&] { return finished() == 1; }, "the cancelled job to end");
  const auto* end = event(1, pb::JobEvent::FINISHED);
  EXPECT_TRUE(end->killed());
  EXPECT_TRUE(end->has_signal());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (launch::pid_alive(grandchild) && std::chrono::steady_clock::now() < deadline)
    io_.run_one_for(std::chrono::milliseconds(20)); // init reaps it
  EXPECT_FALSE(launch::pid_alive(grandchild)) << "the grandchild outlived its job";
}

// The runner does not wait for a job's exec: a cancel right after the start finds the leader
// even before it has its own session (by its pid) and holds, whether it kills at once or asks
// first (a SIGTERM that waits, blocked, until the child has reset its handlers).
TEST_F(RunnerTest, ACancelRightAfterTheStartEndsTheJob) {
  make(4);
  for (std::uint64_t j = 1; j <= 4; ++j)
    assign(j, {"sleep", "300"});
  runner_->start_queued();
  runner_->cancel(1, 0, 0, "by the test");
  runner_->cancel(2, 0, 60'000, "by the test"); // (its kill timer is longer than the test)
  runner_->cancel(3, 0, 0, "by the test");
  runner_->cancel(4, 0, 60'000, "by the test");
  run_until([&] { return finished() == 4; }, "the cancelled jobs to end");
  for (std::uint64_t j = 1; j <= 4; ++j) {
    const auto* end = event(j, pb::JobEvent::FINISHED);
    EXPECT_TRUE(end->killed()) << j;
    EXPECT_EQ(end->signal(), j % 2 ? SIGKILL : SIGTERM) << j;
  }
  EXPECT_EQ(runner_->used_slots(), 0u);
}

TEST_F(RunnerTest, ARunTimeoutKillsAndSaysSo) {
  make(1);
  assign(1, {"sleep", "300"}, 1, /*run_timeout_ms=*/200);
  runner_->start_queued();
  run_until([&] { return finished() == 1; }, "the job to time out");
  const auto* end = event(1, pb::JobEvent::FINISHED);
  EXPECT_TRUE(end->timed_out()) << end->DebugString();
  EXPECT_FALSE(end->killed());
}

TEST_F(RunnerTest, WhatItHoldsIsWhatAReconnectingAgentReports) {
  make(1);
  auto flag = dir_.path() / "go";
  assign(1, {"sh", "-c", "while [ ! -e \"$1\" ]; do sleep 0.02; done", "sh", flag.string()});
  assign(2, {"/bin/true"});
  runner_->start_queued();
  run_until([&] { return event(1, pb::JobEvent::STARTED) != nullptr; }, "job 1 to start");
  pb::AgentRegister reg;
  runner_->describe(reg);
  ASSERT_EQ(reg.jobs_size(), 2);
  std::map<std::uint64_t, bool> started;
  for (const auto& j : reg.jobs())
    started[j.job_id()] = j.started();
  EXPECT_TRUE(started[1]);
  EXPECT_FALSE(started[2]);
  // The same assignment again (the hub resends after a reconnect) is not a second attempt.
  assign(2, {"/bin/true"});
  EXPECT_EQ(runner_->held(), 2u);
  std::ofstream(flag).put('x');
  run_until([&] { return finished() == 2; }, "both jobs");
  EXPECT_EQ(runner_->held(), 0u);
}

// What the keeper would kill, were the agent to die now, is exactly what runs.
TEST_F(RunnerTest, TheKeepersTableHoldsTheRunningJobs) {
  make(2);
  assign(1, {"sleep", "300"});
  assign(2, {"sleep", "300"});
  assign(3, {"/bin/true"}); // queued behind them
  runner_->start_queued();
  run_until([&] { return event(2, pb::JobEvent::STARTED) != nullptr; }, "two jobs to start");
  auto table = KeeperTable::read(keeper_fd_);
  ASSERT_EQ(table.size(), 2u);
  std::map<pid_t, std::string> held;
  for (auto& j : table)
    held[j.sid] = j.tag;
  for (std::uint64_t j = 1; j <= 2; ++j) {
    pid_t pid = static_cast<pid_t>(event(j, pb::JobEvent::STARTED)->pid());
    ASSERT_TRUE(held.contains(pid)) << "job " << j;
    EXPECT_NE(held[pid].find("." + std::to_string(j) + ".1"), std::string::npos) << held[pid];
  }
  runner_->cancel(1, 0, 0, "by the test");
  run_until([&] { return finished() == 2; }, "job 1 to end and job 3 to run");
  ASSERT_EQ(KeeperTable::read(keeper_fd_).size(), 1u);
  runner_->cancel(2, 0, 0, "by the test");
  run_until([&] { return finished() == 3; }, "job 2 to end");
  EXPECT_TRUE(KeeperTable::read(keeper_fd_).empty());
}

// The table grows as jobs come (no job is ever dropped from it), and reuses what ends.
TEST(KeeperTable, GrowsAndReusesEntries) {
  int fd = ::memfd_create("keeper-table", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  {
    KeeperTable table(fd);
    for (pid_t sid = 1; sid <= 300; ++sid)
      ASSERT_TRUE(table.add({sid, "tag-" + std::to_string(sid)}).ok());
    for (pid_t sid = 1; sid <= 300; sid += 2)
      table.remove(sid);
    for (pid_t sid = 1001; sid <= 1100; ++sid) // into the freed entries
      ASSERT_TRUE(table.add({sid, "tag-" + std::to_string(sid)}).ok());
    auto held = KeeperTable::read(fd);
    EXPECT_EQ(held.size(), 250u);
    EXPECT_EQ(table.size(), 250u);
    std::map<pid_t, std::string> by_sid;
    for (auto& j : held)
      by_sid[j.sid] = j.tag;
    EXPECT_EQ(by_sid.size(), 250u);
    EXPECT_EQ(by_sid[300], "tag-300");
    EXPECT_EQ(by_sid[1100], "tag-1100");
    EXPECT_FALSE(by_sid.contains(299));
  }
  ::close(fd);
}

TEST_F(RunnerTest, StopAllEndsEveryJobThenSaysSo) {
  make(2);
  assign(1, {"sleep", "300"});
  assign(2, {"sleep", "300"});
  assign(3, {"sleep", "300"}); // queued behind the two
  runner_->start_queued();
  run_until([&] { return event(2, pb::JobEvent::STARTED) != nullptr; }, "two jobs to start");
  runner_->stop_all(/*grace_ms=*/1000, "the agent is stopping");
  run_until([&] { return all_ended_; }, "every job to end");
  EXPECT_EQ(finished(), 3u);
  EXPECT_EQ(event(3, pb::JobEvent::STARTED), nullptr); // never started
  EXPECT_TRUE(event(1, pb::JobEvent::FINISHED)->killed());
}

} // namespace
} // namespace sortie::agent
