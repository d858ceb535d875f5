// SPDX-License-Identifier: Apache-2.0
// Scheduler rules, called directly with builders: no sockets, no clock (times are passed in).
#include <gtest/gtest.h>

#include <algorithm>

#include <map>
#include <random>
#include <set>

#include "scheduler/scheduler.hpp"

namespace sortie::scheduler {
namespace {

constexpr std::int64_t kNow = 1'000'000;
constexpr std::uint64_t GiB = 1ull << 30;

JobId J(std::uint64_t v) { return JobId(v); }
AgentId N(std::uint64_t v) { return AgentId(v); }

/// Builds Requirements against a scheduler's symbols.
class Req {
public:
  explicit Req(Scheduler& s) : s_(s) {}
  Req& label(const char* l) { r_.label = s_.intern(l); return *this; }
  Req& slots(std::uint32_t n) { r_.slots = n; return *this; }
  Req& memory(std::uint64_t b) { r_.memory = b; return *this; }
  Req& gpus(std::uint32_t n) { r_.gpus = n; return *this; }
  Req& hosts(std::initializer_list<const char*> hs) { return set(r_.hosts, hs); }
  Req& prefer(std::initializer_list<const char*> hs) { return set(r_.prefer, hs); }
  Req& group(const char* g, std::uint32_t k) { r_.group = s_.intern(g); r_.max_per_node = k; return *this; }
  Req& priority(std::int32_t p) { r_.priority = p; return *this; }
  Req& time(std::int64_t ms) { r_.time_request_ms = ms; return *this; }
  Req& per_node(std::uint32_t n) { r_.per_node = n; return *this; }
  operator const Requirements&() const { return r_; }

private:
  Req& set(std::vector<Symbol>& v, std::initializer_list<const char*> hs) {
    for (auto h : hs)
      v.push_back(s_.intern(h));
    std::sort(v.begin(), v.end());
    return *this;
  }
  Scheduler& s_;
  Requirements r_;
};

/// Builds a node.
class Node {
public:
  Node(Scheduler& s, const char* name, std::uint32_t slots) : s_(s) {
    n_.name = s.intern(name);
    n_.slots = slots;
    n_.memory = 64 * GiB;
  }
  Node& label(const char* l) { n_.label = s_.intern(l); return *this; }
  Node& queue(std::uint32_t q) { n_.queue_slots = q; return *this; }
  Node& memory(std::uint64_t b) { n_.memory = b; return *this; }
  Node& gpus(std::vector<std::uint32_t> g) { n_.gpus = std::move(g); return *this; }
  Node& walltime_end(std::int64_t t) { n_.walltime_end_ms = t; return *this; }
  Node& pool(const char* p) { n_.pool = s_.intern(p); return *this; }
  operator const NodeInfo&() const { return n_; }

private:
  Scheduler& s_;
  NodeInfo n_;
};

std::map<std::uint64_t, std::uint64_t> by_job(const std::vector<Assignment>& as) {
  std::map<std::uint64_t, std::uint64_t> m;
  for (const auto& a : as)
    m[a.job.value] = a.node.value;
  return m;
}

std::vector<std::uint64_t> jobs_of(const std::vector<Assignment>& as) {
  std::vector<std::uint64_t> v;
  for (const auto& a : as)
    v.push_back(a.job.value);
  return v;
}

TEST(Scheduler, FifoWithinOneNode) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2));
  for (int i = 1; i <= 5; ++i)
    s.enqueue(J(i), Req(s));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{1, 2}));
  EXPECT_EQ(s.queued(), 3u);
  s.release(J(1));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{3}));
}

TEST(Scheduler, FifoAcrossClasses) {
  Scheduler s;
  s.enqueue(J(1), Req(s).slots(2));
  s.enqueue(J(2), Req(s).slots(1));
  s.enqueue(J(3), Req(s).slots(2));
  s.add_node(N(1), Node(s, "a", 2));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{1})); // oldest first
}

TEST(Scheduler, LabelsMatchExactly) {
  Scheduler s;
  s.add_node(N(1), Node(s, "c1", 4).label("cpu"));
  s.add_node(N(2), Node(s, "g1", 4).label("gpu"));
  s.enqueue(J(1), Req(s).label("gpu"));
  s.enqueue(J(2), Req(s).label("cpu"));
  s.enqueue(J(3), Req(s).label("fpga"));
  s.enqueue(J(4), Req(s)); // no label: anywhere
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_EQ(m.at(1), 2u);
  EXPECT_EQ(m.at(2), 1u);
  EXPECT_FALSE(m.contains(3)); // no such pilot: stays queued
  EXPECT_TRUE(m.contains(4));
  EXPECT_EQ(s.queued(), 1u);
}

