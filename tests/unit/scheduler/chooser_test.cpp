// SPDX-License-Identifier: Apache-2.0
// The task chooser: labels keep engines apart, the least-loaded engine with room goes first,
// prefetch bounds what an engine holds, direct tasks wait for their engine, priority then id;
// the prefetch follows the pace of an engine's tasks (PrefetchPace).
#include <gtest/gtest.h>

#include <map>

#include "scheduler/chooser.hpp"

namespace sortie::scheduler {
namespace {

std::map<std::uint64_t, std::uint64_t> as_map(const std::vector<TaskChooser::Pick>& picks) {
  std::map<std::uint64_t, std::uint64_t> out;
  for (const auto& p : picks)
    out[p.task] = p.engine;
  return out;
}

TEST(TaskChooser, LabelsKeepEnginesApart) {
  TaskChooser c;
  c.add_engine(1, "cpu", 4);
  c.add_engine(2, "gpu", 4);
  c.enqueue(10, "gpu", 0, 0);
  c.enqueue(11, "cpu", 0, 0);
  c.enqueue(12, "fpga", 0, 0); // no engine has it: it waits
  auto picks = as_map(c.choose());
  EXPECT_EQ(picks.size(), 2u);
  EXPECT_EQ(picks[10], 2u);
  EXPECT_EQ(picks[11], 1u);
  EXPECT_EQ(c.queued(), 1u);
  c.add_engine(3, "fpga", 1);
  picks = as_map(c.choose());
  EXPECT_EQ(picks[12], 3u);
}

TEST(TaskChooser, UnlabelledTasksGoToAnyEngineTheLeastLoadedFirst) {
  TaskChooser c;
  c.add_engine(1, "cpu", 3, 2); // holds two already
  c.add_engine(2, "gpu", 3);
  for (std::uint64_t t = 1; t <= 4; ++t)
    c.enqueue(t, "", 0, 0);
  auto picks = c.choose();
  ASSERT_EQ(picks.size(), 4u); // 1 slot on engine 1, 3 on engine 2
  EXPECT_EQ(picks[0].engine, 2u);
  EXPECT_EQ(c.in_flight(1), 3u);
  EXPECT_EQ(c.in_flight(2), 3u);
}

TEST(TaskChooser, PrefetchBoundsWhatAnEngineHolds) {
  TaskChooser c;
  c.add_engine(7, "", 2);
  for (std::uint64_t t = 1; t <= 5; ++t)
    c.enqueue(t, "", 0, 0);
  EXPECT_EQ(c.choose().size(), 2u);
  EXPECT_TRUE(c.choose().empty());
  c.finished(7);
  auto picks = c.choose();
  ASSERT_EQ(picks.size(), 1u);
  EXPECT_EQ(picks[0].task, 3u); // in order
  EXPECT_EQ(c.queued(), 2u);
}

TEST(TaskChooser, ARaisedPrefetchFillsTheEngineAndALoweredOneSendsNothingNew) {
  TaskChooser c;
  c.add_engine(1, "", 2);
  for (std::uint64_t t = 1; t <= 20; ++t)
    c.enqueue(t, "", 0, 0);
  EXPECT_EQ(c.choose().size(), 2u);
  c.set_prefetch(1, 8);
  EXPECT_EQ(c.choose().size(), 6u);
  c.set_prefetch(1, 3); // it holds 8: nothing new until it is below 3
  for (int i = 0; i < 5; ++i)
    c.finished(1);
  EXPECT_TRUE(c.choose().empty());
  c.finished(1);
  EXPECT_EQ(c.choose().size(), 1u);
  c.close_engine(1);
  c.set_prefetch(1, 10); // a closed engine stays closed
  c.finished(1);
  EXPECT_TRUE(c.choose().empty());
  c.set_prefetch(99, 4); // unknown: nothing happens
}

TEST(PrefetchPace, ShortTasksRaiseItUpToTheCapAndLongOnesKeepTheBase) {
  PrefetchPace pace;
  EXPECT_EQ(pace.prefetch(0, 4, 32), 4u); // nothing measured yet
  // Batches of 10 tasks taking 500 us: 50 us each, 40 fit in the window: the cap.
  std::int64_t now = 1'000'000;
  pace.started(now);
  for (int batch = 0; batch < 20; ++batch) {
    now += 500;
    pace.ended(now, 10, true);
  }
  EXPECT_NEAR(pace.per_task_us(), 50, 1);
  EXPECT_EQ(pace.prefetch(now, 4, 32), 32u);
  EXPECT_EQ(pace.prefetch(now, 4, 64), 40u);
  EXPECT_EQ(pace.prefetch(now, 4, 4), 4u); // cap = base: fixed
  // Its current task has run 1 ms: 2 of those fit.
  EXPECT_EQ(pace.prefetch(now + 1000, 4, 32), 4u);
  EXPECT_EQ(pace.prefetch(now + 100, 4, 32), 20u);
  // Tasks of 1 ms from now on: the average follows within a few batches.
  for (int batch = 0; batch < 30; ++batch) {
    now += 1000;
    pace.ended(now, 1, true);
  }
  EXPECT_NEAR(pace.per_task_us(), 1000, 5);
  EXPECT_EQ(pace.prefetch(now, 4, 32), 4u);
}

TEST(PrefetchPace, IdleTimeIsNotCountedAsWork) {
  PrefetchPace pace;
  pace.started(0);
  pace.ended(100, 2, false); // 50 us each, then idle
  EXPECT_NEAR(pace.per_task_us(), 50, 0.1);
  // A second later it gets work again: the idle second is not a task's time.
  EXPECT_EQ(pace.prefetch(1'000'000, 4, 32), 32u);
  pace.started(1'000'000);
  pace.ended(1'000'100, 2, false);
  EXPECT_NEAR(pace.per_task_us(), 50, 0.1);
}

TEST(TaskChooser, HigherPriorityFirstThenOlder) {
  TaskChooser c;
  c.enqueue(1, "", 0, 0);
  c.enqueue(2, "", 0, 5);
  c.enqueue(3, "", 0, 5);
  c.enqueue(4, "", 0, -1);
  c.add_engine(1, "", 1);
  std::vector<std::uint64_t> order;
  for (int i = 0; i < 4; ++i) {
    auto picks = c.choose();
    ASSERT_EQ(picks.size(), 1u);
    order.push_back(picks[0].task);
    c.finished(1);
  }
  EXPECT_EQ(order, (std::vector<std::uint64_t>{2, 3, 1, 4}));
}

TEST(TaskChooser, DirectTasksWaitForTheirEngineAndGoFirst) {
  TaskChooser c;
  c.enqueue(1, "", 9, 0); // engine 9 is not up yet
  EXPECT_TRUE(c.choose().empty());
  c.add_engine(9, "", 1);
  c.enqueue(2, "", 0, 100); // load-balanced, even with a higher priority, comes after
  auto picks = c.choose();
  ASSERT_EQ(picks.size(), 1u);
  EXPECT_EQ(picks[0].task, 1u);
}

TEST(TaskChooser, AClosedEngineTakesNothingUntilReopened) {
  TaskChooser c;
  c.add_engine(1, "", 4);
  c.close_engine(1);
  c.enqueue(1, "", 0, 0);
  c.enqueue(2, "", 1, 0);
  EXPECT_TRUE(c.choose().empty());
  c.add_engine(1, "", 4);
  EXPECT_EQ(c.choose().size(), 2u);
}

TEST(TaskChooser, ARemovedEngineGivesBackItsDirectQueue) {
  TaskChooser c;
  c.add_engine(1, "", 1, 1); // full
  c.enqueue(5, "", 1, 0);
  c.enqueue(6, "", 1, 0);
  auto left = c.remove_engine(1);
  EXPECT_EQ(left, (std::vector<std::uint64_t>{5, 6}));
  EXPECT_EQ(c.queued(), 0u);
  EXPECT_FALSE(c.has_engine(1));
}

TEST(TaskChooser, DequeuedTasksAreNotChosen) {
  TaskChooser c;
  c.enqueue(1, "a", 0, 0);
  c.enqueue(2, "a", 0, 0);
  EXPECT_TRUE(c.dequeue(1));
  EXPECT_FALSE(c.dequeue(1));
  c.add_engine(3, "a", 8);
  auto picks = c.choose();
  ASSERT_EQ(picks.size(), 1u);
  EXPECT_EQ(picks[0].task, 2u);
}

TEST(TaskChooser, ManyQueuedTasksCostNothingPerDecision) {
  // 200,000 queued tasks and 2 engines: a choice fills the engines and stops.
  TaskChooser c;
  for (std::uint64_t t = 1; t <= 200'000; ++t)
    c.enqueue(t, "", 0, 0);
  c.add_engine(1, "", 4);
  c.add_engine(2, "", 4);
  for (int round = 0; round < 1000; ++round) {
    auto picks = c.choose();
    ASSERT_EQ(picks.size(), round == 0 ? 8u : 2u);
    c.finished(1);
    c.finished(2);
  }
}

} // namespace
} // namespace sortie::scheduler
