// SPDX-License-Identifier: Apache-2.0
// The task chooser: queues per label and per engine, engines with room ordered by load.
#include "scheduler/chooser.hpp"

#include <algorithm>

namespace sortie::scheduler {

void TaskChooser::index(std::uint64_t id, const Engine& e) {
  if (!has_room(e))
    return;
  room_any_.emplace(e.in_flight, id);
  room_by_label_[e.label].emplace(e.in_flight, id);
}

void TaskChooser::unindex(std::uint64_t id, const Engine& e) {
  room_any_.erase({e.in_flight, id});
  // An emptied set stays (one per label ever seen): choose() holds pointers to them.
  if (auto it = room_by_label_.find(e.label); it != room_by_label_.end())
    it->second.erase({e.in_flight, id});
}

void TaskChooser::add_engine(std::uint64_t engine, const std::string& label,
                             std::uint32_t prefetch, std::uint32_t in_flight) {
  auto [it, fresh] = engines_.try_emplace(engine);
  Engine& e = it->second;
  if (!fresh)
    unindex(engine, e);
  e.label = label;
  e.prefetch = prefetch ? prefetch : 1;
  e.in_flight = in_flight;
  e.open = true;
  index(engine, e);
  if (!e.direct.empty())
    direct_waiting_.insert(engine);
}

void TaskChooser::set_prefetch(std::uint64_t engine, std::uint32_t prefetch) {
  auto it = engines_.find(engine);
  if (it == engines_.end() || it->second.prefetch == std::max<std::uint32_t>(prefetch, 1))
    return;
  unindex(engine, it->second);
  it->second.prefetch = std::max<std::uint32_t>(prefetch, 1);
  index(engine, it->second);
}

void TaskChooser::close_engine(std::uint64_t engine) {
  auto it = engines_.find(engine);
  if (it == engines_.end())
    return;
  unindex(engine, it->second);
  it->second.open = false;
}

bool TaskChooser::is_open(std::uint64_t engine) const {
  auto it = engines_.find(engine);
  return it != engines_.end() && it->second.open;
}

std::vector<std::uint64_t> TaskChooser::remove_engine(std::uint64_t engine) {
  std::vector<std::uint64_t> left;
  auto it = engines_.find(engine);
  if (it == engines_.end())
    return left;
  unindex(engine, it->second);
  for (const auto& [prio, task] : it->second.direct) {
    left.push_back(task);
    where_.erase(task);
  }
  direct_waiting_.erase(engine);
  engines_.erase(it);
  return left;
}

void TaskChooser::enqueue(std::uint64_t task, const std::string& label, std::uint64_t engine,
                          std::int32_t priority) {
  Key key{-static_cast<std::int64_t>(priority), task};
  if (engine != 0) {
    auto [it, fresh] = engines_.try_emplace(engine);
    if (fresh)
      it->second.open = false; // not up yet: its queue waits for add_engine
    it->second.direct.insert(key);
    direct_waiting_.insert(engine);
    where_[task] = Where{key, engine, {}};
  } else {
    by_label_[label].insert(key);
    where_[task] = Where{key, 0, label};
  }
}

bool TaskChooser::dequeue(std::uint64_t task) {
  auto it = where_.find(task);
  if (it == where_.end())
    return false;
  const Where& w = it->second;
  if (w.engine != 0) {
    if (auto e = engines_.find(w.engine); e != engines_.end())
      e->second.direct.erase(w.key);
  } else if (auto q = by_label_.find(w.label); q != by_label_.end()) {
    q->second.erase(w.key);
    if (q->second.empty())
      by_label_.erase(q);
  }
  where_.erase(it);
  return true;
}

void TaskChooser::finished(std::uint64_t engine) {
  auto it = engines_.find(engine);
  if (it == engines_.end() || it->second.in_flight == 0)
    return;
  unindex(engine, it->second);
  --it->second.in_flight;
  index(engine, it->second);
}

std::uint32_t TaskChooser::in_flight(std::uint64_t engine) const {
  auto it = engines_.find(engine);
  return it == engines_.end() ? 0 : it->second.in_flight;
}

void TaskChooser::take(std::uint64_t id, Engine& e) {
  unindex(id, e);
  ++e.in_flight;
  index(id, e);
}

std::vector<TaskChooser::Pick> TaskChooser::choose() {
  std::vector<Pick> out;
  // Direct tasks first: each engine's own queue, while it has room.
  for (auto it = direct_waiting_.begin(); it != direct_waiting_.end();) {
    auto e = engines_.find(*it);
    if (e == engines_.end()) {
      it = direct_waiting_.erase(it);
      continue;
    }
    Engine& eng = e->second;
    while (!eng.direct.empty() && has_room(eng)) {
      auto task = eng.direct.begin()->second;
      eng.direct.erase(eng.direct.begin());
      where_.erase(task);
      take(e->first, eng);
      out.push_back({task, e->first});
    }
    it = eng.direct.empty() ? direct_waiting_.erase(it) : std::next(it);
  }
  // Load-balanced: each label's queue to the least-loaded engine of that label with room.
  for (auto q = by_label_.begin(); q != by_label_.end();) {
    Load* room = nullptr;
    if (q->first.empty()) {
      room = &room_any_;
    } else if (auto r = room_by_label_.find(q->first); r != room_by_label_.end()) {
      room = &r->second;
    }
    while (room && !room->empty() && !q->second.empty()) {
      auto engine = room->begin()->second;
      auto task = q->second.begin()->second;
      q->second.erase(q->second.begin());
      where_.erase(task);
      take(engine, engines_.at(engine));
      out.push_back({task, engine});
    }
    q = q->second.empty() ? by_label_.erase(q) : std::next(q);
  }
  return out;
}

void PrefetchPace::started(std::int64_t now_us) {
  if (busy_from_us_ < 0)
    busy_from_us_ = now_us;
}

void PrefetchPace::ended(std::int64_t now_us, std::size_t count, bool busy) {
  if (busy_from_us_ >= 0 && count > 0) {
    double sample = static_cast<double>(now_us - busy_from_us_) / static_cast<double>(count);
    // Follows the last few batches: a quarter of the way to each new one.
    per_task_us_ = per_task_us_ == 0 ? sample : per_task_us_ + (sample - per_task_us_) / 4;
  }
  busy_from_us_ = busy ? now_us : -1;
}

std::uint32_t PrefetchPace::prefetch(std::int64_t now_us, std::uint32_t base,
                                     std::uint32_t cap) const {
  base = std::max<std::uint32_t>(base, 1);
  if (per_task_us_ <= 0 || cap <= base)
    return base;
  // The task it runs now counts once it has run longer than the recent ones.
  double pace = per_task_us_;
  if (busy_from_us_ >= 0)
    pace = std::max(pace, static_cast<double>(now_us - busy_from_us_));
  double fits = kWindowUs / std::max(pace, 1.0);
  if (fits <= base)
    return base;
  return fits >= cap ? cap : static_cast<std::uint32_t>(fits);
}

} // namespace sortie::scheduler