TEST(Scheduler, JobBiggerThanEveryNodeWaits) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 4).queue(4)); // launch-queue room must not make 6 slots fit
  s.enqueue(J(1), Req(s).slots(6));
  s.enqueue(J(2), Req(s));
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_FALSE(m.contains(1));
  EXPECT_TRUE(m.contains(2));
}

TEST(Scheduler, SlotsAreAccounted) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 4));
  s.enqueue(J(1), Req(s).slots(3));
  s.enqueue(J(2), Req(s).slots(2));
  s.enqueue(J(3), Req(s).slots(1));
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_TRUE(m.contains(1));
  EXPECT_FALSE(m.contains(2)); // 3 + 2 > 4
  EXPECT_TRUE(m.contains(3));  // the 1-slot job behind it fits
  EXPECT_EQ(s.slots_used(), 4u);
  s.release(J(1));
  EXPECT_TRUE(by_job(s.schedule(100, kNow)).contains(2));
}

TEST(Scheduler, IdleSlotsAreFilledBeforeLaunchQueues) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 1).queue(1));
  s.add_node(N(2), Node(s, "b", 1).queue(1));
  for (int i = 1; i <= 4; ++i)
    s.enqueue(J(i), Req(s));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 4u);
  EXPECT_NE(as[0].node, as[1].node); // one per node first ...
  EXPECT_NE(as[2].node, as[3].node); // ... then one queued on each
  s.enqueue(J(5), Req(s));
  EXPECT_TRUE(s.schedule(100, kNow).empty());
}

TEST(Scheduler, CancelledJobsAreSkipped) {
  Scheduler s;
  s.enqueue(J(1), Req(s));
  s.enqueue(J(2), Req(s));
  s.remove_queued(J(1));
  EXPECT_EQ(s.queued(), 1u);
  s.add_node(N(1), Node(s, "a", 1));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{2}));
  EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, RemovedJobsThatNeverReachAHeadAreDroppedAllAtOnce) {
  // Jobs cancelled while no node can run them: the lazy removal must not keep them for ever.
  Scheduler s;
  Requirements other = Req(s);
  other.slots = 2;
  for (std::uint64_t j = 1; j <= 20'000; ++j)
    s.enqueue(J(j), j % 2 ? Req(s) : other);
  for (std::uint64_t j = 1; j <= 20'000; ++j)
    if (j % 1000 != 0)
      s.remove_queued(J(j));
  EXPECT_EQ(s.queued(), 20u);
  s.add_node(N(1), Node(s, "a", 64));
  std::vector<std::uint64_t> want;
  for (std::uint64_t j = 1000; j <= 20'000; j += 1000)
    want.push_back(j);
  auto got = jobs_of(s.schedule(100, kNow));
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, want);
  EXPECT_EQ(s.queued(), 0u);
  EXPECT_EQ(s.classes(), 0u);
}

TEST(Scheduler, RequeuedJobGoesFirst) {
  Scheduler s;
  s.enqueue(J(5), Req(s));
  s.requeue_front(J(2), Req(s));
  s.add_node(N(1), Node(s, "a", 1));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{2}));
}

TEST(Scheduler, PausedAndRemovedNodesGetNothing) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2));
  s.add_node(N(2), Node(s, "b", 2));
  s.set_accepting(N(1), false);
  s.remove_node(N(2));
  s.enqueue(J(1), Req(s));
  EXPECT_TRUE(s.schedule(100, kNow).empty());
  s.set_accepting(N(1), true);
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].node, N(1));
}

TEST(Scheduler, BoundsDecisionsPerCall) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 100));
  for (int i = 1; i <= 50; ++i)
    s.enqueue(J(i), Req(s));
  EXPECT_EQ(s.schedule(10, kNow).size(), 10u);
  EXPECT_EQ(s.schedule(100, kNow).size(), 40u);
}

TEST(Scheduler, MemoryIsReservedPerNode) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 8).memory(8 * GiB));
  for (int i = 1; i <= 3; ++i)
    s.enqueue(J(i), Req(s).memory(3 * GiB));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{1, 2})); // 9G > 8G
  s.release(J(1));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{3}));
}

TEST(Scheduler, MemoryIsReservedForTheLaunchQueueToo) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 1).queue(4).memory(4 * GiB));
  for (int i = 1; i <= 3; ++i)
    s.enqueue(J(i), Req(s).memory(2 * GiB));
  EXPECT_EQ(s.schedule(100, kNow).size(), 2u); // the agent never starts what does not fit
}

