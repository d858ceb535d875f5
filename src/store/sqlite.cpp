// SPDX-License-Identifier: Apache-2.0
// SQLite helpers of the store: errors, opening, integrity checks, migrations.
#include "store/sqlite.hpp"

#include <sys/stat.h>

#include <fmt/format.h>

#include "common/log.hpp"
#include "store/schema.hpp"
#include "store/store.hpp"

namespace sortie::store {

Error sqlite_error(sqlite3* db, const std::string& what) {
  int code = sqlite3_errcode(db);
  ErrorCode ec = (code == SQLITE_FULL || code == SQLITE_IOERR) ? ErrorCode::Io : ErrorCode::Internal;
  return make_error(ec, fmt::format("{}: {}", what, sqlite3_errmsg(db)));
}

Result<void> exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return make_error(ErrorCode::Internal, fmt::format("SQL failed ({}): {}", msg, sql));
  }
  return ok_result();
}

Result<sqlite3*> open_db(const std::filesystem::path& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return make_error(ErrorCode::Io, fmt::format("cannot open store {}: {}", path.string(), msg));
  }
  ::chmod(path.c_str(), 0600);
  return db;
}

Error damaged(const std::filesystem::path& path, const std::string& what) {
  return make_error(ErrorCode::FailedPrecondition,
                    fmt::format("{} is damaged ({}); the hub does not start on a damaged store, "
                                "so that nothing acknowledged is silently lost. `sortie hub check` "
                                "shows the damage; `sortie hub check --recover` copies what is "
                                "readable into a new store and keeps the damaged one beside it",
                                path.string(), what));
}

std::vector<std::string> integrity_problems(sqlite3* db, const char* pragma, int limit) {
  std::vector<std::string> out;
  sqlite3_stmt* stmt = nullptr;
  std::string sql = fmt::format("PRAGMA {}({})", pragma, limit);
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) != SQLITE_OK) {
    out.push_back(sqlite3_errmsg(db));
    return out;
  }
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    const auto* line = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    std::string text = line ? line : "";
    // One row may hold several problems, a line each.
    std::size_t start = 0;
    while (start <= text.size() && text != "ok") {
      std::size_t end = text.find('\n', start);
      if (end == std::string::npos)
        end = text.size();
      if (end > start && static_cast<int>(out.size()) < limit)
        out.push_back(text.substr(start, end - start));
      start = end + 1;
    }
  }
  if (rc != SQLITE_DONE)
    out.push_back(sqlite3_errmsg(db));
  sqlite3_finalize(stmt);
  return out;
}

Result<void> check_intact(sqlite3* db, const std::filesystem::path& path, const char* pragma) {
  auto problems = integrity_problems(db, pragma, 3);
  if (problems.empty())
    return ok_result();
  std::string what = problems[0];
  for (std::size_t i = 1; i < problems.size(); ++i)
    what += "; " + problems[i];
  return damaged(path, what);
}

Result<void> migrate(sqlite3* db, const std::filesystem::path& path, int target) {
  Statement v(db, "PRAGMA user_version");
  if (!v.step()) {
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} is not a sortie store (not an SQLite database): move it "
                                  "away or choose another profile",
                                  path.string()));
  }
  int version = static_cast<int>(v.i64(0));
  v.reset();
  if (version > kSchemaVersion)
    return make_error(ErrorCode::FailedPrecondition,
                      fmt::format("{} has schema version {}, newer than this sortie's {}: use the "
                                  "sortie release that wrote it",
                                  path.string(), version, kSchemaVersion));
  if (version == 0) {
    // A fresh file, or an SQLite database that is not ours.
    Statement t(db, "SELECT count(*) FROM sqlite_master");
    if (t.step() && t.i64(0) > 0)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{} is an SQLite database but not a sortie store: move it away "
                                    "or choose another profile",
                                    path.string()));
  }
  const auto& steps = migrations();
  for (int next = version + 1; next <= target; ++next) {
    SORTIE_TRY(exec(db, "BEGIN IMMEDIATE"));
    auto r = exec(db, steps[static_cast<size_t>(next - 1)]);
    if (!r.ok()) {
      (void)exec(db, "ROLLBACK");
      return r.error().with_context(fmt::format("migrating {} to schema {}", path.string(), next));
    }
    SORTIE_TRY(exec(db, fmt::format("PRAGMA user_version = {}", next).c_str()));
    SORTIE_TRY(exec(db, "COMMIT"));
    if (version > 0)
      log::info("store {} migrated to schema version {}", path.string(), next);
  }
  return ok_result();
}

} // namespace sortie::store
