// SPDX-License-Identifier: Apache-2.0
// The durable store: SQLite in WAL mode, group commit on its own thread, output files, recovery.
#include "store/store.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <variant>

#include <fmt/format.h>

#include "common/assert.hpp"
#include "common/files.hpp"
#include "common/log.hpp"
#include "common/text.hpp"
#include "store/schema.hpp"

namespace sortie::store {
namespace {

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

std::string encode_history(const std::vector<StateChange>& h) {
  std::string out;
  out.reserve(h.size() * 9);
  for (const auto& c : h) {
    out.push_back(static_cast<char>(c.state));
    std::int64_t t = c.time_ms;
    char b[8];
    std::memcpy(b, &t, 8);
    out.append(b, 8);
  }
  return out;
}

std::vector<StateChange> decode_history(const std::string& s) {
  std::vector<StateChange> out;
  for (size_t i = 0; i + 9 <= s.size(); i += 9) {
    std::int64_t t = 0;
    std::memcpy(&t, s.data() + i + 1, 8);
    out.push_back({static_cast<JobState>(s[i]), t});
  }
  return out;
}

std::string encode_gpus(const std::vector<std::uint32_t>& gpus) {
  std::string out;
  for (auto g : gpus)
    out += (out.empty() ? "" : ",") + std::to_string(g);
  return out;
}

std::vector<std::uint32_t> decode_gpus(const std::string& text) {
  std::vector<std::uint32_t> out;
  std::uint32_t v = 0;
  bool any = false;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      v = v * 10 + static_cast<std::uint32_t>(c - '0');
      any = true;
    } else if (any) {
      out.push_back(v);
      v = 0;
      any = false;
    }
  }
  if (any)
    out.push_back(v);
  return out;
}

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

/// Runs PRAGMA quick_check or integrity_check; the problems it reports (at most `limit` lines).
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

/// Brings the schema to `target`, one migration per transaction.
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

// Things the store thread works on, in queue order.
struct ReadRequest {
  std::uint64_t job_id;
  std::uint32_t attempt;
  int stream;
  std::int64_t offset;
  std::size_t max;
  std::function<void(Result<std::string>)> done;
};
using WorkItem = std::variant<WriteBatch, ReadRequest>;

constexpr auto kCommitSpacing = std::chrono::microseconds(10000);

} // namespace

std::filesystem::path output_path(const std::filesystem::path& output_dir,
                                  std::uint64_t job_id,
                                  std::uint32_t attempt,
                                  int stream) {
  return output_dir / std::to_string(job_id) /
         fmt::format("{}.{}", attempt, stream == 0 ? "out" : "err");
}

struct Store::Impl {
  Options options;
  sqlite3* db = nullptr;
  Post post;
  std::thread thread;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<WorkItem> queue; // guarded by mu
  bool stopping = false;      // guarded by mu
  std::atomic<std::uint64_t> commits{0};

  log::RateLimited output_errors_;
  // Store-thread state: statements and open output files (a small LRU).
  Statement delete_job, delete_spec, delete_group, upsert_counter;
  Statement insert_spec, insert_group, insert_job, update_job, upsert_agent, upsert_pilot,
      upsert_resource, delete_resource;
  std::list<std::pair<std::string, int>> open_files; // most recent first
  std::unordered_map<std::string, std::list<std::pair<std::string, int>>::iterator> file_index;
  std::thread::id thread_id;

  ~Impl() {
    for (auto& [name, fd] : open_files)
      ::close(fd);
    // Statements must be finalized before the connection closes.
    for (auto* st : {&insert_spec, &insert_group, &insert_job, &update_job, &upsert_agent,
                     &upsert_pilot, &upsert_resource, &delete_resource, &delete_job, &delete_spec,
                     &delete_group, &upsert_counter})
      *st = Statement();
    if (db)
      sqlite3_close(db);
  }