TEST(Scheduler, GpusGetDistinctDevices) {
  Scheduler s;
  s.add_node(N(1), Node(s, "g", 8).gpus({0, 1, 2}));
  s.enqueue(J(1), Req(s).gpus(2));
  s.enqueue(J(2), Req(s).gpus(1));
  s.enqueue(J(3), Req(s).gpus(2));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 2u);
  std::set<std::uint32_t> used;
  for (const auto& a : as)
    for (auto g : a.gpus)
      EXPECT_TRUE(used.insert(g).second) << "device " << g << " given twice";
  EXPECT_EQ(used.size(), 3u);
  EXPECT_EQ(as[0].gpus.size(), 2u);
  s.release(J(1));
  auto again = s.schedule(100, kNow);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].job, J(3));
  EXPECT_EQ(again[0].gpus, as[0].gpus); // the devices job 1 gave back
}

TEST(Scheduler, GpuJobsNeedGpuNodes) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 8));
  s.enqueue(J(1), Req(s).gpus(1));
  EXPECT_TRUE(s.schedule(100, kNow).empty());
  EXPECT_EQ(s.queued(), 1u);
}

TEST(Scheduler, HostsPinJobs) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 4));
  s.add_node(N(2), Node(s, "b", 4));
  s.enqueue(J(1), Req(s).hosts({"b"}));
  s.enqueue(J(2), Req(s).hosts({"c"})); // no such node yet
  s.enqueue(J(3), Req(s).hosts({"a", "c"}));
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_EQ(m.at(1), 2u);
  EXPECT_FALSE(m.contains(2));
  EXPECT_EQ(m.at(3), 1u);
  s.add_node(N(3), Node(s, "c", 1));
  EXPECT_EQ(by_job(s.schedule(100, kNow)).at(2), 3u);
}

TEST(Scheduler, PreferredHostTakesItsJobsFirst) {
  Scheduler s;
  s.enqueue(J(1), Req(s));                 // older, no preference
  s.enqueue(J(2), Req(s).prefer({"b"}));
  s.add_node(N(1), Node(s, "a", 1));
  s.add_node(N(2), Node(s, "b", 1));
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_EQ(m.at(2), 2u); // b takes the job that prefers it ...
  EXPECT_EQ(m.at(1), 1u); // ... and a the other
}

TEST(Scheduler, PreferenceFallsBackElsewhere) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2));
  s.add_node(N(2), Node(s, "b", 1));
  s.enqueue(J(1), Req(s).prefer({"b"}));
  s.enqueue(J(2), Req(s).prefer({"b"}));
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_EQ(m.at(1), 2u);
  EXPECT_EQ(m.at(2), 1u); // b is full: a runs it
}

TEST(Scheduler, MaxPerNodeLimitsAGroupOnEachNode) {
  Scheduler s;
  for (int n = 1; n <= 3; ++n)
    s.add_node(N(n), Node(s, ("n" + std::to_string(n)).c_str(), 4).queue(4));
  for (int i = 1; i <= 9; ++i)
    s.enqueue(J(i), Req(s).group("map7", 2));
  s.enqueue(J(10), Req(s)); // not in the group: unaffected
  auto as = s.schedule(100, kNow);
  std::map<std::uint64_t, int> per_node;
  for (const auto& a : as)
    if (a.job != J(10))
      ++per_node[a.node.value];
  for (const auto& [node, count] : per_node)
    EXPECT_LE(count, 2) << "node " << node;
  EXPECT_EQ(as.size(), 7u); // 2 per node, plus job 10
  EXPECT_EQ(s.queued(), 3u);
  s.release(as[0].job);
  auto more = s.schedule(100, kNow);
  ASSERT_EQ(more.size(), 1u);
  EXPECT_EQ(more[0].node, as[0].node);
}

TEST(Scheduler, MaxPerNodeCountsTheGroupAcrossItsClasses) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 8));
  s.enqueue(J(1), Req(s).group("g", 2).slots(1));
  s.enqueue(J(2), Req(s).group("g", 2).slots(2));
  s.enqueue(J(3), Req(s).group("g", 2).slots(1));
  EXPECT_EQ(s.schedule(100, kNow).size(), 2u);
}

