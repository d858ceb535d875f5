// SPDX-License-Identifier: Apache-2.0
// Which engine runs which task (docs/engines.md). Pure, like the scheduler: no I/O, no clock.
// Load-balanced tasks wait in one queue per label ("" takes any engine) and go to the
// least-loaded open engine of that label with room (fewer than its prefetch in flight); direct
// tasks wait in their engine's own queue and go first. Within a queue: higher priority first,
// then by id. A decision costs O(log engines), whatever the number of queued tasks.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sortie::scheduler {

class TaskChooser {
public:
  struct Pick {
    std::uint64_t task = 0;
    std::uint64_t engine = 0;
  };

  /// An engine that may be given up to `prefetch` tasks ahead of its results. A known engine is
  /// reopened (with `in_flight` tasks it already holds).
  void add_engine(std::uint64_t engine, const std::string& label, std::uint32_t prefetch,
                  std::uint32_t in_flight = 0);
  /// How many tasks it may be sent ahead of its results from now on (PrefetchPace).
  void set_prefetch(std::uint64_t engine, std::uint32_t prefetch);
  /// It takes nothing new until reopened; its queue is kept.
  void close_engine(std::uint64_t engine);
  /// It is gone: returns the direct tasks still queued for it.
  std::vector<std::uint64_t> remove_engine(std::uint64_t engine);
  bool has_engine(std::uint64_t engine) const { return engines_.contains(engine); }
  bool is_open(std::uint64_t engine) const;

  /// Queues a task: for one engine (`engine` != 0) or any engine with `label` ("": any).
  void enqueue(std::uint64_t task, const std::string& label, std::uint64_t engine,
               std::int32_t priority);
  /// Takes a queued task out (forgotten or failed before it ran); false if it was not queued.
  bool dequeue(std::uint64_t task);
  /// One of the engine's tasks in flight ended.
  void finished(std::uint64_t engine);

  /// Tasks to send now, each counted in flight on its engine: every engine is filled up to its
  /// prefetch, the least loaded first.
  std::vector<Pick> choose();

  std::uint32_t in_flight(std::uint64_t engine) const;
  std::size_t queued() const { return where_.size(); }

private:
  using Key = std::pair<std::int64_t, std::uint64_t>; // (-priority, task)
  using Queue = std::set<Key>;
  using Load = std::set<std::pair<std::uint32_t, std::uint64_t>>; // (in flight, engine)
  struct Engine {
    std::string label;
    std::uint32_t prefetch = 1;
    std::uint32_t in_flight = 0;
    bool open = true;
    Queue direct;
  };
  struct Where {
    Key key;
    std::uint64_t engine = 0; ///< direct: its engine
    std::string label;        ///< load-balanced: its label
  };
  bool has_room(const Engine& e) const { return e.open && e.in_flight < e.prefetch; }
  void index(std::uint64_t id, const Engine& e);
  void unindex(std::uint64_t id, const Engine& e);
  void take(std::uint64_t id, Engine& e);

  std::unordered_map<std::uint64_t, Engine> engines_;
  std::map<std::string, Queue> by_label_;        ///< load-balanced, by label (only non-empty)
  std::map<std::string, Load> room_by_label_;    ///< open engines with room, by label
  Load room_any_;                                ///< every open engine with room
  std::set<std::uint64_t> direct_waiting_;       ///< engines with direct tasks queued
  std::unordered_map<std::uint64_t, Where> where_; ///< queued tasks
};

/// How many tasks an engine is sent ahead of its results, from the pace of its recent tasks:
/// enough for about kWindowUs of them, so that a stream of short tasks does not cost a wake-up
/// and a message each way per task, and never fewer than `base` (engine_prefetch) nor more than
/// `cap` (engine_prefetch_max). A task it holds runs longer than that window at most behind
/// the ones sent with it; while its current task runs long, it gets `base` again. Pure: the
/// caller gives the times (microseconds, any origin).
class PrefetchPace {
public:
  static constexpr double kWindowUs = 2000;

  /// It was given a task while it held none: its busy time starts.
  void started(std::int64_t now_us);
  /// `count` of its tasks ended (one batch of results); `busy`: it still holds some.
  void ended(std::int64_t now_us, std::size_t count, bool busy);
  /// Its prefetch now.
  std::uint32_t prefetch(std::int64_t now_us, std::uint32_t base, std::uint32_t cap) const;
  /// Its recent time per task (an average that follows the last batches); 0: none measured yet.
  double per_task_us() const { return per_task_us_; }

private:
  double per_task_us_ = 0;
  std::int64_t busy_from_us_ = -1; ///< since its last results (or its first task), while busy
};

} // namespace sortie::scheduler
