// SPDX-License-Identifier: Apache-2.0
// The scheduler: a pure library that assigns queued jobs to nodes (no sockets, no SQLite, no
// clock of its own; the caller passes the time). The hub feeds it events and applies the
// assignments it returns.
//
// Design. A job's needs are data (Requirements); jobs with equal Requirements form a class with
// its own FIFO. A class exists only while it holds queued jobs, and is listed in an index by what
// can run it: its label (any node with that label, or any node at all), the hosts it is pinned
// to, the hosts it prefers. A decision for a node looks only at the heads of the classes listed
// for it, never along a queue: its cost does not grow with the number of queued jobs. Among the
// classes whose head fits, the highest priority wins, then the oldest job (smallest id): the queue
// is FIFO within a priority.
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
#pragma once

#include <cstdint>
#include <deque>
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
  bool operator==(const Requirements&) const = default;
};

struct NodeInfo {
  Symbol name = 0;
  Symbol label = 0;
  std::uint32_t slots = 1;
  std::uint32_t queue_slots = 0;
  std::uint64_t memory = 0;      ///< bytes jobs may reserve; 0: jobs asking for memory never fit
  std::vector<std::uint32_t> gpus; ///< device ids (at most 64)
  std::int64_t walltime_end_ms = 0; ///< 0: no end
};

struct Assignment {
  JobId job;
  AgentId node;
  std::vector<std::uint32_t> gpus; ///< device ids given to the job
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
  std::size_t assigned() const { return placements_.size(); }
  std::size_t classes() const { return live_classes_; }
  std::uint64_t slots_total() const;
  std::uint64_t slots_used() const;
  bool has_node(AgentId node) const { return nodes_.contains(node); }

private:
  struct ReqHash {
    std::size_t operator()(const Requirements& r) const;
  };
  struct JobClass {
    Requirements req;
    std::deque<JobId> fifo;
    bool live = false;
  };
  struct Node {
    NodeInfo info;
    std::uint32_t used_slots = 0;
    std::uint64_t used_memory = 0;
    std::uint64_t gpu_free = 0; ///< bit i: info.gpus[i] is free
    std::vector<std::pair<Symbol, std::uint32_t>> groups; ///< jobs per max_per_node group
    bool accepting = true;
    bool listed = false;
  };
  struct Placement {
    AgentId node;
    std::uint32_t slots;
    std::uint64_t memory;
    std::uint64_t gpu_mask;
    Symbol group;
  };
  using ClassList = std::vector<std::uint32_t>;

  std::uint32_t class_for(const Requirements& req);
  void index_class(std::uint32_t idx);
  void drop_class(std::uint32_t idx);
  void skip_removed(JobClass& c);
  bool fits(const JobClass& c, const Node& node, std::uint32_t slot_limit, std::int64_t now) const;
  /// Considers the classes of `list` for `node`; keeps the best fitting one in `best`.
  void consider(ClassList& list, const Node& node, std::uint32_t slot_limit, std::int64_t now,
                std::int64_t& best);
  /// Picks the next job for `node`, or returns -1. `local_only`: pinned and preferred classes.
  std::int64_t pick(Node& node, std::uint32_t slot_limit, std::int64_t now, bool local_only);
  void place(AgentId id, Node& node, std::uint32_t idx, std::vector<Assignment>& out);
  void list_if_free(AgentId id, Node& node);
  static std::uint32_t& group_count(Node& node, Symbol group);

  std::vector<std::string> names_;
  std::unordered_map<std::string, Symbol> symbols_;

  std::vector<JobClass> classes_;
  std::vector<std::uint32_t> free_classes_;
  std::unordered_map<Requirements, std::uint32_t, ReqHash> class_index_;
  std::size_t live_classes_ = 0;
  std::unordered_map<Symbol, ClassList> by_label_;  ///< unpinned classes per label (0: any)
  std::unordered_map<Symbol, ClassList> pinned_;    ///< classes pinned to a host
  std::unordered_map<Symbol, ClassList> preferred_; ///< unpinned classes preferring a host

  std::unordered_map<AgentId, Node> nodes_;
  std::vector<AgentId> free_list_;
  std::unordered_map<JobId, Placement> placements_;
  std::unordered_set<JobId> removed_;
  std::size_t queued_ = 0;
};

} // namespace sortie::scheduler