TEST(Scheduler, PriorityThenFifo) {
  Scheduler s;
  s.enqueue(J(1), Req(s));
  s.enqueue(J(2), Req(s));
  s.enqueue(J(3), Req(s).priority(5));
  s.enqueue(J(4), Req(s).priority(5).slots(1).label(""));
  s.enqueue(J(5), Req(s).priority(-1));
  s.add_node(N(1), Node(s, "a", 1).queue(4));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{3, 4, 1, 2, 5}));
}

TEST(Scheduler, TimeRequestsNeedWalltimeLeft) {
  Scheduler s;
  constexpr std::int64_t hour = 3'600'000;
  s.add_node(N(1), Node(s, "short", 4).walltime_end(kNow + hour));
  s.enqueue(J(1), Req(s).time(2 * hour));
  s.enqueue(J(2), Req(s).time(hour / 2));
  auto m = by_job(s.schedule(100, kNow));
  EXPECT_FALSE(m.contains(1));
  EXPECT_TRUE(m.contains(2));
  s.add_node(N(2), Node(s, "forever", 4)); // no walltime: any request fits
  EXPECT_EQ(by_job(s.schedule(100, kNow)).at(1), 2u);
}

TEST(Scheduler, TimeRequestsRunOutAsTheClockMoves) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 4).walltime_end(kNow + 60'000));
  s.enqueue(J(1), Req(s).time(30'000));
  EXPECT_TRUE(s.schedule(100, kNow + 40'000).empty()); // only 20 s left by then
}

TEST(Scheduler, CombinedRules) {
  // label + host + memory + max-per-node at once.
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 8).label("cpu").memory(16 * GiB));
  s.add_node(N(2), Node(s, "b", 8).label("cpu").memory(16 * GiB));
  s.add_node(N(3), Node(s, "c", 8).label("gpu").memory(16 * GiB));
  for (int i = 1; i <= 6; ++i)
    s.enqueue(J(i), Req(s).label("cpu").hosts({"b", "c"}).memory(4 * GiB).group("g", 3));
  auto as = s.schedule(100, kNow);
  for (const auto& a : as)
    EXPECT_EQ(a.node, N(2)); // a is not among the hosts, c has the wrong label
  EXPECT_EQ(as.size(), 3u);    // max_per_node 3 (memory would allow 4)
  EXPECT_EQ(s.queued(), 3u);
}

TEST(Scheduler, JobThatFitsNowhereStaysQueued) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 4).memory(2 * GiB));
  s.enqueue(J(1), Req(s).memory(4 * GiB));
  for (int round = 0; round < 3; ++round)
    EXPECT_TRUE(s.schedule(100, kNow).empty());
  EXPECT_EQ(s.queued(), 1u);
}

TEST(Scheduler, EmptyClassesAreDropped) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 100));
  for (int i = 1; i <= 20; ++i)
    s.enqueue(J(i), Req(s).hosts({"a"}).group(("g" + std::to_string(i)).c_str(), 1));
  EXPECT_EQ(s.classes(), 20u);
  EXPECT_EQ(s.schedule(100, kNow).size(), 20u);
  EXPECT_EQ(s.classes(), 0u); // a long-lived hub does not keep classes of finished maps
}

TEST(Scheduler, AdoptedJobsUseTheirResources) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 4).memory(8 * GiB).gpus({0, 1}));
  s.adopt(J(9), N(1), Req(s).slots(2).memory(6 * GiB).gpus(1), {1});
  s.enqueue(J(10), Req(s).memory(4 * GiB));
  s.enqueue(J(11), Req(s).gpus(1));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u); // memory is taken; one GPU is left
  EXPECT_EQ(as[0].job, J(11));
  EXPECT_EQ(as[0].gpus, (std::vector<std::uint32_t>{0}));
  s.release(J(9));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{10}));
}

using Span = std::vector<std::pair<AgentId, std::uint32_t>>;

TEST(Scheduler, GangJobHoldsSlotsOnSeveralNodesOfOnePool) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2).pool("p1"));
  s.add_node(N(2), Node(s, "b", 4).pool("p2"));
  s.add_node(N(3), Node(s, "c", 2).pool("p1"));
  s.enqueue(J(1), Req(s).slots(4).per_node(2));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].node, N(1)); // the first node of the span runs it
  EXPECT_EQ(as[0].span, (Span{{N(1), 2}, {N(3), 2}}));
  EXPECT_EQ(s.slots_used(), 4u);
  s.enqueue(J(2), Req(s).slots(4));
  EXPECT_EQ(by_job(s.schedule(100, kNow)), (std::map<std::uint64_t, std::uint64_t>{{2, 2}}));
  s.release(J(1)); // frees both nodes
  EXPECT_EQ(s.slots_used(), 4u);
  s.enqueue(J(3), Req(s).slots(2));
  s.enqueue(J(4), Req(s).slots(2));
  EXPECT_EQ(s.schedule(100, kNow).size(), 2u);
}

