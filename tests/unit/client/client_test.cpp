// SPDX-License-Identifier: Apache-2.0
// The client library against a real hub: the built `sortie` binary, started by the library
// itself (connect-or-start) in a throw-away SORTIE_HOME, with a real local pilot. Each test ends
// every process it started (the hub, its agents and their keepers and jobs).
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <map>
#include <set>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/hub_file.hpp"
#include "common/profile.hpp"
#include "fakes/temp_dir.hpp"
#include "sortie/client.hpp"
#include "sortie/tasks.hpp"

namespace sortie {
namespace {

/// Every process whose command line names `dir` (the hub and agents of this home).
std::vector<pid_t> processes_under(const std::string& dir) {
  std::vector<pid_t> out;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos)
      continue;
    std::ifstream f(e.path() / "cmdline");
    std::string cmdline;
    try {
      cmdline.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    } catch (const std::ios_base::failure&) {
      continue; // it exited while being read (ESRCH): libstdc++'s filebuf throws on that
    }
    if (cmdline.find(dir) != std::string::npos && std::stoi(name) != ::getpid())
      out.push_back(std::stoi(name));
  }
  return out;
}

class ClientTest : public ::testing::Test {
protected:
  ClientTest() {
    ::setenv("SORTIE_HOME", home_.path().c_str(), 1);
    ::unsetenv("SORTIE_PROFILE");
    options_.sortie_exe = SORTIE_TEST_EXE;
    options_.start_if_needed = true;
    options_.on_hub_started = [this](const HubStarted& h) { started_.push_back(h); };
  }
  ~ClientTest() override {
    // The hub first (it stops its agents, which end their jobs); then anything left, by force.
    if (auto c = Client::connect(ConnectOptions{}); c.ok())
      (void)c->stop_hub();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (auto left = processes_under(home_.path().string()); !left.empty();
         left = processes_under(home_.path().string())) {
      bool late = std::chrono::steady_clock::now() > deadline;
      for (pid_t p : left)
        if (late)
          ::kill(p, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20)); // polling process exit
    }
  }

  int hub_pid() {
    auto hf = read_hub_file(home_.path() / "default" / "hub.json");
    return hf.ok() ? hf->pid : 0;
  }

  Client connected() {
    auto c = Client::connect(options_);
    EXPECT_TRUE(c.ok()) << c.error().to_string();
    return std::move(*c);
  }

  /// What a hub started again from its store lists: `session` ends, the hub `c` reached stops,
  /// and a new one starts.
  std::vector<TaskInfo> tasks_after_restart(Client& c, std::unique_ptr<Session>& session) {
    session.reset();
    EXPECT_TRUE(c.stop_hub().ok());
    Client back = connected();
    auto again = Session::connect(options_);
    EXPECT_TRUE(again.ok()) << again.error().to_string();
    if (!again.ok())
      return {};
    auto tasks = (*again)->tasks({}, 0);
    EXPECT_TRUE(tasks.ok()) << tasks.error().to_string();
    return tasks.ok() ? *tasks : std::vector<TaskInfo>{};
  }

  void add_pilot(Client& c) {
    PilotSpec p;
    p.slots_per_node = 2;
    ASSERT_TRUE(c.add_pilot(p).ok());
  }

  /// A local pilot running the example N-body engine (examples/cpp/nbody_engine.cpp) with these
  /// arguments.
  void start_nbody_engine(Client& c, std::vector<std::string> args = {}) {
    add_pilot(c);
    JobSpec spec;
    spec.argv = {SORTIE_TEST_NBODY};
    spec.argv.insert(spec.argv.end(), args.begin(), args.end());
    spec.kind = "engine";
    ASSERT_TRUE(c.submit(spec).ok());
  }

  testing::TempDir home_;
  ConnectOptions options_;
  std::vector<HubStarted> started_;
};

