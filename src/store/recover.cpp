// SPDX-License-Identifier: Apache-2.0
// Checking a store file and recovering what is readable from a damaged one (`sortie hub check
// [--recover]`), and the id reservation file that keeps ids from being handed out twice.
#include <fcntl.h>
#include <unistd.h>

#include <optional>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "store/schema.hpp"
#include "store/sqlite.hpp"
#include "store/store.hpp"

namespace sortie::store {

Result<std::vector<std::string>> check_store_file(const std::filesystem::path& db_path, int limit) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return make_error(ErrorCode::Io, fmt::format("cannot open {}: {}", db_path.string(), msg));
  }
  auto problems = integrity_problems(db, "integrity_check", limit);
  sqlite3_close(db);
  return problems;
}

namespace {

std::vector<std::string> table_columns(sqlite3* db, const std::string& schema, const std::string& table) {
  std::vector<std::string> cols;
  sqlite3_stmt* stmt = nullptr;
  std::string sql = fmt::format("PRAGMA {}.table_info({})", schema, table);
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK)
    return cols;
  while (sqlite3_step(stmt) == SQLITE_ROW)
    cols.emplace_back(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 1)));
  sqlite3_finalize(stmt);
  return cols;
}

/// One value from a query, or nullopt if it fails (a damaged page on its path).
std::optional<std::int64_t> query_int(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK)
    return std::nullopt;
  std::optional<std::int64_t> v;
  if (sqlite3_step(stmt) == SQLITE_ROW)
    v = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  return v;
}

} // namespace

Result<IdFloors> read_id_reservation(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    return IdFloors{};
  SORTIE_ASSIGN_OR_RETURN(text, read_file(path));
  IdFloors f;
  for (const auto& line : split(text, '\n')) {
    auto parts = split(trim(line), ' ');
    if (parts.size() != 2)
      continue;
    auto v = parse_int(parts[1], 0, INT64_MAX);
    if (!v.ok())
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{}: '{}' is not 'job N' or 'group N'", path.string(), line));
    (parts[0] == "job" ? f.job : f.group) = static_cast<std::uint64_t>(*v);
  }
  return f;
}

Result<void> write_id_reservation(const std::filesystem::path& path, const IdFloors& f) {
  return write_file_atomic(path, fmt::format("job {}\ngroup {}\n", f.job, f.group), 0600);
}

Result<RecoveryReport> recover_store(const std::filesystem::path& damaged,
                                     const std::filesystem::path& out,
                                     const IdFloors& floors) {
  if (std::filesystem::exists(out))
    return make_error(ErrorCode::AlreadyExists,
                      fmt::format("{} exists already: move it away first", out.string()));
  {
    // The new store, with the current schema (and nothing in it).
    SORTIE_ASSIGN_OR_RETURN(fresh, Store::open({out, out.parent_path() / "output", true}));
  }
  sqlite3* old = nullptr;
  if (sqlite3_open_v2(damaged.c_str(), &old, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    std::string msg = old ? sqlite3_errmsg(old) : "out of memory";
    sqlite3_close(old);
    return make_error(ErrorCode::Io, fmt::format("cannot read {}: {}", damaged.string(), msg));
  }
  auto opened = open_db(out);
  if (!opened.ok()) {
    sqlite3_close(old);
    return opened.error();
  }
  sqlite3* db = *opened;
  RecoveryReport report;
  (void)exec(db, "BEGIN");
  for (const char* table : {"specs", "groups", "jobs", "agents", "pilots", "resources", "counters",
                            "tasks", "engines"}) {
    RecoveryReport::Table t{table};
    auto new_cols = table_columns(db, "main", table);
    auto old_cols = table_columns(old, "main", table);
    std::vector<std::string> cols;
    for (const auto& c : new_cols)
      if (std::find(old_cols.begin(), old_cols.end(), c) != old_cols.end())
        cols.push_back(c);
    if (cols.empty()) { // the table itself is unreadable
      report.tables.push_back(t);
      continue;
    }
    std::string names = fmt::format("{}", fmt::join(cols, ", "));
    std::string marks;
    for (std::size_t i = 1; i <= cols.size(); ++i)
      marks += fmt::format("{}?{}", i > 1 ? ", " : "", i);
    sqlite3_stmt* read = nullptr;
    sqlite3_stmt* write = nullptr;
    auto rsql = fmt::format("SELECT {} FROM {} WHERE rowid = ?1", names, table);
    auto wsql = fmt::format("INSERT OR REPLACE INTO {}({}) VALUES({})", table, names, marks);
    sqlite3_prepare_v2(old, rsql.c_str(), -1, &read, nullptr);
    sqlite3_prepare_v2(db, wsql.c_str(), -1, &write, nullptr);
    // Row by row: a damaged page fails only the rows on it. Ids are dense, so probing every id
    // up to the largest finds every row that can still be read.
    auto max_id = query_int(old, fmt::format("SELECT max(rowid) FROM {}", table));
    std::int64_t last = max_id ? *max_id : std::numeric_limits<std::int64_t>::max();
    std::int64_t misses = 0;
    for (std::int64_t id = 1; read && write && id <= last && misses < 100'000; ++id) {
      sqlite3_bind_int64(read, 1, id);
      int rc = sqlite3_step(read);
      if (rc == SQLITE_ROW) {
        for (int c = 0; c < static_cast<int>(cols.size()); ++c)
          sqlite3_bind_value(write, c + 1, sqlite3_column_value(read, c));
        if (sqlite3_step(write) == SQLITE_DONE) {
          ++t.copied;
          misses = 0;
        } else {
          ++t.unreadable;
        }
        sqlite3_reset(write);
      } else if (rc != SQLITE_DONE) {
        ++t.unreadable;
        ++misses;
      } else if (!max_id) {
        ++misses;
      }
      sqlite3_reset(read);
    }
    sqlite3_finalize(read);
    sqlite3_finalize(write);
    report.tables.push_back(t);
  }
  sqlite3_close(old);
  // Ids the lost rows had must not come back: past every id seen and past the reservation.
  for (auto [name, table, floor] : {std::tuple{"job", "jobs", floors.job},
                                    std::tuple{"group", "groups", floors.group},
                                    std::tuple{"spec", "specs", std::uint64_t{0}},
                                    std::tuple{"task", "tasks", std::uint64_t{0}},
                                    std::tuple{"engine", "engines", std::uint64_t{0}}}) {
    auto seen = query_int(db, fmt::format("SELECT max(id) FROM {}", table));
    std::uint64_t next = std::max<std::uint64_t>(floor, seen ? static_cast<std::uint64_t>(*seen) + 1 : 1);
    std::string sql = fmt::format("INSERT INTO counters(name, next) VALUES('{}', {}) ON "
                                  "CONFLICT(name) DO UPDATE SET next=max(next, {})",
                                  name, next, next);
    (void)exec(db, sql.c_str());
    if (std::string_view(name) == "job")
      report.next_job_id = next;
  }
  auto committed = exec(db, "COMMIT");
  sqlite3_close(db);
  if (!committed.ok())
    return committed.error();
  return report;
}

} // namespace sortie::store