TEST(Scheduler, GangJobPutsTheRemainderOnItsLastNode) {
  Scheduler s;
  for (std::uint64_t i = 1; i <= 3; ++i)
    s.add_node(N(i), Node(s, ("n" + std::to_string(i)).c_str(), 2).pool("p"));
  s.enqueue(J(1), Req(s).slots(5).per_node(2));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  ASSERT_EQ(as[0].span.size(), 3u);
  std::uint32_t total = 0;
  for (auto [node, slots] : as[0].span)
    total += slots;
  EXPECT_EQ(total, 5u);
  EXPECT_EQ(as[0].span.back().second, 1u);
}

TEST(Scheduler, GangJobNeverSpansPoolsOrLabels) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2).pool("p1"));
  s.add_node(N(2), Node(s, "b", 2).pool("p2"));
  s.add_node(N(3), Node(s, "c", 2).pool("p3").label("gpu"));
  s.add_node(N(4), Node(s, "d", 2).pool("p3"));
  s.enqueue(J(1), Req(s).slots(4).per_node(2).label("gpu")); // only c has the label
  EXPECT_TRUE(s.schedule(100, kNow).empty());
  s.enqueue(J(2), Req(s).slots(4).per_node(2)); // any node: c and d are one pool
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].span, (Span{{N(3), 2}, {N(4), 2}}));
  s.enqueue(J(3), Req(s).slots(4).per_node(2));
  EXPECT_TRUE(s.schedule(100, kNow).empty()); // a and b are in different pools
  s.add_node(N(5), Node(s, "e", 2).pool("p1"));
  as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].span, (Span{{N(1), 2}, {N(5), 2}}));
  EXPECT_EQ(s.queued(), 1u);
}

TEST(Scheduler, GangJobReservesNodesUntilItFits) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2).pool("p"));
  s.add_node(N(2), Node(s, "b", 2).pool("p"));
  s.enqueue(J(1), Req(s));
  s.enqueue(J(2), Req(s));
  EXPECT_EQ(s.schedule(100, kNow).size(), 2u); // one slot left on each node, or both on one
  s.enqueue(J(3), Req(s).slots(4).per_node(2));
  for (std::uint64_t j = 10; j < 20; ++j)
    s.enqueue(J(j), Req(s));
  EXPECT_TRUE(s.schedule(100, kNow).empty()); // the free slots wait for the MPI job
  EXPECT_EQ(s.reserved(), 2u);
  s.release(J(1));
  EXPECT_TRUE(s.schedule(100, kNow).empty());
  s.release(J(2));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].job, J(3));
  EXPECT_EQ(s.reserved(), 0u);
  s.release(J(3));
  EXPECT_EQ(s.schedule(100, kNow).size(), 4u); // the small jobs go on
}

TEST(Scheduler, CancelledGangJobGivesItsReservationBack) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2).pool("p"));
  s.add_node(N(2), Node(s, "b", 2).pool("p"));
  s.enqueue(J(1), Req(s).slots(2));
  EXPECT_EQ(s.schedule(100, kNow).size(), 1u);
  s.enqueue(J(2), Req(s).slots(4).per_node(2));
  s.enqueue(J(3), Req(s));
  EXPECT_TRUE(s.schedule(100, kNow).empty());
  s.remove_queued(J(2));
  EXPECT_EQ(jobs_of(s.schedule(100, kNow)), (std::vector<std::uint64_t>{3}));
  EXPECT_EQ(s.reserved(), 0u);
  EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, GangJobWaitsForIdleSlotsAndWalltime) {
  Scheduler s;
  s.add_node(N(1), Node(s, "a", 2).pool("p").queue(2));
  s.add_node(N(2), Node(s, "b", 2).pool("p").queue(2).walltime_end(kNow + 1000));
  s.enqueue(J(1), Req(s).slots(4).per_node(2).time(5000));
  EXPECT_TRUE(s.schedule(100, kNow).empty());
  s.add_node(N(3), Node(s, "c", 2).pool("p"));
  auto as = s.schedule(100, kNow);
  ASSERT_EQ(as.size(), 1u);
  EXPECT_EQ(as[0].span, (Span{{N(1), 2}, {N(3), 2}}));
}

