// SPDX-License-Identifier: Apache-2.0
// The hub's durable store: SQLite in WAL mode, owned by one store thread (STYLE.md §5).
//
// Design. The event loop never touches SQLite or job output files. It hands the store WriteBatch
// objects; the store thread takes every batch queued since its last commit, applies them in one
// transaction (group commit), commits, and only then runs their completions, through the `post`
// function given at open, which places them on the loop. So a completion that acknowledges a
// submission runs after the data is durable. Output appends in a batch are written (pwrite at the
// chunk's offset, so a resent chunk is harmless) before the transaction, hence before any job
// state committed with them. Reads of output go through the same queue, so they see every write
// queued before them.
//
// Threads: open(), load() and close() run on the caller's thread before the loop starts or after
// it stopped; submit() and read_output() are called from the loop; everything else runs on the
// store thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sortie/job.hpp"
#include "sortie/result.hpp"

namespace sortie::store {

/// The newest schema this build writes (PRAGMA user_version).
inline constexpr int kSchemaVersion = 7;

struct SpecRow {
  std::uint64_t id = 0;
  std::string body; ///< a serialized pb::JobSpec
};

struct GroupRow {
  std::uint64_t id = 0;
  std::string name;
  std::int64_t created_ms = 0;
  std::uint64_t first_job = 0;
  std::uint64_t count = 0;
  std::string env; ///< a serialized pb::EnvList: the submission's exported environment
};

/// A run of new jobs sharing a spec: ids first_id..first_id+count-1, array indices
/// first_index + k * step (when is_array), all queued at submit_ms.
struct JobRun {
  std::uint64_t first_id = 0;
  std::uint64_t count = 0;
  std::uint64_t spec_id = 0;
  std::uint64_t group_id = 0;
  bool is_array = false;
  std::int64_t first_index = 0;
  std::int64_t step = 1;
  std::int64_t submit_ms = 0;
};

/// The whole mutable state of one job, written over the row on every update.
struct JobRow {
  std::uint64_t id = 0;
  std::uint64_t spec_id = 0;
  std::uint64_t group_id = 0;
  std::optional<std::int64_t> array_index;
  JobState state = JobState::Queued;
  std::uint32_t attempt = 0;
  std::uint64_t agent_id = 0;
  std::optional<int> exit_code;
  std::optional<int> signal;
  std::int64_t submit_ms = 0;
  std::int64_t start_ms = 0;
  std::int64_t end_ms = 0;
  std::vector<StateChange> history; ///< transitions after the initial "queued"
  ResourceUsage usage;
  std::string reason;
  std::string limits; ///< how memory was enforced ("cgroup v1", ...), empty if not limited
  std::vector<std::uint32_t> gpus;
};

struct AgentRow {
  std::uint64_t id = 0;
  std::uint64_t pilot_id = 0;
  std::string node;
  std::string hostname;
  int pid = 0;
  std::uint32_t slots = 0;
  std::string label;
  bool connected = false;
  std::int64_t registered_ms = 0;
  std::string session_key; ///< proves a reconnecting agent is the one registered
  std::uint64_t epoch = 0; ///< registrations of this agent so far
};

struct PilotRow {
  std::uint64_t id = 0;
  std::string spec; ///< a serialized pb::PilotSpec
  std::string state;
  std::int64_t created_ms = 0;
  std::int64_t ended_ms = 0;
  std::string reason;
  std::string batch_id; ///< the batch system's job id (slurm, sge)
};

struct ResourceRow {
  std::string name;
  std::string spec; ///< a serialized pb::ResourceSpec
};

/// A function task (docs/engines.md). Payloads and results are shared, not copied, between the
/// hub's memory and the batch: they may be large.
struct TaskRow {
  enum class Write : std::uint8_t {
    Insert, ///< a new task: every column
    Update, ///< state, engine, attempts, start (the payload stays)
    Finish, ///< state, end, result, error; the payload is dropped
    Folded, ///< taken into an earlier row of the same task in its transaction: nothing to write
  };
  Write write = Write::Insert;
  std::uint64_t id = 0;
  int state = 0; ///< 0 queued, 1 running, 2 done, 3 failed, 4 lost, 5 its argument arriving
  std::string handler;
  std::string label;
  std::shared_ptr<const std::string> payload;
  std::uint64_t target_engine = 0;
  std::uint64_t engine_id = 0;
  std::uint32_t retries = 0;
  std::uint32_t attempts = 0;
  std::int64_t timeout_ms = 0;
  std::int32_t priority = 0;
  std::int64_t submit_ms = 0;
  std::int64_t start_ms = 0;
  std::int64_t end_ms = 0;
  std::shared_ptr<const std::string> result;
  std::string error_type;
  std::string error_message;
  std::string traceback;
  std::shared_ptr<const std::string> output;
  std::uint64_t payload_size = 0; ///< a large argument, in its value file (payload empty)
  std::uint64_t result_size = 0;  ///< a large result, in its value file (result empty)
  /// Read without values (TaskQuery::values false): the lengths of the inline payload and result.
  std::uint64_t payload_bytes = 0, result_bytes = 0;
};

/// Which tasks Store::read_tasks reads: the hub holds only the tasks that have not ended (and
/// a few that just did) in memory, and reads the others back from the store.
struct TaskQuery {
  /// These tasks, in this order (those that exist). Empty: the `newest` tasks, in id order, and
  /// the count of all.
  std::vector<std::uint64_t> ids;
  std::uint64_t newest = 0;
  /// With their payload, result and output; else only the lengths (payload_bytes, result_bytes).
  bool values = true;
  /// Stops once the rows read hold this many bytes of values (one row at least); the ids not
  /// reached go to TaskRows::unread. 0: no limit.
  std::size_t max_bytes = 0;
};

struct TaskRows {
  std::vector<TaskRow> rows;
  std::vector<std::uint64_t> unread;
  std::uint64_t count = 0; ///< with `newest`: how many tasks the store has
};

/// The task_retention sweep (WriteBatch::task_sweep): forgets at most `limit` tasks that ended
/// before `before_ms`, with their result files, and says when the oldest one left ended.
struct TaskSweep {
  std::int64_t before_ms = 0;
  std::size_t limit = 10'000;
  std::uint64_t forgotten = 0;    ///< out
  std::int64_t oldest_end_ms = 0; ///< out: 0 when no ended task is left
};

/// A piece of a large task value (part 0: argument, 1: result), written to its value file
/// before the transaction that records it.
struct ValueWrite {
  std::uint64_t task_id = 0;
  int part = 0;
  std::int64_t offset = 0;
  std::string data;
};

/// An engine: which job (attempt, MPI rank) it is.
struct EngineRow {
  std::uint64_t id = 0;
  std::uint64_t job_id = 0;
  std::uint32_t attempt = 0;
  std::uint32_t rank = 0;
  std::uint32_t size = 1;
};

/// What became of an output write, filled in by the store thread before the batch's
/// completions run: on failure, the error and the data back (so the hub can try again).
struct OutputStatus {
  int error = 0; ///< errno of the failed write (ENOSPC, ...); 0: written
  std::string data;
};

struct OutputWrite {
  std::uint64_t job_id = 0;
  std::uint32_t attempt = 0;
  int stream = 0; ///< 0 stdout, 1 stderr
  std::int64_t offset = 0;
  std::string data;
  std::shared_ptr<OutputStatus> status; ///< optional
};

struct WriteBatch {
  std::vector<SpecRow> specs;
  std::vector<GroupRow> groups;
  std::vector<JobRun> job_runs;
  std::vector<JobRow> job_updates;
  std::vector<AgentRow> agents;
  std::vector<PilotRow> pilots;
  std::vector<ResourceRow> resources;
  std::vector<std::string> resources_removed;
  std::vector<OutputWrite> output;
  std::vector<TaskRow> tasks;
  std::vector<std::uint64_t> tasks_forgotten;
  std::vector<ValueWrite> values;
  /// Value files to remove once the batch is committed: (task, part).
  std::vector<std::pair<std::uint64_t, int>> values_removed;
  std::vector<EngineRow> engines;
  /// Filled in by the store thread before the batch's completions run (null: no sweep).
  std::shared_ptr<TaskSweep> task_sweep;
  /// The next task and engine ids (0: not written).
  std::uint64_t next_task_id = 0, next_engine_id = 0;
  /// Rows to delete (job_retention, `job forget`); a forgotten job's output files are removed
  /// once the deletion is committed.
  std::vector<std::uint64_t> jobs_forgotten;
  std::vector<std::uint64_t> specs_forgotten;
  std::vector<std::uint64_t> groups_forgotten;
  /// Job and group ids below these may be handed out: written to Options::ids_file before the
  /// transaction (0: unchanged), so ids survive even the loss of the whole store.
  std::uint64_t reserve_job_ids = 0, reserve_group_ids = 0;
  /// The next job, spec and group ids, written with forgotten rows (0: not written).
  std::uint64_t next_job_id = 0, next_spec_id = 0, next_group_id = 0;
  /// Run on the loop after the commit (with its error if the transaction failed; the batch is
  /// then rolled back as a whole, output already written stays).
  std::vector<std::function<void(const Result<void>&)>> on_commit;

