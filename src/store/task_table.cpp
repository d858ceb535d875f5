// SPDX-License-Identifier: Apache-2.0
// The tasks table: writes, reads of ended tasks, the task_retention sweep, and loading.
#include "store/task_table.hpp"

#include <unordered_map>

#include <fmt/format.h>

namespace sortie::store {
namespace {

constexpr const char* kColumns =
    "id, state, handler, label, payload, target_engine, engine_id, retries, attempts, "
    "timeout_ms, priority, submit_ms, start_ms, end_ms, result, error_type, error_message, "
    "traceback, output, payload_size, result_size";
// The same columns with the values' lengths in place of the values.
constexpr const char* kColumnsSizes =
    "id, state, handler, label, length(payload), target_engine, engine_id, retries, attempts, "
    "timeout_ms, priority, submit_ms, start_ms, end_ms, length(result), error_type, "
    "error_message, traceback, NULL, payload_size, result_size";

std::shared_ptr<const std::string> shared(std::string v) {
  return v.empty() ? nullptr : std::make_shared<const std::string>(std::move(v));
}

/// A row of kColumns (values) or kColumnsSizes; false if its state is not one of ours.
bool read_row(const Statement& q, bool values, TaskRow& t) {
  t.id = static_cast<std::uint64_t>(q.i64(0));
  t.state = static_cast<int>(q.i64(1));
  t.handler = q.text(2);
  t.label = q.text(3);
  t.target_engine = static_cast<std::uint64_t>(q.i64(5));
  t.engine_id = static_cast<std::uint64_t>(q.i64(6));
  t.retries = static_cast<std::uint32_t>(q.i64(7));
  t.attempts = static_cast<std::uint32_t>(q.i64(8));
  t.timeout_ms = q.i64(9);
  t.priority = static_cast<std::int32_t>(q.i64(10));
  t.submit_ms = q.i64(11);
  t.start_ms = q.i64(12);
  t.end_ms = q.i64(13);
  t.error_type = q.text(15);
  t.error_message = q.text(16);
  t.traceback = q.text(17);
  t.payload_size = static_cast<std::uint64_t>(q.i64(19));
  t.result_size = static_cast<std::uint64_t>(q.i64(20));
  if (values) {
    t.payload = shared(q.text(4));
    t.result = shared(q.text(14));
    t.output = shared(q.text(18));
  } else {
    t.payload_bytes = static_cast<std::uint64_t>(q.i64(4));
    t.result_bytes = static_cast<std::uint64_t>(q.i64(14));
  }
  return t.state >= 0 && t.state <= 5;
}

std::size_t value_bytes(const TaskRow& t) {
  auto size = [](const std::shared_ptr<const std::string>& p) { return p ? p->size() : 0; };
  return size(t.payload) + size(t.result) + size(t.output) + t.traceback.size() + 64;
}

} // namespace

void TaskTable::prepare(sqlite3* db) {
  db_ = db;
  // Every column: an inserted row may carry what later rows of its transaction said (fold).
  insert_ = Statement(db, fmt::format("INSERT OR REPLACE INTO tasks({}) VALUES(?1, ?2, ?3, ?4, "
                                      "?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, "
                                      "?17, ?18, ?19, ?20, ?21)",
                                      kColumns)
                              .c_str());
  update_ = Statement(db, "UPDATE tasks SET state=?2, engine_id=?3, attempts=?4, "
                          "start_ms=?5 WHERE id=?1");
  finish_ = Statement(db, "UPDATE tasks SET state=?2, engine_id=?3, attempts=?4, "
                          "start_ms=?5, end_ms=?6, result=?7, error_type=?8, "
                          "error_message=?9, traceback=?10, output=?11, payload=NULL, "
                          "result_size=?12 WHERE id=?1");
  delete_ = Statement(db, "DELETE FROM tasks WHERE id=?1");
  upsert_engine_ = Statement(db, "INSERT OR REPLACE INTO engines(id, job_id, attempt, rank, "
                                 "size) VALUES(?1, ?2, ?3, ?4, ?5)");
  upsert_counter_ = Statement(db, "INSERT INTO counters(name, next) VALUES(?1, ?2) "
                                  "ON CONFLICT(name) DO UPDATE SET next=max(next, ?2)");
  by_id_ = Statement(db, fmt::format("SELECT {} FROM tasks WHERE id=?1", kColumns).c_str());
  by_id_sizes_ =
      Statement(db, fmt::format("SELECT {} FROM tasks WHERE id=?1", kColumnsSizes).c_str());
  // Ended tasks have an end time, and only they: the index (tasks_by_end) holds them alone.
  sweep_ = Statement(db, "SELECT id, result_size FROM tasks WHERE end_ms > 0 AND end_ms < ?1 "
                         "ORDER BY end_ms LIMIT ?2");
  oldest_ = Statement(db, "SELECT min(end_ms) FROM tasks WHERE end_ms > 0");
}

void TaskTable::finalize() {
  for (auto* st : {&insert_, &update_, &finish_, &delete_, &upsert_engine_, &upsert_counter_,
                   &by_id_, &by_id_sizes_, &sweep_, &oldest_})
    *st = Statement();
}

namespace {

/// Takes `next` (a later row of the same task) into `prev` if one row can say both; false if
/// both must be written, in order.
bool fold_into(TaskRow& prev, TaskRow& next) {
  using W = TaskRow::Write;
  if (next.write == W::Insert || (next.write == W::Finish && prev.write != W::Insert)) {
    prev = std::move(next); // it writes every column the earlier one did
  } else if (prev.write == W::Finish) {
    return false; // an Update after a Finish (an ended task does not change again)
  } else {
    // An Update after an Insert or an Update, or a Finish after an Insert: its columns into the
    // earlier row.
    prev.state = next.state;
    prev.engine_id = next.engine_id;
    prev.attempts = next.attempts;
    prev.start_ms = next.start_ms;
    if (next.write == W::Finish) {
      prev.payload.reset(); // an ended task's argument is not kept
      prev.end_ms = next.end_ms;
      prev.result = std::move(next.result);
      prev.error_type = std::move(next.error_type);
      prev.error_message = std::move(next.error_message);
      prev.traceback = std::move(next.traceback);
      prev.output = std::move(next.output);
      prev.result_size = next.result_size;
    }
  }
  next.write = W::Folded;
  return true;
}

} // namespace

void TaskTable::fold(std::vector<WriteBatch>& group) {
  // Deletes run after their batch's rows: a row may not move across another batch's deletes.
  bool across = true;
  for (const auto& b : group)
    across = across && b.tasks_forgotten.empty() && !b.task_sweep;
  std::unordered_map<std::uint64_t, TaskRow*> last;
  for (auto& b : group) {
    if (!across)
      last.clear();
    last.reserve(last.size() + b.tasks.size());
    for (auto& t : b.tasks) {
      auto [it, fresh] = last.try_emplace(t.id, &t);
      if (!fresh && !fold_into(*it->second, t))
        it->second = &t;
    }
  }
}

namespace {

const std::string& blob(const std::shared_ptr<const std::string>& p) {
  static const std::string kEmpty;
  return p ? *p : kEmpty;
}

/// A task's run and end, in parameters `first` to `first` + 6 (the order both the insert and
/// the finish statement take them in).
Statement& bind_run(Statement& st, int first, const TaskRow& t) {
  return st.bind(first, t.start_ms)
      .bind(first + 1, t.end_ms)
      .bind_blob(first + 2, blob(t.result))
      .bind_text(first + 3, t.error_type)
      .bind_text(first + 4, t.error_message)
      .bind_text(first + 5, t.traceback)
      .bind_blob(first + 6, blob(t.output));
}

} // namespace

Result<void> TaskTable::apply(WriteBatch& b) {
  for (const auto& t : b.tasks) {
    int rc = SQLITE_OK;
    switch (t.write) {
    case TaskRow::Write::Insert:
      insert_.bind(1, t.id)
          .bind(2, t.state)
          .bind_text(3, t.handler)
          .bind_text(4, t.label)
          .bind_blob(5, blob(t.payload))
          .bind(6, t.target_engine)
          .bind(7, t.engine_id)
          .bind(8, t.retries)
          .bind(9, t.attempts)
          .bind(10, t.timeout_ms)
          .bind(11, t.priority)
          .bind(12, t.submit_ms);
      rc = bind_run(insert_, 13, t)
               .bind(20, t.payload_size)
               .bind(21, t.result_size)
               .run();
      break;
    case TaskRow::Write::Folded:
      break;
    case TaskRow::Write::Update:
      rc = update_.bind(1, t.id)
               .bind(2, t.state)
               .bind(3, t.engine_id)
               .bind(4, t.attempts)
               .bind(5, t.start_ms)
               .run();
      break;
    case TaskRow::Write::Finish:
      finish_.bind(1, t.id).bind(2, t.state).bind(3, t.engine_id).bind(4, t.attempts);
      rc = bind_run(finish_, 5, t).bind(12, t.result_size).run();
      break;
    }
    if (rc != SQLITE_OK)
      return sqlite_error(db_, fmt::format("writing task {}", t.id));
  }
  for (auto id : b.tasks_forgotten)
    if (delete_.bind(1, id).run() != SQLITE_OK)
      return sqlite_error(db_, fmt::format("forgetting task {}", id));
  if (auto& sweep = b.task_sweep) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> old; // (id, result_size)
    sweep_.bind(1, sweep->before_ms).bind(2, static_cast<std::uint64_t>(sweep->limit));
    while (sweep_.step())
      old.emplace_back(static_cast<std::uint64_t>(sweep_.i64(0)),
                       static_cast<std::uint64_t>(sweep_.i64(1)));
    bool failed = sweep_.failed();
    sweep_.reset();
    if (failed)
      return sqlite_error(db_, "finding tasks past task_retention");
    for (auto [id, result_size] : old) {
      if (delete_.bind(1, id).run() != SQLITE_OK)
        return sqlite_error(db_, fmt::format("forgetting task {}", id));
      if (result_size > 0) // its file goes once this is committed
        b.values_removed.emplace_back(id, 1);
    }
    sweep->forgotten = old.size();
    sweep->oldest_end_ms = oldest_.step() ? oldest_.i64(0) : 0;
    oldest_.reset();
  }
  for (const auto& e : b.engines)
    if (upsert_engine_.bind(1, e.id)
            .bind(2, e.job_id)
            .bind(3, e.attempt)
            .bind(4, e.rank)
            .bind(5, e.size)
            .run() != SQLITE_OK)
      return sqlite_error(db_, fmt::format("writing engine {}", e.id));
  for (auto [name, next] :
       {std::pair{"task", b.next_task_id}, std::pair{"engine", b.next_engine_id}})
    if (next > 0 && upsert_counter_.bind_text(1, name).bind(2, next).run() != SQLITE_OK)
      return sqlite_error(db_, "writing the next task ids");
  return ok_result();
}

