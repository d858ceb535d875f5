// SPDX-License-Identifier: Apache-2.0
// The store: group commit with completions after durability, reload, migrations, rollback and
// output files.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fstream>

#include "common/files.hpp"
#include "fakes/completions.hpp"
#include "fakes/temp_dir.hpp"
#include "store/schema.hpp"
#include "store/store.hpp"
#include "store/task_table.hpp"

namespace sortie::store {
namespace {

using testing::Completions;
using testing::TempDir;

class StoreTest : public ::testing::Test {
protected:
  Options options() const { return {dir_.path() / "store.db", dir_.path() / "output", true}; }

  std::unique_ptr<Store> open() {
    auto s = Store::open(options());
    EXPECT_TRUE(s.ok()) << s.error().to_string();
    return std::move(*s);
  }

  /// Submits a batch and waits for its completion.
  Result<void> commit(Store& store, WriteBatch b) {
    bool done = false;
    Result<void> result;
    b.on_commit.push_back([&](const Result<void>& r) {
      result = r;
      done = true;
    });
    store.submit(std::move(b));
    EXPECT_TRUE(completions_.run_until([&] { return done; }));
    return result;
  }

  WriteBatch submission(std::uint64_t first, std::uint64_t count) {
    WriteBatch b;
    b.specs.push_back({first, "spec-bytes"});
    b.groups.push_back({first, "g", 1000, first, count});
    JobRun run;
    run.first_id = first;
    run.count = count;
    run.spec_id = first;
    run.group_id = first;
    run.is_array = true;
    run.first_index = 1;
    run.step = 2;
    run.submit_ms = 1000;
    b.job_runs.push_back(run);
    return b;
  }