TEST_F(ClientTest, ConnectOrStartStartsTheHubOnce) {
  ConnectOptions plain;
  auto none = Client::connect(plain);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, ErrorCode::Unavailable);
  EXPECT_NE(none.error().message.find("sortie hub start"), std::string::npos);

  Client c = connected();
  ASSERT_EQ(started_.size(), 1u);
  EXPECT_EQ(started_[0].profile, "default");
  EXPECT_EQ(started_[0].pid, hub_pid());
  auto status = c.hub_status();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->pid, hub_pid());

  Client again = connected(); // a hub runs: nothing is started
  EXPECT_EQ(started_.size(), 1u);
  auto second = start_hub(StartHubOptions{.sortie_exe = SORTIE_TEST_EXE});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, ErrorCode::AlreadyExists);
  EXPECT_NE(second.error().message.find(std::to_string(hub_pid())), std::string::npos);
}

// README, "Connect-or-start": which sortie a library user's hub is started with.
TEST_F(ClientTest, TheSortieProgramIsFoundThroughSortieExeOrPath) {
  auto saved_path = std::string(std::getenv("PATH") ? std::getenv("PATH") : "");
  ::setenv("SORTIE_EXE", SORTIE_TEST_EXE, 1);
  auto named = sortie_program();
  ASSERT_TRUE(named.ok()) << named.error().to_string();
  EXPECT_EQ(*named, std::filesystem::path(SORTIE_TEST_EXE));
  ::setenv("SORTIE_EXE", "/no/such/sortie", 1);
  auto wrong = sortie_program();
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("/no/such/sortie"), std::string::npos);
  ::unsetenv("SORTIE_EXE");
  ::setenv("PATH", std::filesystem::path(SORTIE_TEST_EXE).parent_path().c_str(), 1);
  auto on_path = sortie_program();
  ::setenv("PATH", saved_path.c_str(), 1);
  ASSERT_TRUE(on_path.ok()) << on_path.error().to_string();
  EXPECT_EQ(std::filesystem::canonical(*on_path), std::filesystem::canonical(SORTIE_TEST_EXE));
  // And a hub started without naming the program finds it the same way.
  ::setenv("SORTIE_EXE", SORTIE_TEST_EXE, 1);
  options_.sortie_exe.clear();
  Client c = connected();
  ::unsetenv("SORTIE_EXE");
  ASSERT_EQ(started_.size(), 1u);
  EXPECT_EQ(std::filesystem::canonical(fmt::format("/proc/{}/exe", hub_pid())),
            std::filesystem::canonical(SORTIE_TEST_EXE));
}

TEST_F(ClientTest, SubmitWaitAndReadOutput) {
  Client c = connected();
  add_pilot(c);
  JobSpec spec;
  spec.argv = {"sh", "-c", "echo hello; echo oops >&2; exit 0"};
  auto s = c.submit(spec);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  auto done = c.wait(JobSelector::one(s->first_id), {}, 60'000);
  ASSERT_TRUE(done.ok()) << done.error().to_string();
  EXPECT_TRUE(done->all_succeeded());
  std::string out, err;
  ASSERT_TRUE(c.output(s->first_id, OutputStream::Stdout, false,
                       [&](std::string_view d) { out += d; return true; }).ok());
  ASSERT_TRUE(c.output(s->first_id, OutputStream::Stderr, false,
                       [&](std::string_view d) { err += d; return true; }).ok());
  EXPECT_EQ(out, "hello\n");
  EXPECT_EQ(err, "oops\n");
}

TEST_F(ClientTest, FollowingOutputSeesItAsItComes) {
  Client c = connected();
  add_pilot(c);
  // The job prints a line, then waits for a file the test makes once it has seen that line.
  auto flag = home_.path() / "go";
  JobSpec spec;
  spec.argv = {"sh", "-c", "echo first; while [ ! -e \"$1\" ]; do sleep 0.05; done; echo second",
               "sh", flag.string()};
  auto s = c.submit(spec);
  ASSERT_TRUE(s.ok());
  std::string seen;
  auto r = c.output(s->first_id, OutputStream::Stdout, true, [&](std::string_view d) {
    seen += d;
    if (seen == "first\n")
      std::ofstream(flag).put('x');
    return true;
  });
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(seen, "first\nsecond\n");
}

std::string doubles(std::initializer_list<double> v) {
  return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * sizeof(double));
}