Result<TaskRows> TaskTable::read(const TaskQuery& q) {
  TaskRows out;
  std::vector<std::uint64_t> ids = q.ids;
  if (ids.empty() && q.newest > 0) {
    Statement count(db_, "SELECT count(*) FROM tasks");
    out.count = count.step() ? static_cast<std::uint64_t>(count.i64(0)) : 0;
    Statement newest(db_, "SELECT id FROM tasks ORDER BY id DESC LIMIT ?1");
    newest.bind(1, q.newest);
    while (newest.step())
      ids.push_back(static_cast<std::uint64_t>(newest.i64(0)));
    if (count.failed() || newest.failed())
      return sqlite_error(db_, "listing tasks");
    std::reverse(ids.begin(), ids.end());
  }
  Statement& by_id = q.values ? by_id_ : by_id_sizes_;
  std::size_t bytes = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (q.max_bytes > 0 && bytes >= q.max_bytes) {
      out.unread.assign(ids.begin() + static_cast<std::ptrdiff_t>(i), ids.end());
      break;
    }
    by_id.bind(1, ids[i]);
    if (by_id.step()) {
      TaskRow t;
      if (read_row(by_id, q.values, t)) {
        bytes += value_bytes(t);
        out.rows.push_back(std::move(t));
      }
    }
    bool failed = by_id.failed();
    by_id.reset();
    if (failed)
      return sqlite_error(db_, fmt::format("reading task {}", ids[i]));
  }
  return out;
}