  TempDir dir_;
  Completions completions_;
};

TEST_F(StoreTest, ForgottenRowsAndTheirOutputGoAndTheNextIdsStay) {
  {
    auto store = open();
    store->start(completions_.poster());
    WriteBatch b = submission(1, 3);
    b.groups[0].env = "exported";
    b.output.push_back({2, 0, 0, 0, "two", nullptr});
    ASSERT_TRUE(commit(*store, std::move(b)).ok());
    ASSERT_TRUE(std::filesystem::exists(dir_.path() / "output" / "2"));
    WriteBatch forget;
    forget.jobs_forgotten = {1, 2, 3};
    forget.specs_forgotten = {1};
    forget.groups_forgotten = {1};
    forget.next_job_id = 4;
    forget.next_spec_id = 2;
    forget.next_group_id = 2;
    ASSERT_TRUE(commit(*store, std::move(forget)).ok());
    EXPECT_FALSE(std::filesystem::exists(dir_.path() / "output" / "2"));
    WriteBatch lower; // counters only grow
    lower.next_job_id = 2;
    ASSERT_TRUE(commit(*store, std::move(lower)).ok());
    store->stop();
  }
  auto store = open();
  auto state = store->load();
  ASSERT_TRUE(state.ok()) << state.error().to_string();
  EXPECT_TRUE(state->jobs.empty());
  EXPECT_TRUE(state->specs.empty());
  EXPECT_TRUE(state->groups.empty());
  EXPECT_EQ(state->next_job_id, 4u);
  EXPECT_EQ(state->next_spec_id, 2u);
  EXPECT_EQ(state->next_group_id, 2u);
}

TEST_F(StoreTest, CommitThenReload) {
  {
    auto store = open();
    store->start(completions_.poster());
    ASSERT_TRUE(commit(*store, submission(1, 1000)).ok());
    WriteBatch update;
    JobRow row;
    row.id = 7;
    row.spec_id = 1;
    row.group_id = 1;
    row.array_index = 13;
    row.state = JobState::Failed;
    row.attempt = 2;
    row.agent_id = 3;
    row.exit_code = 4;
    row.submit_ms = 1000;
    row.start_ms = 1100;
    row.end_ms = 1200;
    row.history = {{JobState::Assigned, 1050}, {JobState::Running, 1100}, {JobState::Failed, 1200}};
    row.usage = {10, 20, 30};
    row.reason = "exit code 4";
    update.job_updates.push_back(row);
    update.agents.push_back({3, 1, "n1", "host", 99, 4, "cpu", true, 900});
    update.pilots.push_back({1, "pilot-spec", "running", 800, 0, ""});
    ASSERT_TRUE(commit(*store, std::move(update)).ok());
    store->stop();
  }
  auto store = open();
  auto state = store->load();
  ASSERT_TRUE(state.ok()) << state.error().to_string();
  ASSERT_EQ(state->jobs.size(), 1000u);
  EXPECT_EQ(state->jobs[0].array_index, 1);
  EXPECT_EQ(state->jobs[1].array_index, 3); // step 2
  EXPECT_EQ(state->jobs[0].state, JobState::Queued);
  const auto& j = state->jobs[6];
  EXPECT_EQ(j.id, 7u);
  EXPECT_EQ(j.state, JobState::Failed);
  EXPECT_EQ(j.attempt, 2u);
  EXPECT_EQ(j.exit_code, 4);
  EXPECT_FALSE(j.signal.has_value());
  ASSERT_EQ(j.history.size(), 3u);
  EXPECT_EQ(j.history[1].state, JobState::Running);
  EXPECT_EQ(j.history[1].time_ms, 1100);
  EXPECT_EQ(j.usage.max_rss_kib, 30);
  EXPECT_EQ(j.reason, "exit code 4");
  ASSERT_EQ(state->specs.size(), 1u);
  EXPECT_EQ(state->specs[0].body, "spec-bytes");
  ASSERT_EQ(state->agents.size(), 1u);
  EXPECT_EQ(state->agents[0].node, "n1");
  EXPECT_TRUE(state->agents[0].connected);
  ASSERT_EQ(state->pilots.size(), 1u);
  EXPECT_EQ(state->pilots[0].state, "running");
}

TEST_F(StoreTest, ALogStartedAtItsFullSizeIsOverwrittenAndACrashImageKeepsEveryCommit) {
  Options o = options();
  o.full_size_log = true;
  auto opened = Store::open(o);
  ASSERT_TRUE(opened.ok()) << opened.error().to_string();
  auto& store = **opened;
  store.start(completions_.poster());
  auto wal = dir_.path() / "store.db-wal";
  auto full = std::filesystem::file_size(wal);
  EXPECT_GT(full, 4u << 20); // a checkpoint's worth of frames (1,000 pages of 4 KiB)
  for (std::uint64_t i = 0; i < 300; ++i)
    ASSERT_TRUE(commit(store, submission(i * 10 + 1, 10)).ok());
  EXPECT_EQ(std::filesystem::file_size(wal), full); // overwritten, never grown

  // The files as a kill -9 would leave them: the zeros past the last frame are not frames.
  TempDir crash;
  for (const char* name : {"store.db", "store.db-wal"})
    std::filesystem::copy_file(dir_.path() / name, crash.path() / name);
  for (int reopen = 0; reopen < 2; ++reopen) {
    Options c = o;
    c.db_path = crash.path() / "store.db";
    c.output_dir = crash.path() / "output";
    auto image = Store::open(c);
    ASSERT_TRUE(image.ok()) << image.error().to_string();
    auto state = (*image)->load();
    ASSERT_TRUE(state.ok()) << state.error().to_string();
    EXPECT_EQ(state->jobs.size(), 3000u);
    EXPECT_EQ(state->specs.size(), 300u);
  }
}

TEST_F(StoreTest, GroupCommitRunsEveryCompletionInOrder) {
  auto store = open();
  std::vector<int> order;
  for (int i = 0; i < 50; ++i) {
    WriteBatch b = submission(static_cast<std::uint64_t>(i) * 10 + 1, 10);
    b.on_commit.push_back([&order, i](const Result<void>& r) {
      ASSERT_TRUE(r.ok());
      order.push_back(i);
    });
    store->submit(std::move(b)); // queued before the thread starts: one transaction
  }
  store->start(completions_.poster());
  ASSERT_TRUE(completions_.run_until([&] { return order.size() == 50; }));
  for (int i = 0; i < 50; ++i)
    EXPECT_EQ(order[static_cast<std::size_t>(i)], i);
  EXPECT_LE(store->commits(), 2u);
}

TEST_F(StoreTest, FailedTransactionRollsBackTheWholeGroup) {
  auto store = open();
  store->start(completions_.poster());
  ASSERT_TRUE(commit(*store, submission(1, 5)).ok());
  // Job 3 exists already: the insert fails and nothing of this batch may remain.
  WriteBatch bad = submission(100, 1);
  JobRun dup;
  dup.first_id = 3;
  dup.count = 1;
  dup.spec_id = 100;
  dup.group_id = 100;
  bad.job_runs.push_back(dup);
  auto r = commit(*store, std::move(bad));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("job 3"), std::string::npos) << r.error().message;
  store.reset(); // the hub holds its store exclusively: close it before reopening
  auto state = open()->load();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->jobs.size(), 5u);
  EXPECT_EQ(state->specs.size(), 1u);
}

