// SPDX-License-Identifier: Apache-2.0
// Engines and their tasks (docs/engines.md, docs/protocol/05-tasks.md). An engine is a job of
// kind "engine" that, once running, registers through its agent (EngineReady, routed); tasks are
// calls clients submit (TaskSubmit), kept in the store from their acknowledgement to their
// forgetting, and in memory until they ended (and a few thousand of the latest after): what a
// client asks of older ones is read back from the store, and so are the arguments of tasks
// already sent and of queued ones beyond kQueuedArgBytes, when they are sent (again). The
// chooser (scheduler/chooser.hpp) decides which engine runs what; a task is sent
// at once, with "running on engine E" in the same turn's batch; a restarted hub hands out no
// queued task until the engines from before are back (and have said what they hold) or gone, so
// none runs on two engines at once. An engine whose job ends loses its tasks: run again
// elsewhere while the call's retries allow, else LOST (EngineLost). Results are pushed to the
// clients watching them once they are durable. Takes EngineReady and TaskDone from engines,
// TaskSubmit, TaskWatch, TaskListRequest, TaskForget and EngineListRequest from clients.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <queue>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "hub/jobs.hpp"
#include "hub/room.hpp"
#include "hub/router.hpp"
#include "scheduler/chooser.hpp"
#include "store/store.hpp"

namespace sortie::hub {

/// Stored as these numbers. Uploading: its large argument is still arriving from its client.
enum class TaskState : std::uint8_t {
  Queued = 0,
  Running = 1,
  Done = 2,
  Failed = 3,
  Lost = 4,
  Uploading = 5,
};

/// One task in memory: from its submission until it ended and that is committed (with its
/// payload until it ends); then a few more of the latest ended ones, for the clients that ask
/// for them at once. The others are read back from the store when asked for.
struct Task {
  std::uint64_t id = 0;
  TaskState state = TaskState::Queued;
  std::string handler;
  std::string label;
  std::shared_ptr<const std::string> payload;
  std::uint64_t target = 0; ///< direct: the only engine that may run it
  std::uint64_t engine = 0; ///< running on, or ran on
  std::uint32_t retries = 0;
  std::uint32_t attempts = 0;
  std::int64_t timeout_ms = 0;
  std::int32_t priority = 0;
  std::int64_t submit_ms = 0, start_ms = 0, end_ms = 0;
  std::shared_ptr<const std::string> result;
  std::shared_ptr<const std::string> output;
  std::string error_type, error_message, traceback;
  /// Large values (over kInlineValue) live in value files, not here: their sizes.
  std::uint64_t payload_size = 0, result_size = 0;
  /// Its inline argument's bytes when only the store holds it (`payload` null): a stored task
  /// beyond Tasks::kQueuedArgBytes, or one already sent. Read back when it is sent (again).
  std::uint64_t in_store = 0;
  /// Bytes of a large value stored so far: the argument while Uploading, the result while
  /// Running.
  std::uint64_t received = 0;
  /// Its submission is committed (its id is durable): its result may be pushed from then on.
  bool stored = false;
  /// Never stored (TaskCall.transient): forgotten once its result is pushed (05-tasks.md §5.8).
  bool transient = false;
  /// It ended, and that is committed: it may leave memory (Tasks::evict).
  bool settled = false;
  bool ended() const {
    return state == TaskState::Done || state == TaskState::Failed || state == TaskState::Lost;
  }
};

/// An engine the hub knows: up (its link through its agent is there) or waiting to come back.
struct Engine {
  std::uint64_t id = 0;
  JobId job;
  std::uint32_t attempt = 0, rank = 0, size = 1;
  AgentId agent;
  std::uint64_t link = 0; ///< its link at its agent: the route to it (0: not known yet)
  /// Its direct link to the hub (05-tasks.md §5.9), when it came that way: frames go there.
  std::shared_ptr<Peer> direct;
  std::string label, node, kind;
  int pid = 0;
  std::int64_t started_ms = 0;
  std::uint64_t tasks_done = 0;
  std::unordered_set<std::uint64_t> running; ///< tasks sent (or being sent) to it
  bool up = false;
  /// Timed-out tasks it is still busy with (not interrupted): until their results come, it
  /// takes nothing new, so no task waits behind them.
  std::uint32_t stuck = 0;
  /// The pace of its recent tasks, which sets its prefetch.
  scheduler::PrefetchPace pace;
};

/// How a task's state goes on the wire (TaskResult).
pb::TaskResult::State wire_state(TaskState s);

class Tasks {
public:
  Tasks(Core& core, Jobs& jobs);
  void register_with(Router& router);
  /// From the store, after the jobs were loaded.
  void load(store::LoadedState& state);
  /// Task timeouts and the task_retention sweep.
  void tick();
  std::size_t engines_up() const;

private:
  static constexpr std::size_t kMaxCalls = 100'000;       // per TaskSubmit
  static constexpr std::size_t kPushQueueLimit = 8u << 20; // bytes queued on a client: pushes wait
  static constexpr std::size_t kFrameBudget = 16u << 20;  // bytes of results per TaskResults frame
  static constexpr std::uint32_t kMaxRanks = 4096;
  // Live output: the tail kept per running task for late followers, and the largest piece taken.
  static constexpr std::size_t kLiveTail = 64u << 10;
  static constexpr std::size_t kMaxOutputPiece = 1u << 20;
  // Large values travel in pieces of this size, at most kWindow bytes unacknowledged.
  static constexpr std::size_t kChunk = 1u << 20;
  static constexpr std::uint64_t kWindow = 4u << 20;
  static constexpr std::uint64_t kMaxValue = 4ull << 30; // 4 GiB
  // After a restart, engines have their agents' reconnect window and this much more to come back.
  static constexpr std::int64_t kRejoinMarginMs = 5'000;
  // Ended tasks held in memory after their end is committed, at most (the others are read back
  // from the store): their count, and the bytes of their results, output and errors.
  static constexpr std::size_t kHeldEnded = 4096;
  static constexpr std::size_t kHeldEndedBytes = 16u << 20;
  // Results read back from the store for one client at a time: ids per read, bytes per read.
  static constexpr std::size_t kFetchIds = 1024;
  // Inline arguments of queued tasks held in memory, at most: beyond it, those of stored tasks
  // stay only in the store and are read back when the chooser gives them to an engine.
  static constexpr std::size_t kQueuedArgBytes = 64u << 20;