Result<void> load_tasks(sqlite3* db, const std::filesystem::path& db_path, LoadedState& s) {
  {
    // Those that have not ended (queued, running, or their argument arriving), without their
    // arguments (payload_bytes: the hub reads each back when it sends the task); the others
    // stay in the store until they are asked for.
    Statement q(db, fmt::format("SELECT {} FROM tasks WHERE state IN (0, 1, 5) ORDER BY id",
                                kColumnsSizes)
                        .c_str());
    while (q.step()) {
      TaskRow t;
      if (!read_row(q, false, t))
        return make_error(ErrorCode::Internal,
                          fmt::format("task {} has an invalid state {} in the store", t.id,
                                      t.state));
      s.tasks.push_back(std::move(t));
    }
    if (q.failed())
      return damaged(db_path, fmt::format("reading the tasks table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT (SELECT min(end_ms) FROM tasks WHERE end_ms > 0), "
                    "(SELECT max(id) FROM tasks)");
    if (q.step()) {
      s.oldest_task_end_ms = q.i64(0);
      s.next_task_id = std::max(s.next_task_id, static_cast<std::uint64_t>(q.i64(1)) + 1);
    }
    if (q.failed())
      return damaged(db_path, fmt::format("reading the tasks table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT id, job_id, attempt, rank, size FROM engines ORDER BY id");
    while (q.step())
      s.engines.push_back({static_cast<std::uint64_t>(q.i64(0)),
                           static_cast<std::uint64_t>(q.i64(1)),
                           static_cast<std::uint32_t>(q.i64(2)),
                           static_cast<std::uint32_t>(q.i64(3)),
                           static_cast<std::uint32_t>(q.i64(4))});
    if (q.failed())
      return damaged(db_path, fmt::format("reading the engines table: {}", sqlite3_errmsg(db)));
  }
  return ok_result();
}

} // namespace sortie::store