TEST_F(ClientTest, CompiledEngineHandlersAreCalledByNameAndKeepTheirState) {
  Client c = connected();
  start_nbody_engine(c, {"--dt", "0.001"});
  // A call waits in the queue until an engine is up; the state stays between calls.
  auto set = c.call("set_state", doubles({0.5, -0.5, 0, 0, 0, -0.5, 0, 0.5, 0.5, 0, 0, 0, 0.5, 0}));
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  EXPECT_EQ(*set, "");
  auto reached = c.call("evolve", doubles({0.25}));
  ASSERT_TRUE(reached.ok()) << reached.error().to_string();
  EXPECT_EQ(*reached, doubles({0.25}));
  std::vector<std::future<Result<std::string>>> many;
  for (int i = 0; i < 5; ++i)
    many.push_back(c.call_async("get_state", ""));
  for (auto& f : many) {
    auto state = f.get();
    ASSERT_TRUE(state.ok()) << state.error().to_string();
    ASSERT_EQ(state->size(), 15 * sizeof(double));
    double time = 0;
    std::memcpy(&time, state->data(), sizeof time);
    EXPECT_DOUBLE_EQ(time, 0.25);
  }
  // A handler's sortie::Error comes back with its code; an unknown handler is NotFound.
  auto bad = c.call("evolve", "abc");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::InvalidArgument);
  EXPECT_NE(bad.error().message.find("evolve: expected little-endian doubles, got 3 bytes"),
            std::string::npos) << bad.error().message;
  auto unknown = c.call("nope", "");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.error().code, ErrorCode::NotFound);
  EXPECT_NE(unknown.error().message.find("no handler 'nope' (it has: "), std::string::npos)
      << unknown.error().message;
  auto unnamed = c.call("", "");
  ASSERT_FALSE(unnamed.ok());
  EXPECT_EQ(unnamed.error().code, ErrorCode::InvalidArgument);
  CallOptions missing;
  missing.engine = 424242;
  auto nowhere = c.call("get_state", "", missing);
  ASSERT_FALSE(nowhere.ok());
  EXPECT_EQ(nowhere.error().code, ErrorCode::NotFound) << nowhere.error().to_string();
}

TEST_F(ClientTest, CallsAreNotStoredAndLargeOnesGoInPieces) {
  Client c = connected();
  start_nbody_engine(c);
  // 5.6 MB of particles: an argument over 4 MiB goes in pieces as a stored task; the state that
  // comes back (a transient call) in pieces too.
  std::vector<double> particles(7 * 100'000);
  for (std::size_t i = 0; i < particles.size(); ++i)
    particles[i] = static_cast<double>(i % 7 == 0 ? 1 : i);
  std::string big(reinterpret_cast<const char*>(particles.data()), particles.size() * sizeof(double));
  auto set = c.call("set_state", big);
  ASSERT_TRUE(set.ok()) << set.error().to_string();
  auto state = c.call("get_state", "");
  ASSERT_TRUE(state.ok()) << state.error().to_string();
  ASSERT_EQ(state->size(), sizeof(double) + big.size());
  EXPECT_EQ(state->substr(sizeof(double)), big);
  ASSERT_TRUE(c.call("set_state", big.substr(0, 7 * 3 * sizeof(double))).ok());
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(c.call("energy", "").ok());
  // What the hub keeps of them: the stored one only; the transient calls were dropped once their
  // results were delivered (none is in the store either: the hub holds no row of them).
  auto session = Session::connect(options_);
  ASSERT_TRUE(session.ok()) << session.error().to_string();
  auto tasks = (*session)->tasks({}, 0);
  ASSERT_TRUE(tasks.ok()) << tasks.error().to_string();
  ASSERT_EQ(tasks->size(), 1u);
  EXPECT_EQ(tasks->front().handler, "set_state");
  EXPECT_EQ(tasks->front().state, "done");
  // A hub started again from the store knows the same.
  auto after = tasks_after_restart(c, *session);
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after.front().handler, "set_state");
}

