// SPDX-License-Identifier: Apache-2.0
// The scheduler: a pure library that assigns queued jobs to nodes (no sockets, no SQLite, no
// clock of its own; the caller passes the time). The hub feeds it events and applies the
// assignments it returns.
//
// Design. A job's needs are data (Requirements); jobs with equal Requirements form a class with
// its own FIFO. A class exists only while it holds queued jobs, and is listed in an index by what
// can run it: its label (any node with that label, or any node at all), the hosts it is pinned
// to, the hosts it prefers. Each index keeps its classes ordered by (priority, head job id) and
// split by the slots they need, so the first class that fits is the best one: a decision never
// walks a queue and rarely more than a few classes, and its cost does not grow with the number
// of queued jobs. The queue is FIFO within a priority.
//
// Nodes are looked at only when something changed for them. A node whose capacity changed (a job
// left, it joined, it resumed) is dirty and looks at the classes that can run on it; one that
// still has room after that is parked. A class that appears later (or comes back) looks for a
// parked node that fits it, by free slots. Nothing else can make a parked node fit a job, so
// nodes that can run nothing cost nothing per call.
//
// Each node has `slots` to run jobs in and `queue_slots` more for its launch queue (work handed
// out ahead so the agent starts the next job without a round trip). Every call fills idle slots
// before any launch queue, and, within that, lets each node first take the jobs pinned to it or
// preferring it, then anything it can run. Memory and GPUs are reserved at assignment, for jobs
// in launch queues too, so the agent never starts a job that does not fit.
//
// Rules: a job with a label runs only on nodes with that exact label, one without a label on any
// node; `hosts` (non-empty) restricts it to those nodes; `prefer` lets those nodes take it first;
// it needs `slots` slots, `memory` bytes and `gpus` GPUs on one node; at most `max_per_node` jobs
// of its `group` are on one node at once; with `time_request_ms` it goes only to nodes whose
// walltime leaves at least that long.
//
// Jobs across nodes (MPI): a job with `per_node` set below its `slots` needs ceil(slots /
// per_node) nodes of one pool (a pilot) at once, `per_node` idle slots on each (the remainder on
// the last). These gang jobs are kept apart from the classes, ordered by (priority, id), and
// tried before anything else whenever some node's capacity changed. The first gang job that does
// not fit reserves the nodes of the pool closest to fitting it: they take no new jobs until it
// runs, so a stream of small jobs cannot keep it waiting for ever. A gang job takes no memory,
// GPUs or max-per-node groups (the hub refuses those).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "sortie/ids.hpp"

namespace sortie::scheduler {

/// An interned string (label, node name, group key); 0 is "none".
using Symbol = std::uint32_t;

struct Requirements {
  Symbol label = 0;
  std::uint32_t slots = 1;
  std::uint64_t memory = 0; ///< bytes; 0: not accounted
  std::uint32_t gpus = 0;
  std::vector<Symbol> hosts;  ///< sorted; empty: any node
  std::vector<Symbol> prefer; ///< sorted
  Symbol group = 0;           ///< the group max_per_node counts in
  std::uint32_t max_per_node = 0; ///< 0: unlimited
  std::int32_t priority = 0;
  std::int64_t time_request_ms = 0;
  std::uint32_t per_node = 0; ///< at most this many of `slots` on one node (0: all on one)
  bool operator==(const Requirements&) const = default;
  bool spans_nodes() const { return per_node > 0 && slots > per_node; }
};

struct NodeInfo {
  Symbol name = 0;
  Symbol label = 0;
  std::uint32_t slots = 1;
  std::uint32_t queue_slots = 0;
  std::uint64_t memory = 0;      ///< bytes jobs may reserve; 0: jobs asking for memory never fit
  std::vector<std::uint32_t> gpus; ///< device ids (at most 64)
  std::int64_t walltime_end_ms = 0; ///< 0: no end
  Symbol pool = 0; ///< jobs across nodes use nodes of one pool (its pilot); 0: none
};

struct Assignment {
  JobId job;
  AgentId node;
  std::vector<std::uint32_t> gpus; ///< device ids given to the job
  /// A job across nodes: every node it holds, with its slots there; `node` (the first) runs it.
  std::vector<std::pair<AgentId, std::uint32_t>> span;
};

class Scheduler {
public:
  Scheduler();