TEST_F(StoreTest, OutputIsWrittenAtOffsetsAndReadBack) {
  auto store = open();
  store->start(completions_.poster());
  WriteBatch b;
  b.output.push_back({5, 1, 0, 6, "world\n"});
  b.output.push_back({5, 1, 0, 0, "hello "});
  b.output.push_back({5, 1, 0, 0, "hello "}); // a resend after a reconnect changes nothing
  b.output.push_back({5, 1, 1, 0, "oops\n"});
  ASSERT_TRUE(commit(*store, std::move(b)).ok());
  Result<std::string> got = std::string();
  bool done = false;
  store->read_output(5, 1, 0, 0, 1024, [&](Result<std::string> r) {
    got = std::move(r);
    done = true;
  });
  ASSERT_TRUE(completions_.run_until([&] { return done; }));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, "hello world\n");
  auto err = read_file(output_path(dir_.path() / "output", 5, 1, 1));
  ASSERT_TRUE(err.ok());
  EXPECT_EQ(*err, "oops\n");
  // No output yet: an empty read, not an error.
  done = false;
  store->read_output(6, 1, 0, 0, 1024, [&](Result<std::string> r) {
    got = std::move(r);
    done = true;
  });
  ASSERT_TRUE(completions_.run_until([&] { return done; }));
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(got->empty());
}

TEST_F(StoreTest, MigratesFromEveryEarlierVersion) {
  for (int version = 0; version < kSchemaVersion; ++version) {
    auto path = dir_.path() / ("v" + std::to_string(version) + ".db");
    ASSERT_TRUE(create_schema_version_for_test(path, version).ok());
    auto s = Store::open({path, dir_.path() / "output", true});
    ASSERT_TRUE(s.ok()) << "from version " << version << ": " << s.error().to_string();
    auto state = (*s)->load();
    EXPECT_TRUE(state.ok());
  }
  // And the latest opens as is, keeping its data.
  {
    auto store = open();
    store->start(completions_.poster());
    ASSERT_TRUE(commit(*store, submission(1, 3)).ok());
  }
  auto state = open()->load();
  ASSERT_TRUE(state.ok());
  EXPECT_EQ(state->jobs.size(), 3u);
}