TEST_F(ClientTest, AResultThatComesWithItsReplyIsGivenOnceToTheSubmitterThatAskedForIt) {
  Client c = connected();
  start_nbody_engine(c);
  auto session = Session::connect(options_);
  ASSERT_TRUE(session.ok()) << session.error().to_string();
  // Each result reaches the caller once: in submit()'s `arrived` when it came before submit()
  // returned (with the reply), else through next_results().
  std::map<std::uint64_t, std::size_t> seen; // id -> size of its value
  std::set<std::uint64_t> submitted, states;
  std::size_t claimed = 0;
  auto submit = [&](std::vector<TaskCall> calls, bool state) {
    std::vector<TaskResult> arrived;
    auto ids = (*session)->submit(std::move(calls), true, &arrived);
    ASSERT_TRUE(ids.ok()) << ids.error().to_string();
    submitted.insert(ids->begin(), ids->end());
    if (state)
      states.insert(ids->begin(), ids->end());
    for (auto& r : arrived) {
      EXPECT_TRUE(std::count(ids->begin(), ids->end(), r.id)) << r.id; // only this submission's
      EXPECT_TRUE(seen.emplace(r.id, r.value.size()).second) << "task " << r.id << " twice";
      ++claimed;
    }
  };
  submit({{.handler = "set_state", .payload = doubles({1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0})}},
         false);
  // A short call submitted with a call whose 3.9 MB argument makes the commit long: the short
  // one has run, and its result reached the hub, before the submission is acknowledged. That is
  // a race the short call usually wins, but not every time: under the sanitizers on a machine
  // with fast disks the first few are lost (4 to 7 tries were needed there), so it is tried
  // until one is won, up to a bound that losing by chance never reaches.
  for (int i = 0; i < 60 && claimed == 0; ++i)
    submit({{.handler = "energy"}, {.handler = "no_such_handler",
                                    .payload = std::string(3'900'000, 'x')}}, false);
  EXPECT_GE(claimed, 1u) << "no result came with its submission's reply in 60 tries";
  for (int i = 0; i < 20; ++i)
    submit({{.handler = "energy"}}, false);
  // A state whose get_state result comes in pieces (over 4 MiB).
  std::vector<double> particles(7 * 100'000, 1.0);
  std::string big(reinterpret_cast<const char*>(particles.data()), particles.size() * sizeof(double));
  submit({{.handler = "set_state", .payload = big}}, false);
  for (int i = 0; i < 3; ++i)
    submit({{.handler = "get_state"}}, true);
  // Unwatched submissions never claim: their results are not pushed at all.
  std::vector<TaskResult> none;
  auto quiet = (*session)->submit({{.handler = "get_state"}}, false, &none);
  ASSERT_TRUE(quiet.ok()) << quiet.error().to_string();
  EXPECT_TRUE(none.empty());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (seen.size() < submitted.size() && std::chrono::steady_clock::now() < deadline) {
    auto more = (*session)->next_results(1000);
    ASSERT_TRUE(more.ok()) << more.error().to_string();
    for (auto& r : *more)
      EXPECT_TRUE(seen.emplace(r.id, r.value.size()).second) << "task " << r.id << " twice";
  }
  ASSERT_EQ(seen.size(), submitted.size());
  for (auto id : submitted) {
    ASSERT_TRUE(seen.count(id)) << "task " << id << " never came";
    if (states.count(id)) { // the whole state
      EXPECT_EQ(seen[id], sizeof(double) + big.size()) << "task " << id;
    }
  }
  // Nothing more comes: the unwatched one's result was not pushed, no result came twice.
  auto after = (*session)->next_results(200);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(after->empty());
}

TEST_F(ClientTest, AHubStartedAgainNeverGivesATransientCallsIdAgain) {
  Client c = connected();
  auto session = Session::connect(options_);
  ASSERT_TRUE(session.ok()) << session.error().to_string();
  TaskCall call; // no engine: it waits in the hub's memory only
  call.handler = "echo";
  call.transient = true;
  auto transient = (*session)->submit({call, call});
  ASSERT_TRUE(transient.ok()) << transient.error().to_string();
  session->reset();
  ASSERT_TRUE(c.stop_hub().ok());
  Client back = connected();
  session = Session::connect(options_);
  ASSERT_TRUE(session.ok()) << session.error().to_string();
  call.transient = false;
  auto stored = (*session)->submit({call});
  ASSERT_TRUE(stored.ok()) << stored.error().to_string();
  EXPECT_GT(stored->front(), transient->back()); // an engine may still hold those ids' results
  auto tasks = (*session)->tasks({}, 0);
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 1u); // the transient calls went with the hub
}