  /// Interns a string; the same string always gets the same symbol. "" is 0.
  Symbol intern(std::string_view text);
  const std::string& name(Symbol symbol) const { return names_[symbol]; }

  /// Adds a node, or replaces the info of an existing one (keeping what it runs).
  void add_node(AgentId node, const NodeInfo& info);
  /// Removes a node. Jobs still placed on it stay so until released.
  void remove_node(AgentId node);
  /// Changes the depth of a node's launch queue (in slots).
  void set_queue_slots(AgentId node, std::uint32_t queue_slots);
  /// Stops or resumes giving a node new jobs (pilot draining or cancelled).
  void set_accepting(AgentId node, bool accepting);

  /// Queues a job at the back of its class.
  void enqueue(JobId job, const Requirements& req);
  /// Queues a job at the front of its class (a retried job going back in line first).
  void requeue_front(JobId job, const Requirements& req);
  /// Removes a queued job (cancelled, timed out). Precondition: the job is queued here.
  void remove_queued(JobId job);
  /// Records a job the caller placed itself (an agent reporting after a hub restart what it
  /// runs), so its resources count as used.
  void adopt(JobId job, AgentId node, const Requirements& req, const std::vector<std::uint32_t>& gpus);
  /// A job left its node: its resources are free again.
  void release(JobId job);

  /// Decides up to `max` assignments at time `now_ms`. Each returned job is no longer queued and
  /// holds its resources until release().
  std::vector<Assignment> schedule(std::size_t max, std::int64_t now_ms);

  std::size_t queued() const { return queued_; }
  /// Nodes held back for the first gang job that does not fit yet.
  std::size_t reserved() const { return reserved_.size(); }
  std::size_t assigned() const { return placements_.size(); }
  std::size_t classes() const { return live_classes_; }
  std::uint64_t slots_total() const;
  std::uint64_t slots_used() const;
  /// Slots of a node that no job holds (queued in its launch buffer counts as held); 0 for a
  /// node it does not know.
  std::uint32_t idle_slots(AgentId node) const;
  bool has_node(AgentId node) const { return nodes_.contains(node); }

private:
  struct ReqHash {
    std::size_t operator()(const Requirements& r) const;
  };
  /// A class's place in the order of decisions: higher priority first, then the older head.
  struct Key {
    std::int64_t neg_priority;
    std::uint64_t head;
    std::uint32_t idx;
    auto operator<=>(const Key&) const = default;
  };
  using Ordered = std::set<Key>;
  /// The classes one node looks at for one reason (its label, its host), split by the slots they
  /// need so a node with F free slots looks only at classes needing at most F.
  struct Bucket {
    std::vector<std::pair<std::uint32_t, Ordered>> by_slots; ///< sorted by slots
  };
  struct JobClass {
    Requirements req;
    std::deque<JobId> fifo;
    Key key{};
    bool live = false;
    /// Parked nodes have not been searched for it yet. A live class that is not fresh fits no
    /// parked node, and cannot until it drains: a node is parked only after it found that no
    /// live class fits it, and a parked node's capacity only shrinks.
    bool fresh = false;
  };
  enum class NodeState : std::uint8_t { Idle, Dirty, Parked };
  struct Node {
    NodeInfo info;
    std::uint32_t used_slots = 0;
    std::uint64_t used_memory = 0;
    std::uint64_t gpu_free = 0; ///< bit i: info.gpus[i] is free
    std::vector<std::pair<Symbol, std::uint32_t>> groups; ///< jobs per max_per_node group
    bool accepting = true;
    NodeState state = NodeState::Idle; ///< Idle: full or paused
    bool examined = false;             ///< in this call, looked at every class up to its queue
    std::uint32_t parked_free = 0;     ///< the parked lists it is in
    std::uint32_t pos_all = 0, pos_label = 0;
    bool reserved = false; ///< held for a gang job: takes nothing else
  };
  struct Placement {
    AgentId node;
    std::uint32_t slots;
    std::uint64_t memory;
    std::uint64_t gpu_mask;
    Symbol group;
    std::vector<std::pair<AgentId, std::uint32_t>> others; ///< a gang job's other nodes
  };
  struct GangKey {
    std::int64_t neg_priority;
    std::uint64_t job;
    auto operator<=>(const GangKey&) const = default;
  };
  /// Parked nodes by free slots (capped), for placing a new class without visiting every node.
  struct ParkedIndex {
    std::vector<std::vector<AgentId>> by_free;
  };

