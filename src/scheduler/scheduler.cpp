// SPDX-License-Identifier: Apache-2.0
// The scheduler: classes of equal jobs, placement on nodes by slots, memory, GPUs and labels.
#include "scheduler/scheduler.hpp"

#include <algorithm>
#include <bit>

#include "common/assert.hpp"

namespace sortie::scheduler {
namespace {

void hash_mix(std::size_t& h, std::size_t v) { h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); }

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
  hash_mix(h, r.per_node);
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

namespace {

constexpr std::uint32_t kFreeBuckets = 64; // parked nodes with more free slots share the last

template <typename Set, typename Key>
void bucket_insert(std::vector<std::pair<std::uint32_t, Set>>& by_slots, std::uint32_t slots, const Key& key) {
  auto it = std::lower_bound(by_slots.begin(), by_slots.end(), slots,
                             [](const auto& entry, std::uint32_t s) { return entry.first < s; });
  if (it == by_slots.end() || it->first != slots)
    it = by_slots.insert(it, {slots, Set()});
  it->second.insert(key);
}

template <typename Set, typename Key>
void bucket_erase(std::vector<std::pair<std::uint32_t, Set>>& by_slots, std::uint32_t slots, const Key& key) {
  for (auto it = by_slots.begin(); it != by_slots.end(); ++it) {
    if (it->first != slots)
      continue;
    it->second.erase(key);
    if (it->second.empty())
      by_slots.erase(it);
    return;
  }
}

void swap_remove(std::vector<AgentId>& list, std::uint32_t pos, AgentId& moved) {
  list[pos] = list.back();
  moved = list[pos];
  list.pop_back();
}

} // namespace

std::uint32_t Scheduler::class_for(const Requirements& req, bool& created) {
  created = false;
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
  created = true;
  return idx;
}

Scheduler::Key Scheduler::key_of(std::uint32_t idx) const {
  const JobClass& c = classes_[idx];
  return Key{-static_cast<std::int64_t>(c.req.priority), c.fifo.front().value, idx};
}

template <typename F>
void Scheduler::for_each_bucket(const Requirements& r, F&& fn) {
  if (r.hosts.empty()) {
    fn(by_label_[r.label]);
    for (auto h : r.prefer)
      fn(preferred_[h]);
  } else {
    for (auto h : r.hosts)
      fn(pinned_[h]);
  }
}

void Scheduler::index_class(std::uint32_t idx) {
  JobClass& c = classes_[idx];
  c.key = key_of(idx);
  for_each_bucket(c.req, [&](Bucket& b) { bucket_insert(b.by_slots, c.req.slots, c.key); });
}

void Scheduler::unindex_class(std::uint32_t idx) {
  JobClass& c = classes_[idx];
  for_each_bucket(c.req, [&](Bucket& b) { bucket_erase(b.by_slots, c.req.slots, c.key); });
}

void Scheduler::rekey(std::uint32_t idx) {
  if (classes_[idx].key == key_of(idx))
    return;
  unindex_class(idx);
  index_class(idx);
}

void Scheduler::drop_class(std::uint32_t idx) {
  JobClass& c = classes_[idx];
  SORTIE_ASSERT(c.live && c.fifo.empty(), "only empty live classes are dropped");
  unindex_class(idx);
  class_index_.erase(c.req);
  c.live = false;
  c.fresh = false;
  c.req = Requirements();
  --live_classes_;
  free_classes_.push_back(idx);
}

bool Scheduler::head_changed(std::uint32_t idx) {
  JobClass& c = classes_[idx];
  while (!c.fifo.empty() && !removed_.empty()) {
    auto it = removed_.find(c.fifo.front());
    if (it == removed_.end())
      break;
    removed_.erase(it);
    c.fifo.pop_front();
  }
  if (c.fifo.empty()) {
    drop_class(idx);
    return false;
  }
  rekey(idx);
  return true;
}

bool Scheduler::skip_removed(std::uint32_t idx) {
  JobClass& c = classes_[idx];
  if (removed_.empty() || !removed_.contains(c.fifo.front()))
    return true;
  return head_changed(idx);
}

void Scheduler::enqueue(JobId job, const Requirements& req) {
  if (req.spans_nodes()) {
    auto [it, added] = gangs_.try_emplace(GangKey{-static_cast<std::int64_t>(req.priority), job.value}, req);
    if (!added) // removed, then queued again before the removal was applied
      removed_.erase(job);
    ++queued_;
    gangs_dirty_ = true;
    return;
  }
  bool created;
  std::uint32_t idx = class_for(req, created);
  classes_[idx].fifo.push_back(job);
  ++queued_;
  if (created) {
    index_class(idx);
    classes_[idx].fresh = true;
    fresh_.push_back(idx);
  }
}

void Scheduler::requeue_front(JobId job, const Requirements& req) {
  if (req.spans_nodes())
    return enqueue(job, req); // gang jobs go by id: a retried one is ahead of newer ones
  bool created;
  std::uint32_t idx = class_for(req, created);
  classes_[idx].fifo.push_front(job);
  ++queued_;
  if (created) {
    index_class(idx);
    classes_[idx].fresh = true;
    fresh_.push_back(idx);
  } else {
    rekey(idx);
  }
}

void Scheduler::remove_queued(JobId job) {
  // Lazy: the job is skipped when it reaches the head of its class. When the removed outnumber
  // the queued, they are dropped all at once (amortized O(1) per removal).
  if (removed_.insert(job).second) {
    SORTIE_ASSERT(queued_ > 0, "remove_queued is only called for queued jobs");
    --queued_;
    if (!gangs_.empty())
      gangs_dirty_ = true; // it may hold a reservation
    if (removed_.size() > std::max<std::size_t>(4096, queued_))
      compact_removed();
  }
}

void Scheduler::compact_removed() {
  for (std::uint32_t idx = 0; idx < classes_.size(); ++idx) {
    JobClass& c = classes_[idx];
    if (!c.live)
      continue;
    std::erase_if(c.fifo, [&](JobId j) { return removed_.contains(j); });
    c.fifo.shrink_to_fit();
    if (c.fifo.empty())
      drop_class(idx);
    else
      rekey(idx);
  }
  for (auto it = gangs_.begin(); it != gangs_.end();)
    it = removed_.contains(JobId(it->first.job)) ? gangs_.erase(it) : std::next(it);
  removed_ = {}; // its buckets too
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

void Scheduler::mark_dirty(AgentId id, Node& node) {
  if (node.state == NodeState::Parked)
    unpark(id, node);
  if (node.state != NodeState::Dirty) {
    node.state = NodeState::Dirty;
    dirty_.push_back(id);
  }
}

void Scheduler::park(AgentId id, Node& node) {
  if (node.reserved)
    return;
  std::uint32_t f = std::min(free_slots(node), kFreeBuckets - 1);
  node.parked_free = f;
  parked_all_.by_free.resize(kFreeBuckets);
  node.pos_all = static_cast<std::uint32_t>(parked_all_.by_free[f].size());
  parked_all_.by_free[f].push_back(id);
  if (node.info.label != 0) {
    auto& ix = parked_by_label_[node.info.label];
    ix.by_free.resize(kFreeBuckets);
    node.pos_label = static_cast<std::uint32_t>(ix.by_free[f].size());
    ix.by_free[f].push_back(id);
  }
  node.state = NodeState::Parked;
}

void Scheduler::unpark(AgentId id, Node& node) {
  SORTIE_ASSERT(node.state == NodeState::Parked, "only parked nodes are unparked");
  (void)id;
  AgentId moved;
  auto& all = parked_all_.by_free[node.parked_free];
  swap_remove(all, node.pos_all, moved);
  if (moved != id)
    nodes_.find(moved)->second.pos_all = node.pos_all;
  if (node.info.label != 0) {
    auto& list = parked_by_label_[node.info.label].by_free[node.parked_free];
    swap_remove(list, node.pos_label, moved);
    if (moved != id)
      nodes_.find(moved)->second.pos_label = node.pos_label;
  }
  node.state = NodeState::Idle;
}

void Scheduler::add_node(AgentId id, const NodeInfo& info) {
  auto [it, fresh] = nodes_.try_emplace(id);
  Node& node = it->second;
  if (node.state == NodeState::Parked)
    unpark(id, node); // the index it is in depends on the info
  if (!fresh && node.info.name != 0)
    std::erase(node_by_name_[node.info.name], id);
  node.info = info;
  if (node.info.gpus.size() > 64)
    node.info.gpus.resize(64);
  if (fresh)
    node.gpu_free = node.info.gpus.size() == 64 ? ~0ULL : (1ULL << node.info.gpus.size()) - 1;
  if (node.info.name != 0)
    node_by_name_[node.info.name].push_back(id);
  node.accepting = true;
  gangs_dirty_ = true;
  mark_dirty(id, node);
}

void Scheduler::remove_node(AgentId id) {
  auto it = nodes_.find(id);
  if (it == nodes_.end())
    return;
  if (it->second.state == NodeState::Parked)
    unpark(id, it->second);
  if (it->second.info.name != 0)
    std::erase(node_by_name_[it->second.info.name], id);
  if (it->second.reserved) {
    std::erase(reserved_, id);
    gangs_dirty_ = true;
  }
  nodes_.erase(it); // a stale entry in dirty_ is skipped
}

void Scheduler::set_queue_slots(AgentId id, std::uint32_t queue_slots) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || it->second.info.queue_slots == queue_slots)
    return;
  if (it->second.state == NodeState::Parked)
    unpark(id, it->second);
  it->second.info.queue_slots = queue_slots;
  mark_dirty(id, it->second);
}

