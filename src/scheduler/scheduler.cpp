// SPDX-License-Identifier: Apache-2.0
#include "scheduler/scheduler.hpp"

#include <algorithm>
#include <bit>

#include "common/assert.hpp"

namespace sortie::scheduler {
namespace {

void hash_mix(std::size_t& h, std::size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); }

void erase_value(std::vector<std::uint32_t>& list, std::uint32_t value) {
  auto it = std::find(list.begin(), list.end(), value);
  if (it != list.end()) {
    *it = list.back();
    list.pop_back();
  }
}

} // namespace

std::size_t Scheduler::ReqHash::operator()(const Requirements& r) const {
  std::size_t h = r.label;
  hash_mix(h, r.slots);
  hash_mix(h, std::hash<std::uint64_t>{}(r.memory));
  hash_mix(h, r.gpus);
  for (auto s : r.hosts)
    hash_mix(h, s);
  hash_mix(h, 0xfeed);
  for (auto s : r.prefer)
    hash_mix(h, s);
  hash_mix(h, r.group);
  hash_mix(h, r.max_per_node);
  hash_mix(h, static_cast<std::size_t>(r.priority));
  hash_mix(h, static_cast<std::size_t>(r.time_request_ms));
  return h;
}

Scheduler::Scheduler() { names_.emplace_back(); }

