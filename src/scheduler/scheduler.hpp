// SPDX-License-Identifier: Apache-2.0
// The scheduler: a pure library that assigns queued jobs to nodes' free slots (no sockets, no
// SQLite, no clock). The hub feeds it events and applies the assignments it returns.
//
// Design. Jobs with equal Requirements form a class with its own FIFO, so a decision looks at the
// heads of the classes a node can take (few), never along the queue (many): the cost per decision
// does not grow with the number of queued jobs. Across classes the oldest head (smallest job id)
// goes first, which makes the whole queue FIFO among the jobs a node can run.
//
// Each node has `slots` to run jobs in and `queue_slots` more for its launch queue: work handed
// out ahead so the agent starts the next job the moment one ends, without a round trip. Idle
// slots anywhere are filled before any launch queue (two passes), so prefetching never leaves a
// node idle while another holds queued work.
//
// Rules: a job with a label runs only on nodes with that exact label; a job without a label runs
// on any node; a job needs `slots` slots on one node.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "sortie/ids.hpp"

namespace sortie::scheduler {

struct Requirements {
  std::string label;
  std::uint32_t slots = 1;
  bool operator==(const Requirements&) const = default;
};

struct NodeInfo {
  std::string label;
  std::uint32_t slots = 1;
  std::uint32_t queue_slots = 0;
};

struct Assignment {
  JobId job;
  AgentId node;
};

class Scheduler {
public:
  /// Adds a node (an agent) with free capacity. Adding an existing node replaces its info.
  void add_node(AgentId node, const NodeInfo& info);
  /// Removes a node. Jobs still assigned to it stay assigned until released.
  void remove_node(AgentId node);
  /// Changes the depth of a node's launch queue (in slots).
  void set_queue_slots(AgentId node, std::uint32_t queue_slots);
  /// Stops or resumes giving a node new jobs (pilot draining, agent disconnected).
  void set_accepting(AgentId node, bool accepting);

  /// Queues a job at the back of its class.
  void enqueue(JobId job, const Requirements& req);
  /// Queues a job at the front of its class (a lost job going back in line first).
  void requeue_front(JobId job, const Requirements& req);
  /// Removes a queued job (cancelled). Precondition: the job is queued here.
  void remove_queued(JobId job);
  /// Records that the caller placed `job` on `node` itself (an agent reconnecting after a hub
  /// restart reports what it runs), so its slots count as used.
  void adopt(JobId job, AgentId node, std::uint32_t slots);
  /// A job left its node (finished, killed, lost): its slots are free again.
  void release(JobId job);

  /// Decides up to `max` assignments. Each returned job is no longer queued and holds its slots
  /// on its node until release().
  std::vector<Assignment> schedule(std::size_t max);

  std::size_t queued() const { return queued_; }
  std::size_t assigned() const { return assigned_.size(); }
  std::uint64_t slots_total() const;
  std::uint64_t slots_used() const;
  bool has_node(AgentId node) const { return nodes_.contains(node); }

private:
  struct JobClass {
    Requirements req;
    std::deque<JobId> fifo;
  };
  struct Node {
    NodeInfo info;
    std::uint32_t used = 0; ///< slots of jobs assigned here (running or in the launch queue)
    bool accepting = true;
    bool listed = false; ///< present in free_list_
  };
  struct Placement {
    AgentId node;
    std::uint32_t slots;
  };

  std::uint32_t class_of(const Requirements& req);
  struct Popped {
    JobId job;
    std::uint32_t slots = 0;
  };
  /// Pops the oldest live job that needs at most `max_slots` (and at most `node_slots`, the
  /// node's size) on a node with `label`; an invalid job when none fits.
  Popped pop_for(const std::string& label, std::uint32_t max_slots, std::uint32_t node_slots);
  void list_if_free(AgentId id, Node& node);
  /// Drops cancelled jobs from the head of a class.
  void skip_removed(JobClass& c);

  std::vector<JobClass> classes_;
  std::unordered_map<std::string, std::vector<std::uint32_t>> classes_by_label_;
  std::unordered_map<AgentId, Node> nodes_;
  std::vector<AgentId> free_list_;
  std::unordered_map<JobId, Placement> assigned_;
  std::unordered_set<JobId> removed_;
  std::size_t queued_ = 0;
};

} // namespace sortie::scheduler