TEST_F(ClientTest, TransientCallsThatWouldTakeTheQueueOver64MiBAreStored) {
  // docs/protocol/05-tasks.md §5.8: a transient call's argument cannot leave the hub's memory,
  // so once queued arguments would pass 64 MiB, transient calls are stored like any other.
  Client c = connected();
  auto session = Session::connect(options_);
  ASSERT_TRUE(session.ok()) << session.error().to_string();
  TaskCall call; // no engine: they wait
  call.handler = "echo";
  call.transient = true;
  call.payload = std::string(4u << 20, 'x');
  auto held = (*session)->submit(std::vector<TaskCall>(15, call)); // 60 MiB: held in memory
  ASSERT_TRUE(held.ok()) << held.error().to_string();
  auto stored = (*session)->submit({call, call}); // 68 MiB: stored
  ASSERT_TRUE(stored.ok()) << stored.error().to_string();
  auto tasks = (*session)->tasks({}, 0);
  ASSERT_TRUE(tasks.ok()) << tasks.error().to_string();
  ASSERT_EQ(tasks->size(), 17u);
  EXPECT_EQ(tasks->back().id, stored->back());
  EXPECT_EQ(tasks->back().payload_bytes, 4u << 20);
  // The stored ones outlive the hub; the transient ones do not.
  auto after = tasks_after_restart(c, *session);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after.front().id, stored->front());
  EXPECT_EQ(after.back().id, stored->back());
  EXPECT_EQ(after.back().state, "queued");
  EXPECT_EQ(after.back().payload_bytes, 4u << 20); // (its argument left in the store)
}

TEST_F(ClientTest, ACallInFlightWhenTheHubStopsFailsWithUnavailable) {
  Client c = connected();
  start_nbody_engine(c, {"--dt", "0.0001"});
  std::vector<double> particles(7 * 500, 1.0);
  ASSERT_TRUE(c.call("set_state", std::string(reinterpret_cast<const char*>(particles.data()),
                                               particles.size() * sizeof(double)))
                  .ok());
  // Minutes of work: the call is still running when the hub stops.
  auto running = c.call_async("evolve", doubles({1e6}));
  auto session = Session::connect(options_);
  ASSERT_TRUE(session.ok()) << session.error().to_string();
  while (true) { // until the hub has it running on the engine
    auto tasks = (*session)->tasks({}, 0);
    ASSERT_TRUE(tasks.ok()) << tasks.error().to_string();
    if (!tasks->empty() && tasks->back().state == "running")
      break;
    ASSERT_EQ(running.wait_for(std::chrono::milliseconds(10)), std::future_status::timeout);
  }
  session->reset();
  ASSERT_TRUE(Client::connect(ConnectOptions{})->stop_hub().ok());
  ASSERT_EQ(running.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  auto r = running.get();
  ASSERT_FALSE(r.ok());
  // The hub stops its agents first: the call says its engine went with them.
  EXPECT_EQ(r.error().code, ErrorCode::Unavailable) << r.error().to_string();
  EXPECT_NE(r.error().message.find("shut down (call of 'evolve'"), std::string::npos)
      << r.error().message;
}

TEST_F(ClientTest, AHubThatGoesAwayMidCallIsAClearErrorNotAHang) {
  Client c = connected();
  JobSpec spec;
  spec.argv = {"true"};
  auto s = c.submit(spec); // no pilot: it stays queued, so the wait below lasts
  ASSERT_TRUE(s.ok());
  int pid = hub_pid();
  auto t0 = std::chrono::steady_clock::now();
  // The first progress frame means the hub has taken the wait: then it dies.
  auto r = c.wait(JobSelector::one(s->first_id), [&](const WaitProgress&) { ::kill(pid, SIGKILL); });
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::Unavailable) << r.error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  // And the next call says so at once.
  auto status = c.hub_status();
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().code, ErrorCode::Unavailable);
  // The library starts it again when asked to; the job is still there.
  Client back = connected();
  EXPECT_EQ(started_.size(), 2u);
  auto job = back.job(s->first_id);
  ASSERT_TRUE(job.ok()) << job.error().to_string();
  EXPECT_EQ(job->state, JobState::Queued);
}

} // namespace
} // namespace sortie