  bool empty() const {
    return specs.empty() && groups.empty() && job_runs.empty() && job_updates.empty() &&
           agents.empty() && pilots.empty() && resources.empty() && resources_removed.empty() &&
           output.empty() && on_commit.empty() && jobs_forgotten.empty() &&
           specs_forgotten.empty() && groups_forgotten.empty() && tasks.empty() &&
           tasks_forgotten.empty() && engines.empty() && values.empty() &&
           values_removed.empty() && !task_sweep && next_task_id == 0 &&
           next_engine_id == 0 && reserve_job_ids == 0 &&
           reserve_group_ids == 0;
  }
};

/// Everything the hub needs at start.
struct LoadedState {
  std::vector<SpecRow> specs;
  std::vector<GroupRow> groups;
  std::vector<JobRow> jobs; ///< ordered by id
  std::vector<AgentRow> agents;
  std::vector<PilotRow> pilots;
  std::vector<ResourceRow> resources;
  std::vector<TaskRow> tasks; ///< those that have not ended, ordered by id
  std::int64_t oldest_task_end_ms = 0; ///< when the oldest ended task ended (0: none)
  std::vector<EngineRow> engines;
  std::uint64_t next_task_id = 0, next_engine_id = 0; ///< from the counters (0: none)
  /// The id reservation found in Options::ids_file (0: none).
  std::uint64_t reserved_job_ids = 0, reserved_group_ids = 0;
  /// The lowest ids never used, as far as forgotten rows are concerned (0: none forgotten).
  std::uint64_t next_job_id = 0, next_spec_id = 0, next_group_id = 0;
};

struct Options {
  std::filesystem::path db_path;
  std::filesystem::path output_dir;
  bool synchronous_full = true; ///< fsync every commit (survives power loss), else at checkpoints
  std::filesystem::path ids_file; ///< the id reservation (WriteBatch::reserve_job_ids); "" none
  /// Start with a write-ahead log of its full size (zeros), so that commits overwrite it rather
  /// than grow it: the hub's store; not worth its megabytes for a store opened briefly.
  bool full_size_log = false;
};

/// The ids a hub may have handed out: from its reservation file (zeros when there is none).
struct IdFloors {
  std::uint64_t job = 0;
  std::uint64_t group = 0;
};
Result<IdFloors> read_id_reservation(const std::filesystem::path& path);
Result<void> write_id_reservation(const std::filesystem::path& path, const IdFloors& floors);

/// Path of an attempt's output file: <output_dir>/<job>/<attempt>.out|.err
std::filesystem::path output_path(const std::filesystem::path& output_dir,
                                  std::uint64_t job_id,
                                  std::uint32_t attempt,
                                  int stream);

/// Where a large task value lives: <output_dir>/tasks/<task>.arg|.res (part 0, 1).
std::filesystem::path value_path(const std::filesystem::path& output_dir, std::uint64_t task_id,
                                 int part);

/// PRAGMA integrity_check of a store no hub has open: the problems found, at most `limit`
/// (none: intact). Fails only when the file cannot be opened at all.
Result<std::vector<std::string>> check_store_file(const std::filesystem::path& db_path, int limit);

/// What recover_store could copy: per table, rows copied and rows that could not be read.
struct RecoveryReport {
  struct Table {
    std::string name;
    std::uint64_t copied = 0;
    std::uint64_t unreadable = 0;
  };
  std::vector<Table> tables;
  std::uint64_t next_job_id = 1; ///< where the recovered store's job ids go on
};

/// Copies every readable row of a damaged store into a new store at `out` (created with the
/// current schema; must not exist), row by row so that a damaged page costs only its own rows.
/// `floors`: the next job and group ids start at least there (the hub's reservation), so that
/// ids of lost rows are never handed out again.
Result<RecoveryReport> recover_store(const std::filesystem::path& damaged,
                                     const std::filesystem::path& out,
                                     const IdFloors& floors = {});

class Store {
public:
  using Post = std::function<void(std::function<void()>)>;