  // Engines
  void handle_ready(const Sender& from, pb::EngineReady& ready);
  void handle_done(const Sender& from, pb::TaskDone& done);
  /// What a running task printed: kept (its tail) and sent on to the links following it.
  void handle_output(const Sender& from, pb::TaskOutput& out);
  /// A task the engine was busy with left it (its late result came, or it never had it).
  void engine_freed(Engine& e, std::uint64_t task);
  /// The engine a routed frame came from (null: none registered on that link).
  Engine* engine_of(const Sender& from);
  /// Sends `env` down to the engine through its agent (dropped if that link is gone).
  void send_to(const Engine& e, pb::Envelope& env);
  /// The engine's job ended or was requeued: its tasks are run again or lost.
  void engine_gone(std::uint64_t id, const std::string& why);
  void job_ended(const Job& job);
  /// One result from an engine: finishes the task if it runs there. True if it did.
  bool accept_result(Engine& e, pb::TaskResult& r);

  // Tasks
  void handle_submit(const Sender& from, pb::TaskSubmit& req);
  void handle_watch(const Sender& from, const pb::TaskWatch& req);
  void handle_list(const Sender& from, const pb::TaskListRequest& req);
  void handle_forget(const Sender& from, const pb::TaskForget& req);
  void handle_engines(const Sender& from, const pb::EngineListRequest& req);
  Task* find(std::uint64_t id);
  /// A task as the store has it (read back once it left memory).
  static Task from_row(store::TaskRow&& row);
  /// Erases a task from memory, keeping the count of ended ones right.
  void erase(std::unordered_map<std::uint64_t, Task>::iterator it);
  /// Forgets an ended task: in memory and in the store (with its large result's file).
  void forget(std::uint64_t id, std::uint64_t result_size);
  /// A task ended: held until its end is committed (then settled), for at most kHeldEnded.
  void ended(Task& t);
  /// Settles the task once the batch being gathered is committed.
  void settle_after_commit(std::uint64_t id);
  /// Their ends are committed (or failed to be: then they are written again).
  void settle(const std::vector<std::uint64_t>& ids, const Result<void>& committed);
  /// Ended tasks beyond kHeldEnded or kHeldEndedBytes leave memory, oldest first.
  void evict();
  /// The task_retention sweep: in memory, and in the store from its oldest ended task on.
  void sweep(std::int64_t now);
  void enqueue(Task& t);
  /// A queued task leaves the queue (`chosen`: the chooser gave it to an engine already).
  void unqueue(Task& t, bool chosen = false);
  /// A stored task's argument leaves memory (the store has it); true if it held one.
  static bool shed(Task& t);
  /// Sends the tasks in to_read_ once their arguments are read back from the store.
  void read_arguments();
  /// Adds a TaskRun of `t` with its argument `payload` (null: none inline) to `env`.
  static void add_run(pb::Envelope& env, const Task& t, const std::string* payload);
  /// A task whose submission failed to commit: gone, wherever it was.
  void drop_unstored(std::uint64_t id);
  /// A running task goes back to the queue; `charge`: its engine died while it ran.
  void requeue(Task& t, bool charge, const std::string& why);
  void finish(Task& t, TaskState to, pb::TaskResult* r, std::string error_type = {},
              std::string message = {});
  void write(const Task& t, store::TaskRow::Write how, When when = When::ThisTurn);
  /// Runs the chooser once this turn.
  void request_dispatch();
  void dispatch();
  /// After a restart: true while engines that may hold tasks are not back yet.
  bool holding();
  /// A queued task an engine says it holds (or has a result for) runs there.
  void claim(Task& t, Engine& e);

