// SPDX-License-Identifier: Apache-2.0
// Scheduler rules, called directly: no sockets, no clock.
#include <gtest/gtest.h>

#include <map>

#include "scheduler/scheduler.hpp"

namespace sortie::scheduler {
namespace {

JobId J(std::uint64_t v) { return JobId(v); }
AgentId N(std::uint64_t v) { return AgentId(v); }

std::map<std::uint64_t, std::uint64_t> by_job(const std::vector<Assignment>& as) {
  std::map<std::uint64_t, std::uint64_t> m;
  for (const auto& a : as)
    m[a.job.value] = a.node.value;
  return m;
}

TEST(Scheduler, FifoWithinOneNode) {
  Scheduler s;
  s.add_node(N(1), {"", 2, 0});
  for (int i = 1; i <= 5; ++i)
    s.enqueue(J(i), {"", 1});
  auto as = s.schedule(100);
  ASSERT_EQ(as.size(), 2u);
  EXPECT_EQ(as[0].job, J(1));
  EXPECT_EQ(as[1].job, J(2));
  EXPECT_EQ(s.queued(), 3u);
  s.release(J(1));
  as = s.schedule(100);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].job, J(3));
}

TEST(Scheduler, FifoAcrossClasses) {
  Scheduler s;
  s.enqueue(J(1), {"", 2});
  s.enqueue(J(2), {"", 1});
  s.enqueue(J(3), {"", 2});
  s.add_node(N(1), {"", 2, 0});
  auto as = s.schedule(100);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].job, J(1)); // the oldest, though it is the bigger one
}

TEST(Scheduler, LabelsMatchExactly) {
  Scheduler s;
  s.add_node(N(1), {"cpu", 4, 0});
  s.add_node(N(2), {"gpu", 4, 0});
  s.enqueue(J(1), {"gpu", 1});
  s.enqueue(J(2), {"cpu", 1});
  s.enqueue(J(3), {"fpga", 1});
  s.enqueue(J(4), {"", 1}); // no label: anywhere
  auto m = by_job(s.schedule(100));
  EXPECT_EQ(m.at(1), 2u);
  EXPECT_EQ(m.at(2), 1u);
  EXPECT_FALSE(m.contains(3)); // no such pilot: stays queued
  EXPECT_TRUE(m.contains(4));
  EXPECT_EQ(s.queued(), 1u);
}

TEST(Scheduler, JobBiggerThanEveryNodeWaits) {
  Scheduler s;
  s.add_node(N(1), {"", 4, 4}); // launch queue space must not make a 6-slot job fit
  s.enqueue(J(1), {"", 6});
  s.enqueue(J(2), {"", 1});
  auto m = by_job(s.schedule(100));
  EXPECT_FALSE(m.contains(1));
  EXPECT_TRUE(m.contains(2));
}

TEST(Scheduler, SlotsAreAccounted) {
  Scheduler s;
  s.add_node(N(1), {"", 4, 0});
  s.enqueue(J(1), {"", 3});
  s.enqueue(J(2), {"", 2});
  s.enqueue(J(3), {"", 1});
  auto m = by_job(s.schedule(100));
  EXPECT_TRUE(m.contains(1));
  EXPECT_FALSE(m.contains(2)); // 3 + 2 > 4
  EXPECT_TRUE(m.contains(3));  // the 1-slot job behind it fits
  EXPECT_EQ(s.slots_used(), 4u);
  s.release(J(1));
  m = by_job(s.schedule(100));
  EXPECT_TRUE(m.contains(2));
}

TEST(Scheduler, IdleSlotsAreFilledBeforeLaunchQueues) {
  Scheduler s;
  s.add_node(N(1), {"", 1, 1});
  s.add_node(N(2), {"", 1, 1});
  for (int i = 1; i <= 4; ++i)
    s.enqueue(J(i), {"", 1});
  auto as = s.schedule(100);
  ASSERT_EQ(as.size(), 4u);
  // The first two go one per node; only then each node gets one queued job.
  EXPECT_NE(as[0].node, as[1].node);
  EXPECT_NE(as[2].node, as[3].node);
  s.enqueue(J(5), {"", 1});
  EXPECT_TRUE(s.schedule(100).empty()); // both launch queues are full
}

TEST(Scheduler, CancelledJobsAreSkipped) {
  Scheduler s;
  s.enqueue(J(1), {"", 1});
  s.enqueue(J(2), {"", 1});
  s.remove_queued(J(1));
  EXPECT_EQ(s.queued(), 1u);
  s.add_node(N(1), {"", 1, 0});
  auto as = s.schedule(100);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].job, J(2));
  EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, RequeuedJobGoesFirst) {
  Scheduler s;
  s.enqueue(J(5), {"", 1});
  s.requeue_front(J(2), {"", 1});
  s.add_node(N(1), {"", 1, 0});
  auto as = s.schedule(100);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].job, J(2));
}

TEST(Scheduler, AdoptedJobsUseSlots) {
  Scheduler s;
  s.add_node(N(1), {"", 2, 0});
  s.adopt(J(9), N(1), 2);
  s.enqueue(J(10), {"", 1});
  EXPECT_TRUE(s.schedule(100).empty());
  s.release(J(9));
  EXPECT_EQ(s.schedule(100).size(), 1u);
}

TEST(Scheduler, PausedAndRemovedNodesGetNothing) {
  Scheduler s;
  s.add_node(N(1), {"", 2, 0});
  s.add_node(N(2), {"", 2, 0});
  s.set_accepting(N(1), false);
  s.remove_node(N(2));
  s.enqueue(J(1), {"", 1});
  EXPECT_TRUE(s.schedule(100).empty());
  s.set_accepting(N(1), true);
  auto as = s.schedule(100);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].node, N(1));
}

TEST(Scheduler, BoundsDecisionsPerCall) {
  Scheduler s;
  s.add_node(N(1), {"", 100, 0});
  for (int i = 1; i <= 50; ++i)
    s.enqueue(J(i), {"", 1});
  EXPECT_EQ(s.schedule(10).size(), 10u);
  EXPECT_EQ(s.schedule(100).size(), 40u);
}

} // namespace
} // namespace sortie::scheduler