  /// Opens (creating or migrating) the database. Fails with a clear error when the file is not
  /// a sortie store or was written by a newer sortie.
  static Result<std::unique_ptr<Store>> open(const Options& options);
  ~Store();

  /// Reads the whole state. Call before start().
  Result<LoadedState> load();

  /// Starts the store thread; completions are delivered through `post`.
  void start(Post post);
  /// Queues a batch. Loop thread.
  void submit(WriteBatch batch);
  /// Reads up to `max` bytes of an attempt's output from `offset`; `done` runs on the loop with
  /// the bytes (empty at the end). Loop thread.
  void read_output(std::uint64_t job_id,
                   std::uint32_t attempt,
                   int stream,
                   std::int64_t offset,
                   std::size_t max,
                   std::function<void(Result<std::string>)> done);
  /// Reads up to `max` bytes of a large task value (value_path) from `offset`. Loop thread.
  void read_value(std::uint64_t task_id, int part, std::int64_t offset, std::size_t max,
                  std::function<void(Result<std::string>)> done);
  /// Reads tasks' rows after the batches submitted so far. Loop thread.
  void read_tasks(TaskQuery query, std::function<void(Result<TaskRows>)> done);
  /// Finishes queued work and stops the thread. Completions queued by it still run if the loop
  /// still runs.
  void stop();

  /// Batches committed and transactions failed so far (for status and tests).
  std::uint64_t commits() const;

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

private:
  struct Impl;
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// Applies migrations up to `target` on a database file (for tests of older schema versions).
Result<void> create_schema_version_for_test(const std::filesystem::path& db_path, int target);

} // namespace sortie::store