TEST_F(StoreTest, MigratesAVersion1StoreKeepingItsJobs) {
  ASSERT_TRUE(create_schema_version_for_test(options().db_path, 1).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(options().db_path.c_str(), &db), SQLITE_OK);
  // What sortie 0.1 (schema 1) wrote: a spec, a group and a finished job.
  ASSERT_EQ(sqlite3_exec(db,
                         "INSERT INTO specs VALUES (1, x'0a0474727565');"
                         "INSERT INTO groups VALUES (1, '', 5, 1, 1);"
                         "INSERT INTO jobs (id, spec_id, group_id, state, attempt, exit_code, "
                         "submit_ms, start_ms, end_ms) VALUES (1, 1, 1, 4, 1, 0, 5, 6, 7);",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto store = open();
  auto state = store->load();
  ASSERT_TRUE(state.ok()) << state.error().to_string();
  ASSERT_EQ(state->jobs.size(), 1u);
  EXPECT_EQ(state->jobs[0].state, JobState::Succeeded);
  EXPECT_EQ(state->jobs[0].end_ms, 7);
  EXPECT_EQ(state->jobs[0].limits, "");
  EXPECT_TRUE(state->jobs[0].gpus.empty());
  // And the new columns are written and read back.
  store->start(completions_.poster());
  WriteBatch b;
  JobRow row = state->jobs[0];
  row.limits = "cgroup v1";
  row.gpus = {1, 3};
  b.job_updates.push_back(row);
  ASSERT_TRUE(commit(*store, std::move(b)).ok());
  store.reset();
  auto again = open()->load();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->jobs[0].limits, "cgroup v1");
  EXPECT_EQ(again->jobs[0].gpus, (std::vector<std::uint32_t>{1, 3}));
}

TEST_F(StoreTest, RefusesANewerSchema) {
  {
    auto store = open();
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(options().db_path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto s = Store::open(options());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::FailedPrecondition);
  EXPECT_NE(s.error().message.find("schema version 99"), std::string::npos) << s.error().message;
}

TEST_F(StoreTest, RefusesFilesThatAreNotStores) {
  {
    std::ofstream f(options().db_path);
    f << "this is not a database, just some text that is long enough to matter\n";
  }
  auto s = Store::open(options());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("store.db"), std::string::npos) << s.error().message;

  auto other = dir_.path() / "other.db";
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto s2 = Store::open({other, dir_.path() / "output", true});
  ASSERT_FALSE(s2.ok());
  EXPECT_NE(s2.error().message.find("not a sortie store"), std::string::npos) << s2.error().message;
}

TEST(Schema, HasOneMigrationPerVersion) {
  EXPECT_EQ(migrations().size(), static_cast<std::size_t>(kSchemaVersion));
}


TEST_F(StoreTest, ResourcesAndBatchIdsSurviveAReload) {
  {
    auto store = open();
    store->start(completions_.poster());
    WriteBatch b;
    b.resources.push_back({"cluster", "spec-1"});
    b.resources.push_back({"lab", "spec-2"});
    b.pilots.push_back({4, "pilot-spec", "pending", 1000, 0, "", "12345"});
    ASSERT_TRUE(commit(*store, std::move(b)).ok());
    WriteBatch rm;
    rm.resources_removed.push_back("lab");
    rm.resources.push_back({"cluster", "spec-1b"});
    ASSERT_TRUE(commit(*store, std::move(rm)).ok());
    store->stop();
  }
  auto store = open();
  auto state = store->load();
  ASSERT_TRUE(state.ok());
  ASSERT_EQ(state->resources.size(), 1u);
  EXPECT_EQ(state->resources[0].name, "cluster");
  EXPECT_EQ(state->resources[0].spec, "spec-1b");
  ASSERT_EQ(state->pilots.size(), 1u);
  EXPECT_EQ(state->pilots[0].batch_id, "12345");
}

} // namespace
} // namespace sortie::store

