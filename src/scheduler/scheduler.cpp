// SPDX-License-Identifier: Apache-2.0
#include "scheduler/scheduler.hpp"

#include <algorithm>

#include "common/assert.hpp"

namespace sortie::scheduler {

std::uint32_t Scheduler::class_of(const Requirements& req) {
  auto& list = classes_by_label_[req.label];
  for (auto idx : list)
    if (classes_[idx].req == req)
      return idx;
  classes_.push_back(JobClass{req, {}});
  auto idx = static_cast<std::uint32_t>(classes_.size() - 1);
  list.push_back(idx);
  return idx;
}

void Scheduler::add_node(AgentId id, const NodeInfo& info) {
  auto& node = nodes_[id];
  node.info = info;
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
  if (!node.listed && node.accepting && node.used < node.info.slots + node.info.queue_slots) {
    node.listed = true;
    free_list_.push_back(id);
  }
}

void Scheduler::enqueue(JobId job, const Requirements& req) {
  classes_[class_of(req)].fifo.push_back(job);
  ++queued_;
}

void Scheduler::requeue_front(JobId job, const Requirements& req) {
  classes_[class_of(req)].fifo.push_front(job);
  ++queued_;
}

void Scheduler::remove_queued(JobId job) {
  // Lazy: the job is skipped when it reaches the head of its class.
  if (removed_.insert(job).second) {
    SORTIE_ASSERT(queued_ > 0, "remove_queued is only called for queued jobs");
    --queued_;
  }
}

void Scheduler::adopt(JobId job, AgentId node_id, std::uint32_t slots) {
  assigned_[job] = Placement{node_id, slots};
  if (auto it = nodes_.find(node_id); it != nodes_.end())
    it->second.used += slots;
}

void Scheduler::release(JobId job) {
  auto it = assigned_.find(job);
  if (it == assigned_.end())
    return;
  auto node_it = nodes_.find(it->second.node);
  if (node_it != nodes_.end()) {
    auto& node = node_it->second;
    node.used -= std::min(node.used, it->second.slots);
    list_if_free(node_it->first, node);
  }
  assigned_.erase(it);
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

Scheduler::Popped Scheduler::pop_for(const std::string& label,
                                      std::uint32_t max_slots,
                                      std::uint32_t node_slots) {
  JobClass* best = nullptr;
  auto consider = [&](const std::vector<std::uint32_t>& list) {
    for (auto idx : list) {
      auto& c = classes_[idx];
      skip_removed(c);
      if (c.fifo.empty() || c.req.slots > max_slots || c.req.slots > node_slots)
        continue;
      if (!best || c.fifo.front() < best->fifo.front())
        best = &c;
    }
  };
  if (auto it = classes_by_label_.find(label); it != classes_by_label_.end())
    consider(it->second);
  if (!label.empty())
    if (auto it = classes_by_label_.find(std::string()); it != classes_by_label_.end())
      consider(it->second);
  if (!best)
    return {};
  JobId job = best->fifo.front();
  best->fifo.pop_front();
  --queued_;
  return {job, best->req.slots};
}

std::vector<Assignment> Scheduler::schedule(std::size_t max) {
  std::vector<Assignment> out;
  if (queued_ == 0 || free_list_.empty())
    return out;
  // Pass 0 fills idle slots, pass 1 the launch queues.
  for (int pass = 0; pass < 2 && out.size() < max && queued_ > 0; ++pass) {
    for (size_t i = 0; i < free_list_.size() && out.size() < max && queued_ > 0; ++i) {
      AgentId id = free_list_[i];
      auto it = nodes_.find(id);
      if (it == nodes_.end())
        continue;
      Node& node = it->second;
      if (!node.accepting)
        continue;
      std::uint32_t limit = node.info.slots + (pass == 1 ? node.info.queue_slots : 0);
      while (node.used < limit && out.size() < max) {
        auto [job, slots] = pop_for(node.info.label, limit - node.used, node.info.slots);
        if (!job.valid())
          break;
        node.used += slots;
        out.push_back({job, id});
        assigned_[job] = Placement{id, slots};
      }
    }
  }
  // Drop nodes that are full, gone or paused from the free list.
  std::erase_if(free_list_, [&](AgentId id) {
    auto it = nodes_.find(id);
    if (it == nodes_.end())
      return true;
    Node& n = it->second;
    bool keep = n.accepting && n.used < n.info.slots + n.info.queue_slots;
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
    used += std::min(n.used, n.info.slots);
  return used;
}

} // namespace sortie::scheduler