  // Large values (05-tasks.md §5.5)
  void handle_chunk(const Sender& from, pb::ValueChunk& chunk);
  void handle_chunk_ack(const Sender& from, const pb::ValueChunkAck& ack);
  /// Sends a large argument's next pieces to the engine running its task, within the window.
  void pump_download(std::uint64_t task);
  /// Sends the next pieces of large results to a client while its link keeps up.
  void pump_client(const Peer* key);

  // Results to clients
  void notify(const std::vector<std::uint64_t>& ids);
  /// Drops an ended transient task (its result pushed, or no one left to push it to).
  void forget_transient(std::uint64_t id);
  /// notify() once this turn's other frames are handled: results that come together go together.
  void notify_soon(const std::vector<std::uint64_t>& ids);
  void push_later(const std::shared_ptr<Peer>& peer, std::uint64_t id);
  void flush_pushes(const Peer* peer);
  /// Reads the results of tasks that left memory from the store, for a client's pushes.
  void fetch_results(const Peer* key);
  /// The tasks `req` lists, once those that left memory are read back (`rows`).
  void reply_list(const Sender& from, const pb::TaskListRequest& req,
                  std::vector<store::TaskRow> rows, std::uint64_t stored);
  static void fill_result(const Task& t, pb::TaskResult& r);