Symbol Scheduler::intern(std::string_view text) {
  if (text.empty())
    return 0;
  auto it = symbols_.find(std::string(text));
  if (it != symbols_.end())
    return it->second;
  auto s = static_cast<Symbol>(names_.size());
  names_.emplace_back(text);
  symbols_.emplace(std::string(text), s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Classes

std::uint32_t Scheduler::class_for(const Requirements& req) {
  if (auto it = class_index_.find(req); it != class_index_.end())
    return it->second;
  std::uint32_t idx;
  if (!free_classes_.empty()) {
    idx = free_classes_.back();
    free_classes_.pop_back();
  } else {
    idx = static_cast<std::uint32_t>(classes_.size());
    classes_.emplace_back();
  }
  JobClass& c = classes_[idx];
  c.req = req;
  c.fifo.clear();
  c.live = true;
  class_index_.emplace(req, idx);
  ++live_classes_;
  index_class(idx);
  return idx;
}

void Scheduler::index_class(std::uint32_t idx) {
  const Requirements& r = classes_[idx].req;
  if (r.hosts.empty()) {
    by_label_[r.label].push_back(idx);
    for (auto h : r.prefer)
      preferred_[h].push_back(idx);
  } else {
    for (auto h : r.hosts)
      pinned_[h].push_back(idx);
  }
}

void Scheduler::drop_class(std::uint32_t idx) {
  JobClass& c = classes_[idx];
  SORTIE_ASSERT(c.live && c.fifo.empty(), "only empty live classes are dropped");
  const Requirements& r = c.req;
  if (r.hosts.empty()) {
    erase_value(by_label_[r.label], idx);
    for (auto h : r.prefer)
      erase_value(preferred_[h], idx);
  } else {
    for (auto h : r.hosts)
      erase_value(pinned_[h], idx);
  }
  class_index_.erase(r);
  c.live = false;
  c.req = Requirements();
  --live_classes_;
  free_classes_.push_back(idx);
}

void Scheduler::skip_removed(JobClass& c) {
  while (!c.fifo.empty() && !removed_.empty()) {
    auto it = removed_.find(c.fifo.front());
    if (it == removed_.end())
      break;
    removed_.erase(it);
    c.fifo.pop_front();
  }
}

void Scheduler::enqueue(JobId job, const Requirements& req) {
  classes_[class_for(req)].fifo.push_back(job);
  ++queued_;
}

void Scheduler::requeue_front(JobId job, const Requirements& req) {
  classes_[class_for(req)].fifo.push_front(job);
  ++queued_;
}

void Scheduler::remove_queued(JobId job) {
  // Lazy: the job is skipped when it reaches the head of its class.
  if (removed_.insert(job).second) {
    SORTIE_ASSERT(queued_ > 0, "remove_queued is only called for queued jobs");
    --queued_;
  }
}

// ---------------------------------------------------------------------------------------------
// Nodes

std::uint32_t& Scheduler::group_count(Node& node, Symbol group) {
  for (auto& [g, n] : node.groups)
    if (g == group)
      return n;
  node.groups.emplace_back(group, 0);
  return node.groups.back().second;
}

void Scheduler::add_node(AgentId id, const NodeInfo& info) {
  auto [it, fresh] = nodes_.try_emplace(id);
  Node& node = it->second;
  node.info = info;
  if (node.info.gpus.size() > 64)
    node.info.gpus.resize(64);
  if (fresh)
    node.gpu_free = node.info.gpus.size() == 64 ? ~0ULL : (1ULL << node.info.gpus.size()) - 1;
  node.accepting = true;
  list_if_free(id, node);
}

void Scheduler::remove_node(AgentId id) { nodes_.erase(id); }

void Scheduler::set_queue_slots(AgentId id, std::uint32_t queue_slots) {
  auto it = nodes_.find(id);
  if (it == nodes_.end())
    return;
  it->second.info.queue_slots = queue_slots;
  list_if_free(id, it->second);
}

void Scheduler::set_accepting(AgentId id, bool accepting) {
  auto it = nodes_.find(id);
  if (it == nodes_.end())
    return;
  it->second.accepting = accepting;
  list_if_free(id, it->second);
}

void Scheduler::list_if_free(AgentId id, Node& node) {
  if (!node.listed && node.accepting &&
      node.used_slots < node.info.slots + node.info.queue_slots) {
    node.listed = true;
    free_list_.push_back(id);
  }
}

void Scheduler::adopt(JobId job,
                      AgentId node_id,
                      const Requirements& req,
                      const std::vector<std::uint32_t>& gpus) {
  Placement p{node_id, req.slots, req.memory, 0, req.max_per_node ? req.group : 0};
  if (auto it = nodes_.find(node_id); it != nodes_.end()) {
    Node& node = it->second;
    for (auto g : gpus)
      for (std::size_t i = 0; i < node.info.gpus.size(); ++i)
        if (node.info.gpus[i] == g)
          p.gpu_mask |= 1ULL << i;
    node.used_slots += p.slots;
    node.used_memory += p.memory;
    node.gpu_free &= ~p.gpu_mask;
    if (p.group)
      ++group_count(node, p.group);
  }
  placements_[job] = p;
}

void Scheduler::release(JobId job) {
  auto it = placements_.find(job);
  if (it == placements_.end())
    return;
  const Placement& p = it->second;
  if (auto n = nodes_.find(p.node); n != nodes_.end()) {
    Node& node = n->second;
    node.used_slots -= std::min(node.used_slots, p.slots);
    node.used_memory -= std::min(node.used_memory, p.memory);
    node.gpu_free |= p.gpu_mask;
    if (p.group) {
      auto& count = group_count(node, p.group);
      count -= std::min<std::uint32_t>(count, 1);
    }
    list_if_free(n->first, node);
  }
  placements_.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Decisions

bool Scheduler::fits(const JobClass& c,
                     const Node& node,
                     std::uint32_t slot_limit,
                     std::int64_t now) const {
  const Requirements& r = c.req;
  if (r.slots > node.info.slots || node.used_slots + r.slots > slot_limit)
    return false;
  if (r.label != 0 && r.label != node.info.label)
    return false;
  if (r.memory && node.used_memory + r.memory > node.info.memory)
    return false;
  if (r.gpus && static_cast<std::uint32_t>(std::popcount(node.gpu_free)) < r.gpus)
    return false;
  if (r.time_request_ms && node.info.walltime_end_ms &&
      node.info.walltime_end_ms - now < r.time_request_ms)
    return false;
  if (r.max_per_node) {
    for (const auto& [g, n] : node.groups)
      if (g == r.group)
        return n < r.max_per_node;
  }
  return true;
}

void Scheduler::consider(ClassList& list,
                         const Node& node,
                         std::uint32_t slot_limit,
                         std::int64_t now,
                         std::int64_t& best) {
  for (std::size_t i = 0; i < list.size();) {
    std::uint32_t idx = list[i];
    JobClass& c = classes_[idx];
    skip_removed(c);
    if (c.fifo.empty()) {
      drop_class(idx); // removes it from `list` too: look at position i again
      continue;
    }
    ++i;
    if (!fits(c, node, slot_limit, now))
      continue;
    if (best < 0) {
      best = idx;
      continue;
    }
    const JobClass& b = classes_[static_cast<std::size_t>(best)];
    if (c.req.priority > b.req.priority ||
        (c.req.priority == b.req.priority && c.fifo.front() < b.fifo.front()))
      best = idx;
  }
}

std::int64_t Scheduler::pick(Node& node, std::uint32_t slot_limit, std::int64_t now, bool local_only) {
  std::int64_t best = -1;
  if (node.info.name != 0) {
    if (auto it = pinned_.find(node.info.name); it != pinned_.end())
      consider(it->second, node, slot_limit, now, best);
    if (auto it = preferred_.find(node.info.name); it != preferred_.end())
      consider(it->second, node, slot_limit, now, best);
  }
  if (!local_only) {
    if (node.info.label != 0)
      if (auto it = by_label_.find(node.info.label); it != by_label_.end())
        consider(it->second, node, slot_limit, now, best);
    if (auto it = by_label_.find(0); it != by_label_.end())
      consider(it->second, node, slot_limit, now, best);
  }
  return best;
}

void Scheduler::place(AgentId id, Node& node, std::uint32_t idx, std::vector<Assignment>& out) {
  JobClass& c = classes_[idx];
  const Requirements& r = c.req;
  JobId job = c.fifo.front();
  c.fifo.pop_front();
  --queued_;
  Placement p{id, r.slots, r.memory, 0, r.max_per_node ? r.group : 0};
  Assignment a{job, id, {}};
  for (std::uint32_t taken = 0; taken < r.gpus; ++taken) {
    int bit = std::countr_zero(node.gpu_free & ~p.gpu_mask);
    p.gpu_mask |= 1ULL << bit;
    a.gpus.push_back(node.info.gpus[static_cast<std::size_t>(bit)]);
  }
  node.used_slots += p.slots;
  node.used_memory += p.memory;
  node.gpu_free &= ~p.gpu_mask;
  if (p.group)
    ++group_count(node, p.group);
  placements_[job] = p;
  out.push_back(std::move(a));
  skip_removed(c);
  if (c.fifo.empty())
    drop_class(idx);
}

std::vector<Assignment> Scheduler::schedule(std::size_t max, std::int64_t now) {
  std::vector<Assignment> out;
  if (queued_ == 0 || free_list_.empty())
    return out;
  // Pass 0 fills idle slots, first with each node's pinned and preferred jobs, then with
  // anything; pass 1 fills launch queues.
  for (int step = 0; step < 3 && out.size() < max && queued_ > 0; ++step) {
    bool queue = step == 2;
    bool local_only = step == 0;
    for (std::size_t i = 0; i < free_list_.size() && out.size() < max && queued_ > 0; ++i) {
      AgentId id = free_list_[i];
      auto it = nodes_.find(id);
      if (it == nodes_.end() || !it->second.accepting)
        continue;
      Node& node = it->second;
      std::uint32_t limit = node.info.slots + (queue ? node.info.queue_slots : 0);
      while (node.used_slots < limit && out.size() < max) {
        std::int64_t idx = pick(node, limit, now, local_only);
        if (idx < 0)
          break;
        place(id, node, static_cast<std::uint32_t>(idx), out);
      }
    }
  }
  // Drop nodes that are full, gone or paused from the free list.
  std::erase_if(free_list_, [&](AgentId id) {
    auto it = nodes_.find(id);
    if (it == nodes_.end())
      return true;
    Node& n = it->second;
    bool keep = n.accepting && n.used_slots < n.info.slots + n.info.queue_slots;
    if (!keep)
      n.listed = false;
    return !keep;
  });
  return out;
}

std::uint64_t Scheduler::slots_total() const {
  std::uint64_t total = 0;
  for (const auto& [id, n] : nodes_)
    total += n.info.slots;
  return total;
}

std::uint64_t Scheduler::slots_used() const {
  std::uint64_t used = 0;
  for (const auto& [id, n] : nodes_)
    used += std::min(n.used_slots, n.info.slots);
  return used;
}

} // namespace sortie::scheduler