  void prepare() {
    insert_spec = Statement(db, "INSERT INTO specs(id, body) VALUES(?1, ?2)");
    insert_group = Statement(db, "INSERT INTO groups(id, name, created_ms, first_job, count, "
                                 "env) VALUES(?1, ?2, ?3, ?4, ?5, ?6)");
    insert_job = Statement(db, "INSERT INTO jobs(id, spec_id, group_id, array_index, state, "
                               "submit_ms) VALUES(?1, ?2, ?3, ?4, 1, ?5)");
    update_job = Statement(db, "UPDATE jobs SET state=?2, attempt=?3, agent_id=?4, exit_code=?5, "
                               "signal=?6, start_ms=?7, end_ms=?8, history=?9, user_cpu_us=?10, "
                               "system_cpu_us=?11, max_rss_kib=?12, reason=?13, limits=?14, "
                               "gpus=?15 WHERE id=?1");
    upsert_agent = Statement(db, "INSERT OR REPLACE INTO agents(id, pilot_id, node, hostname, pid, "
                                 "slots, label, connected, registered_ms, session_key, epoch) "
                                 "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    upsert_pilot = Statement(db, "INSERT OR REPLACE INTO pilots(id, spec, state, created_ms, "
                                 "ended_ms, reason, batch_id) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    upsert_resource = Statement(db, "INSERT OR REPLACE INTO resources(name, spec) VALUES(?1, ?2)");
    delete_resource = Statement(db, "DELETE FROM resources WHERE name=?1");
    delete_job = Statement(db, "DELETE FROM jobs WHERE id=?1");
    delete_spec = Statement(db, "DELETE FROM specs WHERE id=?1");
    delete_group = Statement(db, "DELETE FROM groups WHERE id=?1");
    upsert_counter = Statement(db, "INSERT INTO counters(name, next) VALUES(?1, ?2) "
                                   "ON CONFLICT(name) DO UPDATE SET next=max(next, ?2)");
  }

  int output_fd(std::uint64_t job, std::uint32_t attempt, int stream, bool create) {
    auto path = output_path(options.output_dir, job, attempt, stream);
    std::string key = path.string();
    if (auto it = file_index.find(key); it != file_index.end()) {
      open_files.splice(open_files.begin(), open_files, it->second);
      return it->second->second;
    }
    int fd = ::open(key.c_str(), (create ? O_WRONLY | O_CREAT : O_RDONLY) | O_CLOEXEC, 0600);
    if (fd < 0 && create && errno == ENOENT) {
      ::mkdir(path.parent_path().c_str(), 0700);
      fd = ::open(key.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    }
    if (fd < 0 || !create)
      return fd; // read descriptors are not cached
    open_files.emplace_front(key, fd);
    file_index[key] = open_files.begin();
    if (open_files.size() > 256) {
      ::close(open_files.back().second);
      file_index.erase(open_files.back().first);
      open_files.pop_back();
    }
    return fd;
  }

  void write_output(OutputWrite& w) {
    auto failed = [&](int err) {
      if (w.status) {
        w.status->error = err;
        w.status->data = std::move(w.data);
      }
    };
    int fd = output_fd(w.job_id, w.attempt, w.stream, true);
    if (fd < 0) {
      log::error("cannot open output file of job {} attempt {}: {}", w.job_id, w.attempt,
                 errno_text(errno));
      return failed(errno);
    }
    size_t done = 0;
    while (done < w.data.size()) {
      ssize_t n = ::pwrite(fd, w.data.data() + done, w.data.size() - done,
                           static_cast<off_t>(w.offset + static_cast<std::int64_t>(done)));
      if (n < 0) {
        if (errno == EINTR)
          continue;
        int err = errno;
        output_errors_.warn(fmt::format("cannot write output of job {} attempt {}: {}", w.job_id,
                                        w.attempt, errno_text(err)));
        // What part was written is rewritten with the rest: writes are idempotent by offset.
        return failed(err);
      }
      done += static_cast<size_t>(n);
    }
  }

  Result<void> apply(WriteBatch& b) {
    for (const auto& s : b.specs)
      if (insert_spec.bind(1, s.id).bind_blob(2, s.body).run() != SQLITE_OK)
        return sqlite_error(db, "inserting a job spec");
    for (const auto& g : b.groups)
      if (insert_group.bind(1, g.id)
              .bind_text(2, g.name)
              .bind(3, g.created_ms)
              .bind(4, g.first_job)
              .bind(5, g.count)
              .bind_blob(6, g.env)
              .run() != SQLITE_OK)
        return sqlite_error(db, "inserting a job group");
    for (const auto& r : b.job_runs) {
      insert_job.bind(2, r.spec_id).bind(3, r.group_id).bind(5, r.submit_ms);
      for (std::uint64_t k = 0; k < r.count; ++k) {
        insert_job.bind(1, r.first_id + k);
        if (r.is_array)
          insert_job.bind(4, r.first_index + static_cast<std::int64_t>(k) * r.step);
        else
          insert_job.bind_null(4);
        if (insert_job.run() != SQLITE_OK)
          return sqlite_error(db, fmt::format("inserting job {}", r.first_id + k));
      }
    }
    for (const auto& j : b.job_updates) {
      std::string history = encode_history(j.history);
      std::string gpus = encode_gpus(j.gpus);
      if (update_job.bind(1, j.id)
              .bind(2, static_cast<int>(j.state))
              .bind(3, j.attempt)
              .bind(4, j.agent_id)
              .bind_opt(5, j.exit_code)
              .bind_opt(6, j.signal)
              .bind(7, j.start_ms)
              .bind(8, j.end_ms)
              .bind_blob(9, history)
              .bind(10, j.usage.user_cpu_us)
              .bind(11, j.usage.system_cpu_us)
              .bind(12, j.usage.max_rss_kib)
              .bind_text(13, j.reason)
              .bind_text(14, j.limits)
              .bind_text(15, gpus)
              .run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("updating job {}", j.id));
    }
    for (const auto& a : b.agents)
      if (upsert_agent.bind(1, a.id)
              .bind(2, a.pilot_id)
              .bind_text(3, a.node)
              .bind_text(4, a.hostname)
              .bind(5, a.pid)
              .bind(6, a.slots)
              .bind_text(7, a.label)
              .bind(8, a.connected ? 1 : 0)
              .bind(9, a.registered_ms)
              .bind_blob(10, a.session_key)
              .bind(11, a.epoch)
              .run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("writing agent {}", a.id));
    for (const auto& p : b.pilots)
      if (upsert_pilot.bind(1, p.id)
              .bind_blob(2, p.spec)
              .bind_text(3, p.state)
              .bind(4, p.created_ms)
              .bind(5, p.ended_ms)
              .bind_text(6, p.reason)
              .bind_text(7, p.batch_id)
              .run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("writing pilot {}", p.id));
    for (const auto& r : b.resources)
      if (upsert_resource.bind_text(1, r.name).bind_blob(2, r.spec).run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("writing resource {}", r.name));
    for (const auto& name : b.resources_removed)
      if (delete_resource.bind_text(1, name).run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("removing resource {}", name));
    for (auto id : b.jobs_forgotten)
      if (delete_job.bind(1, id).run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("forgetting job {}", id));
    for (auto id : b.specs_forgotten)
      if (delete_spec.bind(1, id).run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("forgetting spec {}", id));
    for (auto id : b.groups_forgotten)
      if (delete_group.bind(1, id).run() != SQLITE_OK)
        return sqlite_error(db, fmt::format("forgetting group {}", id));
    for (auto [name, next] : {std::pair{"job", b.next_job_id}, std::pair{"spec", b.next_spec_id},
                              std::pair{"group", b.next_group_id}})
      if (next > 0 && upsert_counter.bind_text(1, name).bind(2, next).run() != SQLITE_OK)
        return sqlite_error(db, "writing the next ids");
    return ok_result();
  }

  /// After the commit that forgot them: a forgotten job's output files go too.
  void remove_output(std::uint64_t job) {
    auto dir = options.output_dir / std::to_string(job);
    std::string prefix = dir.string() + "/";
    for (auto it = open_files.begin(); it != open_files.end();) {
      if (it->first.starts_with(prefix)) {
        ::close(it->second);
        file_index.erase(it->first);
        it = open_files.erase(it);
      } else {
        ++it;
      }
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    if (ec)
      log::warn("could not remove the output of forgotten job {} ({}): {}", job, dir.string(),
                ec.message());
  }

  /// Applies a group of batches in one transaction and posts their completions.
  void commit_group(std::vector<WriteBatch>& group) {
    for (auto& b : group)
      for (auto& w : b.output)
        write_output(w);
    // The id reservation before the rows that use the ids (a failure fails the transaction).
    IdFloors reserve;
    for (auto& b : group) {
      reserve.job = std::max(reserve.job, b.reserve_job_ids);
      reserve.group = std::max(reserve.group, b.reserve_group_ids);
    }
    Result<void> reserved = ok_result();
    if ((reserve.job || reserve.group) && !options.ids_file.empty())
      reserved = write_id_reservation(options.ids_file, reserve);
    Result<void> result = reserved.ok() ? exec(db, "BEGIN") : reserved.error();
    if (reserved.ok() && result.ok()) {
      for (auto& b : group) {
        result = apply(b);
        if (!result.ok())
          break;
      }
      if (result.ok()) {
        result = exec(db, "COMMIT");
        if (!result.ok())
          result = sqlite_error(db, "committing");
      }
      if (!result.ok()) {
        (void)exec(db, "ROLLBACK");
        log::error("store transaction failed and was rolled back: {}", result.error().to_string());
      }
    }
    if (result.ok())
      for (auto& b : group)
        for (auto id : b.jobs_forgotten)
          remove_output(id);
    commits.fetch_add(1, std::memory_order_relaxed);
    std::vector<std::function<void(const Result<void>&)>> callbacks;
    for (auto& b : group)
      for (auto& cb : b.on_commit)
        callbacks.push_back(std::move(cb));
    if (!callbacks.empty())
      post([callbacks = std::move(callbacks), result]() {
        for (const auto& cb : callbacks)
          cb(result);
      });
  }

  void serve_read(ReadRequest& r) {
    auto path = output_path(options.output_dir, r.job_id, r.attempt, r.stream);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    Result<std::string> result = std::string();
    if (fd >= 0) {
      std::string data(r.max, '\0');
      ssize_t n = ::pread(fd, data.data(), r.max, static_cast<off_t>(r.offset));
      ::close(fd);
      if (n < 0)
        result = make_error(ErrorCode::Io, fmt::format("cannot read {}: {}", path.string(),
                                                       errno_text(errno)));
      else {
        data.resize(static_cast<size_t>(n));
        result = std::move(data);
      }
    } else if (errno != ENOENT) {
      result = make_error(ErrorCode::Io,
                          fmt::format("cannot open {}: {}", path.string(), errno_text(errno)));
    }
    post([done = std::move(r.done), result = std::move(result)]() mutable {
      done(std::move(result));
    });
  }

  void run() {
    thread_id = std::this_thread::get_id();
    std::vector<WriteBatch> group;
    auto last_commit = std::chrono::steady_clock::now() - kCommitSpacing;
    while (true) {
      std::deque<WorkItem> work;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty() && stopping)
          return;
        // Group commit under load: at most one transaction per kCommitSpacing, so a busy hub
        // commits many changes per fsync; after a quiet spell the first commit is immediate.
        auto next = last_commit + kCommitSpacing;
        if (!stopping && std::chrono::steady_clock::now() < next)
          cv.wait_until(lock, next, [&] { return stopping; });
        work.swap(queue);
      }
      last_commit = std::chrono::steady_clock::now();
      // Consecutive writes form one transaction; a read ends the group so that it sees them.
      for (auto& item : work) {
        if (auto* b = std::get_if<WriteBatch>(&item)) {
          group.push_back(std::move(*b));
          continue;
        }
        if (!group.empty()) {
          commit_group(group);
          group.clear();
        }
        serve_read(std::get<ReadRequest>(item));
      }
      if (!group.empty()) {
        commit_group(group);
        group.clear();
      }
    }
  }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Store::~Store() { stop(); }

Result<std::unique_ptr<Store>> Store::open(const Options& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  SORTIE_TRY(make_dirs(options.output_dir, 0700));
  SORTIE_ASSIGN_OR_RETURN(db, open_db(options.db_path));
  impl->db = db;
  sqlite3_busy_timeout(db, 5000);
  // WAL: readers never block the writer and a commit appends to the log. FULL syncs the log at
  // every commit, which group commit makes affordable; NORMAL survives process crashes (kill -9)
  // but may lose the last commits on power loss.
  auto wal = exec(db, "PRAGMA journal_mode=WAL");
  if (!wal.ok()) {
    const std::string& why = wal.error().message;
    if (why.find("malformed") != std::string::npos) // the first page is readable, others not
      return damaged(options.db_path, why);
    if (why.find("not a database") != std::string::npos)
      return make_error(ErrorCode::InvalidArgument,
                        fmt::format("{} is not a sortie store (not an SQLite database: another "
                                    "program's file, or its first page is damaged): restore it "
                                    "from a backup, or move it away to start with no jobs",
                                    options.db_path.string()));
    return make_error(ErrorCode::InvalidArgument,
                      fmt::format("{} cannot be opened as a sortie store: {}",
                                  options.db_path.string(), why));
  }
  SORTIE_TRY(exec(db, options.synchronous_full ? "PRAGMA synchronous=FULL"
                                               : "PRAGMA synchronous=NORMAL"));
  // The hub is the only process that opens its store (it holds the profile lock), so SQLite may
  // keep its locks for the whole session instead of taking them with fcntl() per transaction.
  SORTIE_TRY(exec(db, "PRAGMA locking_mode=EXCLUSIVE"));
  SORTIE_TRY(exec(db, "PRAGMA temp_store=MEMORY"));
  SORTIE_TRY(exec(db, "PRAGMA cache_size=-65536"));
  SORTIE_TRY(check_intact(db, options.db_path, "quick_check"));
  SORTIE_TRY(migrate(db, options.db_path, kSchemaVersion));
  impl->prepare();
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

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
  for (const char* table : {"specs", "groups", "jobs", "agents", "pilots", "resources", "counters"}) {
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
                                    std::tuple{"spec", "specs", std::uint64_t{0}}}) {
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

Result<LoadedState> Store::load() {
  sqlite3* db = impl_->db;
  LoadedState s;
  {
    Statement q(db, "SELECT id, body FROM specs ORDER BY id");
    while (q.step())
      s.specs.push_back({static_cast<std::uint64_t>(q.i64(0)), q.text(1)});
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the specs table: {}", sqlite3_errmsg(db)));
  }
  {
    SORTIE_ASSIGN_OR_RETURN(reserved, read_id_reservation(impl_->options.ids_file));
    s.reserved_job_ids = reserved.job;
    s.reserved_group_ids = reserved.group;
  }
  {
    Statement q(db, "SELECT name, next FROM counters");
    while (q.step()) {
      auto next = static_cast<std::uint64_t>(q.i64(1));
      std::string name = q.text(0);
      (name == "job" ? s.next_job_id : name == "spec" ? s.next_spec_id : s.next_group_id) = next;
    }
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the counters table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT id, name, created_ms, first_job, count, env FROM groups ORDER BY id");
    while (q.step())
      s.groups.push_back({static_cast<std::uint64_t>(q.i64(0)), q.text(1), q.i64(2),
                          static_cast<std::uint64_t>(q.i64(3)),
                          static_cast<std::uint64_t>(q.i64(4)), q.text(5)});
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the groups table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT id, spec_id, group_id, array_index, state, attempt, agent_id, "
                    "exit_code, signal, submit_ms, start_ms, end_ms, history, user_cpu_us, "
                    "system_cpu_us, max_rss_kib, reason, limits, gpus FROM jobs ORDER BY id");
    while (q.step()) {
      JobRow j;
      j.id = static_cast<std::uint64_t>(q.i64(0));
      j.spec_id = static_cast<std::uint64_t>(q.i64(1));
      j.group_id = static_cast<std::uint64_t>(q.i64(2));
      if (!q.is_null(3))
        j.array_index = q.i64(3);
      int state = static_cast<int>(q.i64(4));
      if (state < 1 || state > 8)
        return make_error(ErrorCode::Internal,
                          fmt::format("job {} has an invalid state {} in the store", j.id, state));
      j.state = static_cast<JobState>(state);
      j.attempt = static_cast<std::uint32_t>(q.i64(5));
      j.agent_id = static_cast<std::uint64_t>(q.i64(6));
      if (!q.is_null(7))
        j.exit_code = static_cast<int>(q.i64(7));
      if (!q.is_null(8))
        j.signal = static_cast<int>(q.i64(8));
      j.submit_ms = q.i64(9);
      j.start_ms = q.i64(10);
      j.end_ms = q.i64(11);
      j.history = decode_history(q.text(12));
      j.usage = {q.i64(13), q.i64(14), q.i64(15)};
      j.reason = q.text(16);
      j.limits = q.text(17);
      j.gpus = decode_gpus(q.text(18));
      s.jobs.push_back(std::move(j));
    }
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the jobs table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT id, pilot_id, node, hostname, pid, slots, label, connected, "
                    "registered_ms, session_key, epoch FROM agents ORDER BY id");
    while (q.step())
      s.agents.push_back({static_cast<std::uint64_t>(q.i64(0)),
                          static_cast<std::uint64_t>(q.i64(1)), q.text(2), q.text(3),
                          static_cast<int>(q.i64(4)), static_cast<std::uint32_t>(q.i64(5)),
                          q.text(6), q.i64(7) != 0, q.i64(8), q.text(9),
                          static_cast<std::uint64_t>(q.i64(10))});
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the agents table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT id, spec, state, created_ms, ended_ms, reason, batch_id FROM pilots "
                    "ORDER BY id");
    while (q.step())
      s.pilots.push_back({static_cast<std::uint64_t>(q.i64(0)), q.text(1), q.text(2), q.i64(3),
                          q.i64(4), q.text(5), q.text(6)});
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the pilots table: {}", sqlite3_errmsg(db)));
  }
  {
    Statement q(db, "SELECT name, spec FROM resources ORDER BY name");
    while (q.step())
      s.resources.push_back({q.text(0), q.text(1)});
    if (q.failed())
      return damaged(impl_->options.db_path, fmt::format("reading the resources table: {}", sqlite3_errmsg(db)));
  }
  return s;
}

void Store::start(Post post) {
  impl_->post = std::move(post);
  impl_->thread = std::thread([this] { impl_->run(); });
}

void Store::submit(WriteBatch batch) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.emplace_back(std::move(batch));
  }
  impl_->cv.notify_one();
}

void Store::read_output(std::uint64_t job_id,
                        std::uint32_t attempt,
                        int stream,
                        std::int64_t offset,
                        std::size_t max,
                        std::function<void(Result<std::string>)> done) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.emplace_back(ReadRequest{job_id, attempt, stream, offset, max, std::move(done)});
  }
  impl_->cv.notify_one();
}

void Store::stop() {
  if (!impl_ || !impl_->thread.joinable())
    return;
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_one();
  impl_->thread.join();
}

std::uint64_t Store::commits() const { return impl_->commits.load(std::memory_order_relaxed); }

Result<void> create_schema_version_for_test(const std::filesystem::path& db_path, int target) {
  SORTIE_ASSIGN_OR_RETURN(db, open_db(db_path));
  auto r = migrate(db, db_path, target);
  sqlite3_close(db);
  return r;
}

} // namespace sortie::store
