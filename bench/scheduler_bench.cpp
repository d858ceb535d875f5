// SPDX-License-Identifier: Apache-2.0
// The scheduler's cost per decision with 1,000 and with 1,000,000 queued jobs, over 1,000 nodes
// with mixed labels, hosts and slots. In the measured steady state every decision follows a job
// ending (a release) and a new job arriving (an enqueue), so the queue keeps its length.
// Prints decisions per second for both and their ratio.
//   bench_scheduler [decisions] [seed]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "scheduler/scheduler.hpp"

using namespace sortie;
using namespace sortie::scheduler;

namespace {

constexpr int kNodes = 1000;
const char* kLabels[] = {"cpu", "gpu", "bigmem", "io"};

struct Mix {
  std::mt19937_64 rng;
  Scheduler& s;
  std::vector<Symbol> labels, hosts;
  Symbol group;

  Mix(Scheduler& sched, std::uint64_t seed) : rng(seed), s(sched) {
    for (auto l : kLabels)
      labels.push_back(s.intern(l));
    for (int n = 0; n < kNodes; ++n)
      hosts.push_back(s.intern("n" + std::to_string(n)));
    group = s.intern("map-1");
  }

  std::uint32_t pick(std::uint32_t n) { return static_cast<std::uint32_t>(rng() % n); }

  NodeInfo node(int n) {
    NodeInfo info;
    info.name = hosts[static_cast<std::size_t>(n)];
    info.label = labels[static_cast<std::size_t>(n) % 4];
    static const std::uint32_t slots[] = {4, 8, 16, 32};
    info.slots = slots[(n / 4) % 4];
    info.queue_slots = info.slots;
    info.memory = 64ull << 30;
    return info;
  }

  /// A job drawn from a mix resembling real use: most take any node, some need a label, some are
  /// pinned to or prefer the host that holds their data, a few have priority or a per-node cap.
  Requirements job() {
    Requirements r;
    static const std::uint32_t slots[] = {1, 1, 2, 4};
    r.slots = slots[pick(4)];
    std::uint32_t kind = pick(100);
    if (kind < 20) {
      r.label = labels[pick(4)];
    } else if (kind < 35) {
      r.hosts = {hosts[pick(kNodes)]};
      r.slots = 1;
    } else if (kind < 40) {
      r.prefer = {hosts[pick(kNodes)]};
    } else if (kind < 45) {
      r.group = group;
      r.max_per_node = 2;
    }
    if (pick(10) == 0)
      r.priority = 5;
    return r;
  }
};

struct Result {
  double decisions_per_s;
  double ns_per_decision;
  std::size_t classes;
};

Result run(std::size_t queued, std::size_t decisions, std::uint64_t seed) {
  Scheduler s;
  Mix mix(s, seed);
  for (int n = 0; n < kNodes; ++n)
    s.add_node(AgentId(static_cast<std::uint64_t>(n + 1)), mix.node(n));
  std::uint64_t next_id = 1;
  // Fill the nodes, then the queue to its length.
  std::vector<JobId> placed;
  while (s.queued() < queued) {
    s.enqueue(JobId(next_id++), mix.job());
    for (auto& a : s.schedule(SIZE_MAX, 0))
      placed.push_back(a.job);
  }
  std::size_t made = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (made < decisions) {
    std::size_t k = mix.pick(static_cast<std::uint32_t>(placed.size()));
    s.release(placed[k]);
    placed[k] = placed.back();
    placed.pop_back();
    s.enqueue(JobId(next_id++), mix.job());
    for (auto& a : s.schedule(16, 0)) {
      placed.push_back(a.job);
      ++made;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {static_cast<double>(made) / secs, secs * 1e9 / static_cast<double>(made), s.classes()};
}

} // namespace

int main(int argc, char** argv) {
  std::size_t decisions = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1'000'000;
  std::uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 42;
  std::printf("scheduler: %d nodes (4 labels, 4-32 slots), steady state of release + enqueue + "
              "schedule, %zu decisions, seed %llu\n",
              kNodes, decisions, static_cast<unsigned long long>(seed));
  Result small = run(1'000, decisions, seed);
  Result large = run(1'000'000, decisions, seed);
  std::printf("  %9s queued: %12.0f decisions/s  %7.1f ns/decision  %5zu classes\n", "1,000",
              small.decisions_per_s, small.ns_per_decision, small.classes);
  std::printf("  %9s queued: %12.0f decisions/s  %7.1f ns/decision  %5zu classes\n", "1,000,000",
              large.decisions_per_s, large.ns_per_decision, large.classes);
  std::printf("  cost ratio 1,000,000 / 1,000 queued: %.2fx (goal <= 1.5x); slower rate %.2fx of "
              "1,000,000/s goal\n",
              large.ns_per_decision / small.ns_per_decision,
              std::min(small.decisions_per_s, large.decisions_per_s) / 1e6);
  return 0;
}