namespace sortie::store {
namespace {

TaskRow task_insert(std::uint64_t id, std::string payload) {
  TaskRow t;
  t.write = TaskRow::Write::Insert;
  t.id = id;
  t.handler = "h";
  t.label = "cpu";
  t.payload = std::make_shared<const std::string>(std::move(payload));
  t.submit_ms = 1000;
  return t;
}

TaskRow task_finish(std::uint64_t id, std::int64_t end_ms, std::string result,
                    std::uint64_t result_size = 0) {
  TaskRow t;
  t.write = TaskRow::Write::Finish;
  t.id = id;
  t.state = 2;
  t.engine_id = 7;
  t.attempts = 1;
  t.start_ms = end_ms - 1;
  t.end_ms = end_ms;
  t.result = std::make_shared<const std::string>(std::move(result));
  t.result_size = result_size;
  return t;
}

TEST_F(StoreTest, EndedTasksAreReadBackByIdOrNewestAndSweptFromTheOldest) {
  {
    auto store = open();
    store->start(completions_.poster());
    WriteBatch b;
    for (std::uint64_t id = 1; id <= 10; ++id)
      b.tasks.push_back(task_insert(id, "arg" + std::to_string(id)));
    b.next_task_id = 11;
    ASSERT_TRUE(commit(*store, std::move(b)).ok());
    // Tasks 1..6 end at 100..600 (task 4's large result lives in its value file); 7..10 do not.
    WriteBatch e;
    for (std::uint64_t id = 1; id <= 6; ++id)
      e.tasks.push_back(task_finish(id, static_cast<std::int64_t>(id) * 100,
                                    id == 4 ? "" : std::string(100, 'r'), id == 4 ? 5 : 0));
    e.values.push_back({4, 1, 0, "large"});
    ASSERT_TRUE(commit(*store, std::move(e)).ok());
    ASSERT_TRUE(std::filesystem::exists(value_path(options().output_dir, 4, 1)));

    // By id, in the order asked; those that do not exist are left out.
    Result<TaskRows> got = TaskRows{};
    bool done = false;
    auto read = [&](TaskQuery q) {
      done = false;
      store->read_tasks(std::move(q), [&](Result<TaskRows> r) {
        got = std::move(r);
        done = true;
      });
      EXPECT_TRUE(completions_.run_until([&] { return done; }));
      EXPECT_TRUE(got.ok());
    };
    read({.ids = {5, 99, 2, 8}});
    ASSERT_EQ(got->rows.size(), 3u);
    EXPECT_EQ(got->rows[0].id, 5u);
    EXPECT_EQ(got->rows[0].state, 2);
    EXPECT_EQ(*got->rows[0].result, std::string(100, 'r'));
    EXPECT_EQ(got->rows[0].payload, nullptr); // dropped once it ended
    EXPECT_EQ(got->rows[1].id, 2u);
    EXPECT_EQ(got->rows[2].id, 8u);
    EXPECT_EQ(*got->rows[2].payload, "arg8");
    // Without values: their lengths only.
    read({.ids = {1, 9}, .values = false});
    ASSERT_EQ(got->rows.size(), 2u);
    EXPECT_EQ(got->rows[0].result, nullptr);
    EXPECT_EQ(got->rows[0].result_bytes, 100u);
    EXPECT_EQ(got->rows[1].payload_bytes, 4u);
    // A byte budget: the ids it did not reach come back unread, in order.
    read({.ids = {1, 2, 3, 5}, .max_bytes = 200}); // 164 bytes a row, with its overhead
    ASSERT_EQ(got->rows.size(), 2u);
    EXPECT_EQ(got->unread, (std::vector<std::uint64_t>{3, 5}));
    // The newest, in id order, and the count of all.
    read({.newest = 3, .values = false});
    ASSERT_EQ(got->rows.size(), 3u);
    EXPECT_EQ(got->rows[0].id, 8u);
    EXPECT_EQ(got->rows[2].id, 10u);
    EXPECT_EQ(got->count, 10u);

    // task_retention: at most `limit` of those that ended before 450, from the oldest.
    WriteBatch s;
    s.task_sweep = std::make_shared<TaskSweep>();
    s.task_sweep->before_ms = 450;
    s.task_sweep->limit = 3;
    auto sweep = s.task_sweep;
    ASSERT_TRUE(commit(*store, std::move(s)).ok());
    EXPECT_EQ(sweep->forgotten, 3u);
    EXPECT_EQ(sweep->oldest_end_ms, 400);
    WriteBatch s2;
    s2.task_sweep = std::make_shared<TaskSweep>();
    s2.task_sweep->before_ms = 450;
    sweep = s2.task_sweep;
    ASSERT_TRUE(commit(*store, std::move(s2)).ok());
    EXPECT_EQ(sweep->forgotten, 1u); // task 4, with its value file
    EXPECT_EQ(sweep->oldest_end_ms, 500);
    EXPECT_FALSE(std::filesystem::exists(value_path(options().output_dir, 4, 1)));
    read({.ids = {1, 2, 3, 4, 5, 6}, .values = false});
    ASSERT_EQ(got->rows.size(), 2u);
    EXPECT_EQ(got->rows[0].id, 5u);
  }
  // A hub loads the tasks that have not ended (their arguments' lengths, not the arguments: it
  // reads each back when it sends the task), when the oldest ended one ended, the next id.
  auto state = open()->load();
  ASSERT_TRUE(state.ok()) << state.error().to_string();
  ASSERT_EQ(state->tasks.size(), 4u);
  EXPECT_EQ(state->tasks[0].id, 7u);
  EXPECT_EQ(state->tasks[0].payload, nullptr);
  EXPECT_EQ(state->tasks[0].payload_bytes, 4u);
  EXPECT_EQ(state->oldest_task_end_ms, 500);
  EXPECT_EQ(state->next_task_id, 11u);
}

TaskRow task_update(std::uint64_t id, std::uint64_t engine, std::int64_t start_ms) {
  TaskRow t;
  t.write = TaskRow::Write::Update;
  t.id = id;
  t.state = 1;
  t.engine_id = engine;
  t.attempts = 1;
  t.start_ms = start_ms;
  return t;
}

TEST_F(StoreTest, RowsOfOneTaskInOneTransactionAreFoldedIntoOneWithTheSameResult) {
  // Three batches of one group commit: tasks inserted, sent and ended within it.
  std::vector<WriteBatch> group(3);
  for (std::uint64_t id = 1; id <= 4; ++id)
    group[0].tasks.push_back(task_insert(id, "arg" + std::to_string(id)));
  group[0].tasks.push_back(task_update(1, 5, 50));
  group[1].tasks.push_back(task_finish(1, 60, "r1"));
  group[1].tasks.push_back(task_update(2, 6, 51));
  group[1].tasks.push_back(task_update(3, 5, 52));
  group[2].tasks.push_back(task_finish(2, 70, "r2"));
  group[2].tasks.push_back(task_insert(5, "arg5"));
  group[2].tasks.push_back(task_update(6, 6, 53)); // a task of an earlier commit
  group[2].tasks.push_back(task_finish(6, 80, "r6"));
  group[2].tasks.push_back(task_update(6, 6, 54)); // after its end: written after it, not folded
  TaskTable::fold(group);
  std::vector<std::uint64_t> written;
  for (const auto& b : group)
    for (const auto& t : b.tasks)
      if (t.write != TaskRow::Write::Folded)
        written.push_back(t.id);
  EXPECT_EQ(written, (std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6, 6}));