void Scheduler::set_accepting(AgentId id, bool accepting) {
  auto it = nodes_.find(id);
  if (it == nodes_.end() || it->second.accepting == accepting)
    return;
  it->second.accepting = accepting;
  gangs_dirty_ = true;
  mark_dirty(id, it->second);
}

void Scheduler::adopt(JobId job,
                      AgentId node_id,
                      const Requirements& req,
                      const std::vector<std::uint32_t>& gpus) {
  Placement p{node_id, req.slots, req.memory, 0, req.max_per_node ? req.group : 0};
  if (auto it = nodes_.find(node_id); it != nodes_.end()) {
    Node& node = it->second;
    if (node.state == NodeState::Parked)
      unpark(node_id, node);
    for (auto g : gpus)
      for (std::size_t i = 0; i < node.info.gpus.size(); ++i)
        if (node.info.gpus[i] == g)
          p.gpu_mask |= 1ULL << i;
    node.used_slots += p.slots;
    node.used_memory += p.memory;
    node.gpu_free &= ~p.gpu_mask;
    if (p.group)
      ++group_count(node, p.group);
    mark_dirty(node_id, node);
  }
  placements_[job] = p;
}

void Scheduler::release(JobId job) {
  auto it = placements_.find(job);
  if (it == placements_.end())
    return;
  const Placement& p = it->second;
  gangs_dirty_ = true;
  for (auto [other, slots] : p.others) {
    auto n = nodes_.find(other);
    if (n == nodes_.end())
      continue;
    if (n->second.state == NodeState::Parked)
      unpark(other, n->second);
    n->second.used_slots -= std::min(n->second.used_slots, slots);
    mark_dirty(other, n->second);
  }
  if (auto n = nodes_.find(p.node); n != nodes_.end()) {
    Node& node = n->second;
    if (node.state == NodeState::Parked)
      unpark(n->first, node);
    node.used_slots -= std::min(node.used_slots, p.slots);
    node.used_memory -= std::min(node.used_memory, p.memory);
    node.gpu_free |= p.gpu_mask;
    if (p.group) {
      auto& count = group_count(node, p.group);
      count -= std::min<std::uint32_t>(count, 1);
    }
    mark_dirty(n->first, node);
  }
  placements_.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Decisions

bool Scheduler::fits(const Requirements& r,
                     const Node& node,
                     std::uint32_t slot_limit,
                     std::int64_t now) const {
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

void Scheduler::consider(Bucket& bucket,
                         const Node& node,
                         std::uint32_t slot_limit,
                         std::int64_t now,
                         std::int64_t& best) {
  std::uint32_t cap = std::min(slot_limit - node.used_slots, node.info.slots);
restart:
  for (auto& [slots, ordered] : bucket.by_slots) {
    if (slots > cap)
      break;
    // The first class that fits is the best of this set; one that cannot beat `best` ends it.
    for (auto it = ordered.begin(); it != ordered.end(); ++it) {
      Key key = *it; // skip_removed may erase it
      if (best >= 0 && !(key < classes_[static_cast<std::size_t>(best)].key))
        break;
      if (!skip_removed(key.idx) || classes_[key.idx].key != key)
        goto restart; // the sets changed under the loop
      if (fits(classes_[key.idx].req, node, slot_limit, now)) {
        best = key.idx;
        break;
      }
    }
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
  head_changed(idx);
}

Scheduler::Node* Scheduler::find_parked(const Requirements& r, std::int64_t now, AgentId& id) {
  auto try_node = [&](AgentId nid, bool idle) -> Node* {
    auto it = nodes_.find(nid);
    if (it == nodes_.end() || it->second.state != NodeState::Parked)
      return nullptr;
    Node& n = it->second;
    std::uint32_t limit = n.info.slots + (idle ? 0 : n.info.queue_slots);
    if (!fits(r, n, limit, now))
      return nullptr;
    id = nid;
    return &n;
  };
  auto try_hosts = [&](const std::vector<Symbol>& hosts, bool idle) -> Node* {
    for (auto h : hosts)
      if (auto it = node_by_name_.find(h); it != node_by_name_.end())
        for (auto nid : it->second)
          if (Node* n = try_node(nid, idle))
            return n;
    return nullptr;
  };
  const ParkedIndex* ix = &parked_all_;
  if (r.label != 0) {
    auto it = parked_by_label_.find(r.label);
    ix = it == parked_by_label_.end() ? nullptr : &it->second;
  }
  // Idle slots before launch queues; pinned and preferred hosts before others.
  for (bool idle : {true, false}) {
    if (!r.hosts.empty()) {
      if (Node* n = try_hosts(r.hosts, idle))
        return n;
      continue;
    }
    if (Node* n = try_hosts(r.prefer, idle))
      return n;
    if (ix == nullptr || ix->by_free.empty())
      continue;
    for (std::uint32_t f = std::min(r.slots, kFreeBuckets - 1); f < kFreeBuckets; ++f)
      for (auto nid : ix->by_free[f])
        if (Node* n = try_node(nid, idle))
          return n;
  }
  return nullptr;
}

void Scheduler::place_fresh(std::size_t max, std::int64_t now, std::vector<Assignment>& out) {
  std::vector<std::uint32_t> list;
  list.swap(fresh_);
  std::erase_if(list, [&](std::uint32_t idx) {
    return !classes_[idx].live || !classes_[idx].fresh || !skip_removed(idx);
  });
  std::sort(list.begin(), list.end(),
            [&](std::uint32_t a, std::uint32_t b) { return classes_[a].key < classes_[b].key; });
  list.erase(std::unique(list.begin(), list.end()), list.end());
  for (std::uint32_t idx : list) {
    JobClass& c = classes_[idx];
    while (c.live && c.fresh && out.size() < max) {
      AgentId nid;
      Node* node = find_parked(c.req, now, nid);
      if (node == nullptr) {
        c.fresh = false; // fits no parked node
        break;
      }
      unpark(nid, *node);
      place(nid, *node, idx, out);
      if (free_slots(*node) > 0)
        park(nid, *node);
    }
    if (c.live && c.fresh)
      fresh_.push_back(idx); // `max` reached: next call
  }
}

void Scheduler::take_slots(AgentId id, Node& node, std::uint32_t slots) {
  if (node.state == NodeState::Parked)
    unpark(id, node);
  node.used_slots += slots;
  mark_dirty(id, node); // what is left is looked at again
}

std::vector<std::pair<AgentId, std::uint32_t>> Scheduler::gang_nodes(const Requirements& r,
                                                                     std::int64_t now,
                                                                     bool fit,
                                                                     const std::vector<AgentId>& exclude) {
  const std::uint32_t count = (r.slots + r.per_node - 1) / r.per_node;
  const std::uint32_t last = r.slots - (count - 1) * r.per_node;
  Requirements share;
  share.label = r.label;
  share.time_request_ms = r.time_request_ms;
  struct Candidate {
    bool full;          // can take per_node slots (else only the last share)
    std::uint32_t free; // idle slots now
    AgentId id;
  };
  std::map<Symbol, std::vector<Candidate>> pools;
  for (const auto& [id, node] : nodes_) {
    if (!node.accepting || node.info.pool == 0)
      continue;
    if (!r.hosts.empty() && !std::binary_search(r.hosts.begin(), r.hosts.end(), node.info.name))
      continue;
    if (std::find(exclude.begin(), exclude.end(), id) != exclude.end())
      continue;
    std::uint32_t used = fit ? node.used_slots : 0; // not `fit`: once its jobs are done
    std::uint32_t free = node.info.slots > node.used_slots ? node.info.slots - node.used_slots : 0;
    auto can_take = [&](std::uint32_t slots) {
      share.slots = slots;
      if (slots > node.info.slots || used + slots > node.info.slots)
        return false;
      return fits(share, node, node.used_slots + node.info.slots, now); // label, walltime
    };
    if (!can_take(last))
      continue;
    pools[node.info.pool].push_back({can_take(r.per_node), free, id});
  }
  for (auto& [pool, list] : pools) {
    if (list.size() < count)
      continue;
    std::sort(list.begin(), list.end(), [](const Candidate& a, const Candidate& b) {
      if (a.full != b.full)
        return a.full;
      if (a.free != b.free)
        return a.free > b.free;
      return a.id < b.id;
    });
    if (count > 1 && !list[count - 2].full)
      continue;
    std::vector<std::pair<AgentId, std::uint32_t>> span;
    for (std::uint32_t i = 0; i < count; ++i)
      span.emplace_back(list[i].id, i + 1 < count ? r.per_node : last);
    return span;
  }
  return {};
}

void Scheduler::set_reserved(std::vector<AgentId> nodes) {
  std::sort(nodes.begin(), nodes.end());
  for (AgentId id : reserved_) {
    auto it = nodes_.find(id);
    if (it == nodes_.end() || std::binary_search(nodes.begin(), nodes.end(), id))
      continue;
    it->second.reserved = false;
    mark_dirty(id, it->second);
  }
  for (AgentId id : nodes) {
    Node& node = nodes_.find(id)->second;
    if (node.state == NodeState::Parked)
      unpark(id, node);
    node.reserved = true;
  }
  reserved_ = std::move(nodes);
}

void Scheduler::place_gangs(std::size_t max, std::int64_t now, std::vector<Assignment>& out) {
  gangs_dirty_ = false;
  std::vector<AgentId> reserve;
  for (auto it = gangs_.begin(); it != gangs_.end();) {
    JobId job(it->first.job);
    if (removed_.erase(job) > 0) {
      it = gangs_.erase(it);
      continue;
    }
    if (out.size() >= max) {
      gangs_dirty_ = true; // the rest next call
      break;
    }
    // Nodes reserved in this call are for an earlier gang job.
    auto span = gang_nodes(it->second, now, true, reserve);
    if (span.empty()) {
      if (reserve.empty())
        for (auto [id, slots] : gang_nodes(it->second, now, false, reserve))
          reserve.push_back(id);
      ++it;
      continue;
    }
    Placement p{span[0].first, span[0].second, 0, 0, 0, {}};
    for (std::size_t i = 0; i < span.size(); ++i) {
      take_slots(span[i].first, nodes_.find(span[i].first)->second, span[i].second);
      if (i > 0)
        p.others.push_back(span[i]);
    }
    placements_[job] = std::move(p);
    out.push_back(Assignment{job, span[0].first, {}, std::move(span)});
    --queued_;
    it = gangs_.erase(it);
  }
  set_reserved(std::move(reserve));
}

std::vector<Assignment> Scheduler::schedule(std::size_t max, std::int64_t now) {
  std::vector<Assignment> out;
  if (gangs_dirty_)
    place_gangs(max, now, out);
  if (queued_ == 0 || (dirty_.empty() && fresh_.empty()) || out.size() >= max)
    return out;
  if (!dirty_.empty()) {
    // Nodes whose capacity changed look at the classes that can run on them. Pass 0 fills idle
    // slots with each node's pinned and preferred jobs, pass 1 with anything, pass 2 fills
    // launch queues.
    for (int step = 0; step < 3 && out.size() < max && queued_ > 0; ++step) {
      bool queue = step == 2;
      bool local_only = step == 0;
      for (std::size_t i = 0; i < dirty_.size() && out.size() < max && queued_ > 0; ++i) {
        AgentId id = dirty_[i];
        auto it = nodes_.find(id);
        if (it == nodes_.end() || !it->second.accepting || it->second.reserved ||
            it->second.state != NodeState::Dirty)
          continue;
        it->second.examined = false;
        Node& node = it->second;
        std::uint32_t limit = node.info.slots + (queue ? node.info.queue_slots : 0);
        bool done = false;
        while (node.used_slots < limit && out.size() < max) {
          std::int64_t idx = pick(node, limit, now, local_only);
          if (idx < 0) {
            done = true;
            break;
          }
          place(id, node, static_cast<std::uint32_t>(idx), out);
        }
        node.examined = queue && (done || node.used_slots >= limit);
      }
    }
    // Park the nodes that found nothing more that fits; keep those not looked at to the end.
    std::erase_if(dirty_, [&](AgentId id) {
      auto it = nodes_.find(id);
      if (it == nodes_.end() || it->second.state != NodeState::Dirty)
        return true;
      Node& node = it->second;
      if (node.accepting && !node.reserved && free_slots(node) > 0 && !node.examined)
        return false;
      node.state = NodeState::Idle;
      if (node.accepting && free_slots(node) > 0)
        park(id, node);
      return true;
    });
    if (out.size() >= max)
      return out;
  }
  // Classes that appeared since: the parked nodes they fit, if any.
  if (out.size() < max && queued_ > 0)
    place_fresh(max, now, out);
  return out;
}

std::uint64_t Scheduler::slots_total() const {
  std::uint64_t total = 0;
  for (const auto& [id, n] : nodes_)
    total += n.info.slots;
  return total;
}

std::uint32_t Scheduler::idle_slots(AgentId node) const {
  auto it = nodes_.find(node);
  if (it == nodes_.end())
    return 0;
  const Node& n = it->second;
  return n.used_slots < n.info.slots ? n.info.slots - n.used_slots : 0;
}

std::uint64_t Scheduler::slots_used() const {
  std::uint64_t used = 0;
  for (const auto& [id, n] : nodes_)
    used += std::min(n.used_slots, n.info.slots);
  return used;
}

} // namespace sortie::scheduler