// The scheduler skips nodes that found nothing to run until something changes for them (a job
// left, a new kind of job arrived). This checks, against a plain model of every node, that after
// each call no queued job fits any node, over random sequences of every operation.
TEST(Scheduler, NoQueuedJobFitsAnywhereAfterACall) {
  struct ModelNode {
    NodeInfo info;
    bool accepting = true;
    std::uint32_t slots = 0;
    std::uint64_t memory = 0;
    std::uint32_t gpus = 0;
    std::map<Symbol, std::uint32_t> groups;
  };
  struct Placed {
    std::uint64_t node;
    Requirements req;
  };
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    std::mt19937_64 rng(seed);
    auto pick = [&](std::uint64_t n) { return rng() % n; };
    Scheduler s;
    const Symbol labels[] = {0, s.intern("a"), s.intern("b")};
    const Symbol names[] = {s.intern("h1"), s.intern("h2"), s.intern("h3"), s.intern("h4")};
    const Symbol group = s.intern("g");
    std::map<std::uint64_t, ModelNode> nodes;
    std::map<std::uint64_t, Requirements> queued;
    std::map<std::uint64_t, Placed> placed;
    std::uint64_t next_job = 1, next_node = 1;
    auto add_node = [&] {
      NodeInfo info;
      info.name = names[pick(4)];
      info.label = labels[pick(3)];
      info.slots = 1 + static_cast<std::uint32_t>(pick(4));
      info.queue_slots = static_cast<std::uint32_t>(pick(3));
      info.memory = (4 + pick(8)) * GiB;
      for (std::uint32_t g = 0, n = static_cast<std::uint32_t>(pick(3)); g < n; ++g)
        info.gpus.push_back(g);
      info.walltime_end_ms = pick(2) ? kNow + 60'000 : 0;
      nodes[next_node].info = info;
      s.add_node(N(next_node++), info);
    };
    auto fits = [&](const Requirements& r, const ModelNode& n) {
      if (!n.accepting || r.slots > n.info.slots ||
          n.slots + r.slots > n.info.slots + n.info.queue_slots)
        return false;
      if (r.label && r.label != n.info.label)
        return false;
      if (!r.hosts.empty() && !std::binary_search(r.hosts.begin(), r.hosts.end(), n.info.name))
        return false;
      if (r.memory && n.memory + r.memory > n.info.memory)
        return false;
      if (n.gpus + r.gpus > n.info.gpus.size())
        return false;
      if (r.time_request_ms && n.info.walltime_end_ms &&
          n.info.walltime_end_ms - kNow < r.time_request_ms)
        return false;
      if (r.max_per_node && n.groups.contains(r.group) && n.groups.at(r.group) >= r.max_per_node)
        return false;
      return true;
    };
    auto free_job = [&](std::uint64_t job) {
      Placed p = placed.at(job);
      placed.erase(job);
      if (auto it = nodes.find(p.node); it != nodes.end()) {
        it->second.slots -= p.req.slots;
        it->second.memory -= p.req.memory;
        it->second.gpus -= p.req.gpus;
        if (p.req.max_per_node)
          --it->second.groups[p.req.group];
      }
      s.release(J(job));
      return p.req;
    };
    for (int i = 0; i < 3; ++i)
      add_node();
    for (int step = 0; step < 400; ++step) {
      std::uint64_t op = pick(100);
      if (op < 45) {
        Requirements r;
        r.label = pick(4) == 0 ? labels[1 + pick(2)] : 0;
        r.slots = 1 + static_cast<std::uint32_t>(pick(3));
        r.memory = pick(3) == 0 ? 3 * GiB : 0;
        r.gpus = pick(5) == 0 ? 1 : 0;
        if (pick(6) == 0)
          r.hosts = {names[pick(4)]};
        else if (pick(6) == 0)
          r.prefer = {names[pick(4)]};
        if (pick(5) == 0) {
          r.group = group;
          r.max_per_node = 1 + static_cast<std::uint32_t>(pick(2));
        }
        r.priority = static_cast<std::int32_t>(pick(2));
        r.time_request_ms = pick(8) == 0 ? 120'000 : 0;
        queued[next_job] = r;
        s.enqueue(J(next_job++), r);
      } else if (op < 75 && !placed.empty()) {
        auto it = std::next(placed.begin(), static_cast<long>(pick(placed.size())));
        std::uint64_t job = it->first;
        Requirements r = free_job(job);
        if (pick(4) == 0) { // lost: back to the front of the line
          queued[job] = r;
          s.requeue_front(J(job), r);
        }
      } else if (op < 83 && !queued.empty()) {
        auto it = std::next(queued.begin(), static_cast<long>(pick(queued.size())));
        s.remove_queued(J(it->first));
        queued.erase(it);
      } else if (op < 89 && !nodes.empty()) {
        auto it = std::next(nodes.begin(), static_cast<long>(pick(nodes.size())));
        it->second.accepting = !it->second.accepting;
        s.set_accepting(N(it->first), it->second.accepting);
      } else if (op < 93 && !nodes.empty()) {
        auto it = std::next(nodes.begin(), static_cast<long>(pick(nodes.size())));
        it->second.info.queue_slots = static_cast<std::uint32_t>(pick(3));
        s.set_queue_slots(N(it->first), it->second.info.queue_slots);
      } else if (op < 96 && nodes.size() < 6) {
        add_node();
      } else if (op < 98 && nodes.size() > 1) {
        auto it = std::next(nodes.begin(), static_cast<long>(pick(nodes.size())));
        s.remove_node(N(it->first));
        nodes.erase(it);
      }
      bool whole = pick(4) != 0;
      for (const auto& a : s.schedule(whole ? SIZE_MAX : 1 + pick(3), kNow)) {
        ASSERT_TRUE(queued.contains(a.job.value)) << "seed " << seed << " step " << step;
        Requirements r = queued.at(a.job.value);
        queued.erase(a.job.value);
        ModelNode& n = nodes.at(a.node.value);
        ASSERT_TRUE(fits(r, n)) << "job " << a.job.value << " over node " << a.node.value
                                << "'s capacity, seed " << seed << " step " << step;
        n.slots += r.slots;
        n.memory += r.memory;
        n.gpus += r.gpus;
        if (r.max_per_node)
          ++n.groups[r.group];
        placed[a.job.value] = {a.node.value, r};
      }
      if (!whole)
        continue;
      for (const auto& [job, r] : queued)
        for (const auto& [id, n] : nodes)
          ASSERT_FALSE(fits(r, n)) << "job " << job << " fits node " << id
                                   << " but stayed queued, seed " << seed << " step " << step;
    }
  }
}