  std::uint32_t class_for(const Requirements& req, bool& created);
  Key key_of(std::uint32_t idx) const;
  template <typename F>
  void for_each_bucket(const Requirements& r, F&& fn);
  void index_class(std::uint32_t idx);
  void unindex_class(std::uint32_t idx);
  void rekey(std::uint32_t idx);
  void drop_class(std::uint32_t idx);
  /// Pops removed jobs off the head of a class. Returns false when that emptied (and dropped) it.
  bool skip_removed(std::uint32_t idx);
  /// The head of a class left: pops removed jobs, drops the class if empty, else re-sorts it.
  bool head_changed(std::uint32_t idx);
  /// Drops every removed job from the classes and the gang jobs at once: lazy removal must not
  /// keep jobs that will never reach a head (cancelled while no node can run them).
  void compact_removed();
  bool fits(const Requirements& r, const Node& node, std::uint32_t slot_limit, std::int64_t now) const;
  /// The best class of `bucket` that fits `node`, if it beats `best`.
  void consider(Bucket& bucket, const Node& node, std::uint32_t slot_limit, std::int64_t now,
                std::int64_t& best);
  /// Picks the next job for `node`, or returns -1. `local_only`: pinned and preferred classes.
  std::int64_t pick(Node& node, std::uint32_t slot_limit, std::int64_t now, bool local_only);
  void place(AgentId id, Node& node, std::uint32_t idx, std::vector<Assignment>& out);
  /// Something about the node changed: look at it in the next call.
  void mark_dirty(AgentId id, Node& node);
  void park(AgentId id, Node& node);
  void unpark(AgentId id, Node& node);
  /// A parked node that fits class `idx`, or none.
  Node* find_parked(const Requirements& r, std::int64_t now, AgentId& id);
  void place_fresh(std::size_t max, std::int64_t now, std::vector<Assignment>& out);
  /// Places the gang jobs that fit and reserves nodes for the first that does not.
  void place_gangs(std::size_t max, std::int64_t now, std::vector<Assignment>& out);
  /// Nodes of one pool for a gang job, best first; `fit`: only if they have the slots now.
  std::vector<std::pair<AgentId, std::uint32_t>> gang_nodes(const Requirements& r, std::int64_t now,
                                                            bool fit,
                                                            const std::vector<AgentId>& exclude);
  void set_reserved(std::vector<AgentId> nodes);
  void take_slots(AgentId id, Node& node, std::uint32_t slots);
  static std::uint32_t& group_count(Node& node, Symbol group);
  static std::uint32_t free_slots(const Node& node) {
    std::uint32_t limit = node.info.slots + node.info.queue_slots;
    return node.used_slots < limit ? limit - node.used_slots : 0;
  }

  std::vector<std::string> names_;
  std::unordered_map<std::string, Symbol> symbols_;

  std::vector<JobClass> classes_;
  std::vector<std::uint32_t> free_classes_;
  std::unordered_map<Requirements, std::uint32_t, ReqHash> class_index_;
  std::size_t live_classes_ = 0;
  std::unordered_map<Symbol, Bucket> by_label_;  ///< unpinned classes per label (0: any)
  std::unordered_map<Symbol, Bucket> pinned_;    ///< classes pinned to a host
  std::unordered_map<Symbol, Bucket> preferred_; ///< unpinned classes preferring a host
  std::vector<std::uint32_t> fresh_;             ///< classes with fresh set

  std::unordered_map<AgentId, Node> nodes_;
  std::unordered_map<Symbol, std::vector<AgentId>> node_by_name_;
  std::vector<AgentId> dirty_;
  ParkedIndex parked_all_;
  std::unordered_map<Symbol, ParkedIndex> parked_by_label_;
  std::unordered_map<JobId, Placement> placements_;
  std::unordered_set<JobId> removed_;
  std::map<GangKey, Requirements> gangs_;
  bool gangs_dirty_ = false; ///< capacity changed since the gang jobs were last tried
  std::vector<AgentId> reserved_;
  std::size_t queued_ = 0;
};

} // namespace sortie::scheduler
