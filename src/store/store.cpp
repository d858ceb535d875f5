// SPDX-License-Identifier: Apache-2.0
// The durable store: SQLite in WAL mode, group commit on its own thread, output files.
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
#include "store/sqlite.hpp"
#include "store/task_table.hpp"

namespace sortie::store {
namespace {


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


// Things the store thread works on, in queue order.
struct ReadRequest {
  std::filesystem::path path;
  std::int64_t offset;
  std::size_t max;
  std::function<void(Result<std::string>)> done;
};
struct TaskRead {
  TaskQuery query;
  std::function<void(Result<TaskRows>)> done;
};
using WorkItem = std::variant<WriteBatch, ReadRequest, TaskRead>;

} // namespace

std::filesystem::path value_path(const std::filesystem::path& output_dir, std::uint64_t task_id,
                                 int part) {
  return output_dir / "tasks" / fmt::format("{}.{}", task_id, part == 0 ? "arg" : "res");
}

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
  TaskTable tasks;
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
    tasks.finalize();
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
    tasks.prepare(db);
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
    return tasks.apply(b);
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
  /// A piece of a large task value, at its offset (a resend rewrites the same bytes).
  Result<void> write_value(const ValueWrite& w) {
    auto path = value_path(options.output_dir, w.task_id, w.part);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 && errno == ENOENT) {
      ::mkdir(path.parent_path().c_str(), 0700);
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    }
    if (fd < 0)
      return make_error(ErrorCode::Io, fmt::format("cannot open {}: {}", path.string(),
                                                   errno_text(errno)));
    std::size_t done = 0;
    while (done < w.data.size()) {
      ssize_t n = ::pwrite(fd, w.data.data() + done, w.data.size() - done,
                           static_cast<off_t>(w.offset + done));
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0) {
        int err = errno;
        ::close(fd);
        return make_error(ErrorCode::Io, fmt::format("cannot write {}: {}", path.string(),
                                                     errno_text(err)));
      }
      done += static_cast<std::size_t>(n);
    }
    // Synced with the commit that acknowledges it, when commits are (store_sync = "full").
    if (options.synchronous_full)
      ::fdatasync(fd);
    ::close(fd);
    return ok_result();
  }

  void commit_group(std::vector<WriteBatch>& group) {
    for (auto& b : group)
      for (auto& w : b.output)
        write_output(w);
    Result<void> values_written = ok_result();
    for (auto& b : group)
      for (auto& w : b.values)
        if (auto r = write_value(w); !r.ok() && values_written.ok())
          values_written = r.error();
    // The id reservation before the rows that use the ids (a failure fails the transaction).
    IdFloors reserve;
    for (auto& b : group) {
      reserve.job = std::max(reserve.job, b.reserve_job_ids);
      reserve.group = std::max(reserve.group, b.reserve_group_ids);
    }
    Result<void> reserved = ok_result();
    if ((reserve.job || reserve.group) && !options.ids_file.empty())
      reserved = write_id_reservation(options.ids_file, reserve);
    if (!values_written.ok())
      reserved = values_written.error(); // the whole group fails: nothing claims those bytes
    TaskTable::fold(group);
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
      for (auto& b : group) {
        for (auto id : b.jobs_forgotten)
          remove_output(id);
        for (auto [id, part] : b.values_removed) {
          std::error_code ec;
          std::filesystem::remove(value_path(options.output_dir, id, part), ec);
        }
      }
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
    const auto& path = r.path;
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
    while (true) {
      std::deque<WorkItem> work;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty() && stopping)
          return;
        // Group commit: a transaction takes every batch queued while the previous one was
        // being written and synced, so a busy hub commits many changes per fsync while a quiet
        // one commits each change at once (a task's round trip waits for two commits).
        work.swap(queue);
      }
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
        if (auto* r = std::get_if<ReadRequest>(&item)) {
          serve_read(*r);
        } else {
          auto& read = std::get<TaskRead>(item);
          post([done = std::move(read.done), rows = tasks.read(read.query)]() mutable {
            done(std::move(rows));
          });
        }
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

namespace {

std::int64_t pragma_value(sqlite3* db, const char* sql) {
  Statement q(db, sql);
  return q.step() ? q.i64(0) : 0;
}

// A log that grows makes each commit's fdatasync write the file's new size too (a journal commit
// of the file system: ~1.6x the cost on the machine of bench/README.md). SQLite writes
// its log from the start again after each checkpoint, so a log that starts at its full size is
// only ever overwritten. The zeros are written, not fallocate()d: unwritten extents cost as much
// as growth when first written. SQLite reads a frame that does not carry the log's salt and
// checksum as the log's end, so zeros past the last frame are never taken for frames. Best effort:
// without room for it the log grows as it would have.
void give_log_its_full_size(sqlite3* db, const std::filesystem::path& db_path) {
  // Everything logged so far into the database first (after a crash too): the log is then empty.
  if (auto r = exec(db, "PRAGMA wal_checkpoint(TRUNCATE)"); !r.ok()) {
    log::debug("store: the log keeps its size: {}", r.error().message);
    return;
  }
  std::int64_t page = pragma_value(db, "PRAGMA page_size");
  std::int64_t pages = pragma_value(db, "PRAGMA wal_autocheckpoint");
  // The header, then the frames written between two checkpoints (and some of a large commit).
  auto full = static_cast<off_t>(32 + (pages + pages / 4) * (page + 24));
  std::string path = db_path.string() + "-wal";
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC); // SQLite's own file, never made here
  if (fd < 0)
    return;
  struct stat st {};
  off_t from = ::fstat(fd, &st) == 0 ? st.st_size : full;
  const std::string zeros(1 << 20, '\0');
  bool written = true;
  for (off_t at = from; at < full && written;) {
    auto n = std::min<off_t>(static_cast<off_t>(zeros.size()), full - at);
    ssize_t w = ::pwrite(fd, zeros.data(), static_cast<size_t>(n), at);
    written = w > 0;
    at += written ? w : 0;
  }
  if (from < full && (!written || ::fdatasync(fd) != 0)) {
    log::debug("store: the log keeps its size: {}", std::strerror(errno));
    (void)!::ftruncate(fd, from); // the room goes back
  }
  ::close(fd);
}

} // namespace

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
  if (options.full_size_log)
    give_log_its_full_size(db, options.db_path);
  impl->prepare();
  return std::unique_ptr<Store>(new Store(std::move(impl)));
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
      if (name == "job")
        s.next_job_id = next;
      else if (name == "spec")
        s.next_spec_id = next;
      else if (name == "group")
        s.next_group_id = next;
      else if (name == "task")
        s.next_task_id = next;
      else if (name == "engine")
        s.next_engine_id = next;
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
  SORTIE_TRY(load_tasks(db, impl_->options.db_path, s));
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
    impl_->queue.emplace_back(ReadRequest{output_path(impl_->options.output_dir, job_id, attempt,
                                                      stream),
                                          offset, max, std::move(done)});
  }
  impl_->cv.notify_one();
}

void Store::read_value(std::uint64_t task_id, int part, std::int64_t offset, std::size_t max,
                       std::function<void(Result<std::string>)> done) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.emplace_back(ReadRequest{value_path(impl_->options.output_dir, task_id, part),
                                          offset, max, std::move(done)});
  }
  impl_->cv.notify_one();
}

void Store::read_tasks(TaskQuery query, std::function<void(Result<TaskRows>)> done) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->queue.emplace_back(TaskRead{std::move(query), std::move(done)});
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