// Jobs across nodes mixed with ordinary ones, over random sequences: no node ever holds more than
// it has (a gang job's shares in idle slots, on distinct nodes of one pool), the first waiting
// gang job never fits what is idle after a call, and once the running jobs end every job that
// fits the empty nodes runs (reservations never deadlock).
TEST(Scheduler, GangJobsNeverOverfillNodesAndNeverStall) {
  struct ModelNode {
    NodeInfo info;
    bool accepting = true;
    std::uint32_t used = 0;
  };
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    std::mt19937_64 rng(seed);
    auto pick = [&](std::uint64_t n) { return rng() % n; };
    Scheduler s;
    const Symbol pools[] = {s.intern("pilot 1"), s.intern("pilot 2")};
    const Symbol label = s.intern("x");
    std::map<std::uint64_t, ModelNode> nodes;
    std::map<std::uint64_t, Requirements> queued;
    std::map<std::uint64_t, std::vector<std::pair<AgentId, std::uint32_t>>> placed;
    std::uint64_t next_job = 1;
    for (std::uint64_t id = 1; id <= 6; ++id) {
      NodeInfo info;
      info.name = s.intern("n" + std::to_string(id));
      info.pool = pools[pick(2)];
      info.label = pick(4) == 0 ? label : 0;
      info.slots = 1 + static_cast<std::uint32_t>(pick(4));
      info.queue_slots = static_cast<std::uint32_t>(pick(3));
      nodes[id].info = info;
      s.add_node(N(id), info);
    }
    // A gang job fits when its pool has enough accepting nodes with the idle slots.
    auto gang_fits = [&](const Requirements& r, bool empty) {
      std::uint32_t count = (r.slots + r.per_node - 1) / r.per_node;
      std::uint32_t last = r.slots - (count - 1) * r.per_node;
      for (Symbol pool : pools) {
        std::uint32_t full = 0, any = 0;
        for (const auto& [id, n] : nodes) {
          if (n.info.pool != pool || !n.accepting || (r.label && r.label != n.info.label))
            continue;
          std::uint32_t idle = n.info.slots - (empty ? 0 : std::min(n.used, n.info.slots));
          full += idle >= r.per_node;
          any += idle >= last;
        }
        if (any >= count && full >= count - 1)
          return true;
      }
      return false;
    };
    auto one_fits = [&](const Requirements& r, const ModelNode& n, bool empty) {
      return n.accepting && (!r.label || r.label == n.info.label) && r.slots <= n.info.slots &&
             (empty || n.used + r.slots <= n.info.slots + n.info.queue_slots);
    };
    auto apply = [&](const std::vector<Assignment>& as, int step) {
      for (const auto& a : as) {
        ASSERT_TRUE(queued.contains(a.job.value)) << "seed " << seed << " step " << step;
        Requirements r = queued.at(a.job.value);
        queued.erase(a.job.value);
        auto span = a.span;
        if (!r.spans_nodes()) {
          ASSERT_TRUE(span.empty());
          span = {{a.node, r.slots}};
          ModelNode& n = nodes.at(a.node.value);
          ASSERT_TRUE(one_fits(r, n, false)) << "seed " << seed << " step " << step;
        } else {
          ASSERT_EQ(span.front().first, a.node);
          std::uint32_t total = 0;
          std::set<std::uint64_t> distinct;
          for (auto [id, slots] : span) {
            ModelNode& n = nodes.at(id.value);
            ASSERT_TRUE(n.accepting && n.info.pool == nodes.at(a.node.value).info.pool);
            ASSERT_TRUE(!r.label || r.label == n.info.label);
            ASSERT_LE(slots, r.per_node);
            ASSERT_LE(n.used + slots, n.info.slots) << "a gang share beyond idle slots, seed "
                                                    << seed << " step " << step;
            distinct.insert(id.value);
            total += slots;
          }
          ASSERT_EQ(total, r.slots);
          ASSERT_EQ(distinct.size(), span.size());
        }
        for (auto [id, slots] : span)
          nodes.at(id.value).used += slots;
        placed[a.job.value] = span;
      }
    };
    auto release = [&](std::uint64_t job) {
      for (auto [id, slots] : placed.at(job))
        nodes.at(id.value).used -= slots;
      placed.erase(job);
      s.release(J(job));
    };
    for (int step = 0; step < 300; ++step) {
      std::uint64_t op = pick(100);
      if (op < 45) {
        Requirements r;
        r.label = pick(5) == 0 ? label : 0;
        r.priority = static_cast<std::int32_t>(pick(2));
        if (pick(3) == 0) {
          r.per_node = 1 + static_cast<std::uint32_t>(pick(3));
          r.slots = r.per_node + 1 + static_cast<std::uint32_t>(pick(5));
        } else {
          r.slots = 1 + static_cast<std::uint32_t>(pick(2));
        }
        queued[next_job] = r;
        s.enqueue(J(next_job++), r);
      } else if (op < 80 && !placed.empty()) {
        release(std::next(placed.begin(), static_cast<long>(pick(placed.size())))->first);
      } else if (op < 88 && !queued.empty()) {
        auto it = std::next(queued.begin(), static_cast<long>(pick(queued.size())));
        s.remove_queued(J(it->first));
        queued.erase(it);
      } else if (op < 94) {
        auto it = std::next(nodes.begin(), static_cast<long>(pick(nodes.size())));
        it->second.accepting = !it->second.accepting;
        s.set_accepting(N(it->first), it->second.accepting);
      }
      apply(s.schedule(SIZE_MAX, kNow), step);
      // The first gang job in line does not fit what is idle now.
      const Requirements* first = nullptr;
      std::uint64_t first_id = 0;
      for (const auto& [job, r] : queued)
        if (r.spans_nodes() && (!first || r.priority > first->priority)) {
          first = &r;
          first_id = job;
        }
      if (first) {
        ASSERT_FALSE(gang_fits(*first, false)) << "gang job " << first_id << " fits but waits, seed "
                                               << seed << " step " << step;
      }
    }
    // Everything ends, everything is accepting again: whatever fits the empty nodes runs.
    for (auto& [id, n] : nodes)
      if (!n.accepting) {
        n.accepting = true;
        s.set_accepting(N(id), true);
      }
    for (int round = 0; round < 200 && !queued.empty(); ++round) {
      while (!placed.empty())
        release(placed.begin()->first);
      apply(s.schedule(SIZE_MAX, kNow), 1000 + round);
    }
    for (const auto& [job, r] : queued) {
      bool could = r.spans_nodes() ? gang_fits(r, true)
                                   : std::any_of(nodes.begin(), nodes.end(), [&](const auto& n) {
                                       return one_fits(r, n.second, true);
                                     });
      ASSERT_FALSE(could) << "job " << job << " never ran, seed " << seed;
    }
  }
}

} // namespace
} // namespace sortie::scheduler