  // The same rows committed one batch at a time, and all in one group (queued before the store
  // thread starts, so it takes them in one transaction and folds them), give the same table.
  auto rows_after = [&](bool one_group) {
    TempDir dir;
    auto store = Store::open({dir.path() / "store.db", dir.path() / "output", true});
    EXPECT_TRUE(store.ok());
    std::vector<WriteBatch> batches(4);
    batches[0].tasks = {task_insert(6, "arg6")};
    batches[1].tasks = {task_insert(1, "arg1"), task_insert(2, "arg2"), task_insert(3, "arg3"),
                        task_insert(4, "arg4"), task_update(1, 5, 50)};
    batches[2].tasks = {task_finish(1, 60, "r1"), task_update(2, 6, 51), task_update(3, 5, 52)};
    batches[3].tasks = {task_finish(2, 70, "r2"), task_insert(5, "arg5"), task_update(6, 6, 53),
                        task_finish(6, 80, "r6")};
    if (one_group) {
      bool committed = false;
      batches[3].on_commit.push_back([&](const Result<void>& r) { committed = r.ok(); });
      for (auto& b : batches)
        (*store)->submit(std::move(b));
      (*store)->start(completions_.poster());
      EXPECT_TRUE(completions_.run_until([&] { return committed; }));
      EXPECT_EQ((*store)->commits(), 1u);
    } else {
      (*store)->start(completions_.poster());
      for (auto& b : batches)
        EXPECT_TRUE(commit(**store, std::move(b)).ok());
    }
    Result<TaskRows> got = TaskRows{};
    bool done = false;
    (*store)->read_tasks({.ids = {1, 2, 3, 4, 5, 6}}, [&](Result<TaskRows> r) {
      got = std::move(r);
      done = true;
    });
    EXPECT_TRUE(completions_.run_until([&] { return done; }));
    EXPECT_TRUE(got.ok());
    return got.ok() ? got->rows : std::vector<TaskRow>{};
  };
  auto plain = rows_after(false), folded = rows_after(true);
  ASSERT_EQ(plain.size(), 6u);
  ASSERT_EQ(folded.size(), 6u);
  auto text = [](const std::shared_ptr<const std::string>& p) { return p ? *p : std::string(); };
  for (std::size_t i = 0; i < 6; ++i) {
    SCOPED_TRACE(plain[i].id);
    EXPECT_EQ(folded[i].id, plain[i].id);
    EXPECT_EQ(folded[i].state, plain[i].state);
    EXPECT_EQ(folded[i].engine_id, plain[i].engine_id);
    EXPECT_EQ(folded[i].attempts, plain[i].attempts);
    EXPECT_EQ(folded[i].start_ms, plain[i].start_ms);
    EXPECT_EQ(folded[i].end_ms, plain[i].end_ms);
    EXPECT_EQ(text(folded[i].payload), text(plain[i].payload));
    EXPECT_EQ(text(folded[i].result), text(plain[i].result));
    EXPECT_EQ(folded[i].submit_ms, plain[i].submit_ms);
  }
  EXPECT_EQ(plain[0].state, 2);
  EXPECT_EQ(text(plain[0].payload), ""); // dropped once it ended
  EXPECT_EQ(text(plain[0].result), "r1");
  EXPECT_EQ(plain[2].state, 1);
  EXPECT_EQ(text(plain[2].payload), "arg3");
  EXPECT_EQ(plain[3].state, 0);
}

TEST_F(StoreTest, RowsAreNotFoldedAcrossAnotherBatchsDeletes) {
  std::vector<WriteBatch> group(2);
  group[0].tasks.push_back(task_insert(1, "a"));
  group[0].tasks_forgotten.push_back(1);
  group[1].tasks.push_back(task_insert(2, "b"));
  group[1].tasks.push_back(task_update(2, 5, 50));
  group[1].tasks.push_back(task_finish(1, 60, "late")); // task 1 is gone by then: a no-op
  TaskTable::fold(group);
  EXPECT_EQ(group[0].tasks[0].write, TaskRow::Write::Insert); // not given task 1's late end
  EXPECT_EQ(group[1].tasks[0].write, TaskRow::Write::Insert); // within a batch: folded
  EXPECT_EQ(group[1].tasks[0].state, 1);
  EXPECT_EQ(group[1].tasks[1].write, TaskRow::Write::Folded);
  EXPECT_EQ(group[1].tasks[2].write, TaskRow::Write::Finish);
}

} // namespace
} // namespace sortie::store
