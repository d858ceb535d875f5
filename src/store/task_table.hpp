// SPDX-License-Identifier: Apache-2.0
// Internal to the store: the tasks table (docs/engines.md). Its writes, the reads the hub makes
// of tasks it no longer holds in memory (ended ones), the task_retention sweep, and loading.
#pragma once

#include <sqlite3.h>

#include "store/sqlite.hpp"
#include "store/store.hpp"

namespace sortie::store {

class TaskTable {
public:
  void prepare(sqlite3* db);
  /// Before the connection closes.
  void finalize();
  /// Folds the rows one transaction writes for the same task into one where that gives the same
  /// table (a task inserted, sent and ended within one group commit is one INSERT, not an INSERT
  /// and two UPDATEs). Across batches only when none of them deletes tasks.
  static void fold(std::vector<WriteBatch>& group);
  /// A batch's task rows, forgotten tasks, engines, counters and sweep (in its transaction).
  Result<void> apply(WriteBatch& b);
  /// Store thread.
  Result<TaskRows> read(const TaskQuery& q);

private:
  sqlite3* db_ = nullptr;
  Statement insert_, update_, finish_, delete_, upsert_engine_, upsert_counter_;
  Statement by_id_, by_id_sizes_, sweep_, oldest_;
};

/// What a hub loads of the tasks table: the tasks that have not ended, the engines, and when the
/// oldest ended task ended.
Result<void> load_tasks(sqlite3* db, const std::filesystem::path& db_path, LoadedState& s);

} // namespace sortie::store