  Core& core_;
  Jobs& jobs_;
  Router* router_ = nullptr; ///< where direct links' frames go (register_with)
  scheduler::TaskChooser chooser_;
  std::unordered_map<std::uint64_t, Task> tasks_;
  std::unordered_map<std::uint64_t, Engine> engines_;
  std::unordered_map<JobId, std::vector<std::uint64_t>> engines_of_job_;
  /// (agent, its link to the engine) -> engine: who sent a routed frame.
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> links_;
  std::uint64_t next_task_id_ = 1, next_engine_id_ = 1;
  /// The next task id the store has: transient tasks take ids below it without a write.
  std::uint64_t reserved_task_ids_ = 1;
  static constexpr std::uint64_t kTransientIdBlock = 4096;
  bool dispatch_posted_ = false;
  /// Bytes of the inline arguments of queued tasks held in memory (kQueuedArgBytes).
  std::size_t queued_bytes_ = 0;
  /// Task rows the last batch took: a new batch makes room for as many at once, rather than
  /// growing (and moving its rows) a dozen times.
  std::size_t rows_hint_ = 0;
  /// Tasks given to an engine whose arguments are being read back from the store (with the
  /// attempt each was given as: an older one is not sent).
  struct ToRead {
    std::uint64_t task = 0;
    std::uint32_t attempts = 0;
  };
  std::deque<ToRead> to_read_;
  bool reading_arguments_ = false;
  std::unordered_set<std::uint64_t> awaited_; ///< engines from before a restart, not back yet
  std::int64_t hold_dispatch_until_ = 0;      ///< monotonic ms; 0: not holding
  /// Running tasks with a timeout, earliest deadline first (monotonic... wall ms, task).
  std::priority_queue<std::pair<std::int64_t, std::uint64_t>,
                      std::vector<std::pair<std::int64_t, std::uint64_t>>, std::greater<>>
      deadlines_;
  /// Ended tasks in memory, in the order they ended (ids of those gone since stay until popped);
  /// how many are in memory, and the bytes of their results, output and errors.
  std::deque<std::uint64_t> ended_;
  std::size_t ended_held_ = 0, ended_bytes_ = 0;
  /// Tasks that ended into the batch being gathered (durable.flushes() was ending_flush_ then).
  std::shared_ptr<std::vector<std::uint64_t>> ending_;
  std::uint64_t ending_flush_ = 0;
  /// When the oldest ended task (in memory or in the store) ended: 0 none. While a sweep is
  /// being committed, the earliest end since it was made.
  std::int64_t oldest_end_ms_ = 0, ended_since_sweep_ = 0;
  bool sweeping_ = false;
  /// Clients waiting for tasks' results.
  std::unordered_map<std::uint64_t, std::vector<std::weak_ptr<Peer>>> watchers_;
  std::vector<std::uint64_t> to_notify_; ///< results to push at the end of this turn
  /// The output of a running task so far: its last kLiveTail bytes (for links that begin to
  /// follow it late) and where they end.
  struct Live {
    std::string tail;
    std::uint64_t end = 0;
  };
  std::unordered_map<std::uint64_t, Live> live_;
  /// Links following tasks' output, by task (until the task ends).
  std::unordered_map<std::uint64_t, std::vector<std::weak_ptr<Peer>>> followers_;
  /// Sends output to one follower, unless its link is behind (then it sees a gap).
  static void send_output(Peer& peer, std::uint64_t task, std::uint64_t offset,
                          std::string_view data);
  /// A large argument on its way to the engine running its task.
  struct Download {
    std::uint64_t engine = 0;
    std::uint64_t total = 0, requested = 0, acked = 0;
  };
  std::unordered_map<std::uint64_t, Download> downloads_;
  /// Clients uploading large arguments, by task.
  std::unordered_map<std::uint64_t, std::weak_ptr<Peer>> uploaders_;
  struct Stream { ///< a large result on its way to a client
    std::uint64_t task = 0, total = 0, offset = 0;
  };
  struct Pushes {
    std::weak_ptr<Peer> peer;
    std::deque<std::uint64_t> ids;
    bool waiting = false; ///< for its link to drain
    std::deque<Stream> streams;
    bool reading = false;        ///< a piece of streams.front() is being read
    bool stream_waiting = false; ///< for its link to drain, to send more pieces
    std::deque<std::uint64_t> fetch; ///< tasks that left memory: read back from the store
    bool fetching = false;           ///< some of them are being read
  };
  std::unordered_map<const Peer*, Pushes> pushes_;
  /// The pushes waiting for a client whose link is still there (`peer`), or null (dropped).
  Pushes* live_pushes(const Peer* key, std::shared_ptr<Peer>& peer);
};

} // namespace sortie::hub
