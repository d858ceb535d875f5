// SPDX-License-Identifier: Apache-2.0
// The store's SQLite helpers, shared by the store and its recovery: prepared statements, errors,
// opening, integrity checks and schema migrations.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/assert.hpp"
#include "sortie/result.hpp"

namespace sortie::store {

/// A prepared statement, finalized on destruction.
class Statement {
public:
  Statement() = default;
  Statement(sqlite3* db, const char* sql) {
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
    SORTIE_CHECK(rc == SQLITE_OK, "our SQL statements are fixed and valid for the schema");
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(Statement&& o) noexcept : stmt_(o.stmt_) { o.stmt_ = nullptr; }
  Statement& operator=(Statement&& o) noexcept {
    std::swap(stmt_, o.stmt_);
    return *this;
  }

  Statement& bind(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Statement& bind(int i, std::uint64_t v) { return bind(i, static_cast<std::int64_t>(v)); }
  Statement& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }
  Statement& bind(int i, std::uint32_t v) { return bind(i, static_cast<std::int64_t>(v)); }
  Statement& bind_null(int i) {
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  Statement& bind_text(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
    return *this;
  }
  Statement& bind_blob(int i, const std::string& s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
    return *this;
  }
  template <typename T>
  Statement& bind_opt(int i, const std::optional<T>& v) {
    return v ? bind(i, static_cast<std::int64_t>(*v)) : bind_null(i);
  }

  /// Runs to completion (for writes). Returns the SQLite result code.
  int run() {
    int rc = sqlite3_step(stmt_);
    sqlite3_reset(stmt_);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  bool step() {
    rc_ = sqlite3_step(stmt_);
    return rc_ == SQLITE_ROW;
  }
  void reset() { sqlite3_reset(stmt_); }
  /// The last step() ended in an error (a damaged page, an I/O error), not at the last row.
  bool failed() const { return rc_ != SQLITE_ROW && rc_ != SQLITE_DONE; }

  std::int64_t i64(int col) const { return sqlite3_column_int64(stmt_, col); }
  bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string text(int col) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_blob(stmt_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, col))) : std::string();
  }

private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_DONE;
};

Error sqlite_error(sqlite3* db, const std::string& what);
/// Runs SQL without results; the error names the statement.
Result<void> exec(sqlite3* db, const char* sql);
/// Opens (creating) a store file, mode 0600.
Result<sqlite3*> open_db(const std::filesystem::path& path);
/// The hub refuses a damaged store: this error says why and how to recover.
Error damaged(const std::filesystem::path& path, const std::string& what);
/// Runs PRAGMA quick_check or integrity_check; the problems it reports (at most `limit` lines).
std::vector<std::string> integrity_problems(sqlite3* db, const char* pragma, int limit);
/// damaged() unless the check finds nothing.
Result<void> check_intact(sqlite3* db, const std::filesystem::path& path, const char* pragma);
/// Brings the schema to `target`, one migration per transaction.
Result<void> migrate(sqlite3* db, const std::filesystem::path& path, int target);

} // namespace sortie::store
