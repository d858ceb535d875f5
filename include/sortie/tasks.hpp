// SPDX-License-Identifier: Apache-2.0
// Tasks and engines in the client library (docs/engines.md): a Session submits calls to engines
// and receives their results as the hub pushes them; an EngineLink is the engine's side, used by
// an engine process to take tasks from its agent and give back results.
//
//   auto session = sortie::Session::connect({.start_if_needed = true});
//   auto ids = (*session)->submit({{.handler = "evolve", .payload = bytes}});   // durable now
//   auto results = (*session)->next_results(1000);                               // as they end
//
// A Session is thread-safe: any thread may submit, watch or query while one thread takes
// results (next_results). One thread of its own does all the I/O.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sortie/client.hpp"
#include "sortie/result.hpp"

namespace sortie {

/// One call to an engine.
struct TaskCall {
  std::string handler;        ///< what to run ("" for a Python engine: a pickled call)
  std::string payload;        ///< its argument bytes
  std::uint64_t engine = 0;   ///< direct: only this engine (0: load-balanced)
  std::string label;          ///< load-balanced: only engines with this label ("": any)
  std::uint32_t retries = 0;  ///< times it runs again elsewhere if its engine dies
  std::int64_t timeout_ms = 0; ///< fails with TaskTimeout after running this long (0: none)
  std::int32_t priority = 0;  ///< higher first
  /// Not stored: acknowledged at once, kept by the hub in memory only until its result is
  /// pushed, gone if the hub stops meanwhile (Client::call's calls). Arguments up to 4 MiB.
  bool transient = false;
};

enum class TaskOutcome { Done, Failed, Lost, Unknown };

struct TaskResult {
  std::uint64_t id = 0;
  TaskOutcome state = TaskOutcome::Unknown;
  std::string value;          ///< Done: the returned bytes; Failed: the error, if serialized
  std::string error_type;     ///< Failed/Lost: "TaskTimeout", "EngineLost", or the remote type
  std::string error_message;
  std::string traceback;
  std::string output;         ///< what the task printed
  std::uint64_t engine = 0;
  std::int64_t start_ms = 0, end_ms = 0;
};

/// A piece of what a running task printed (Session::follow): bytes from `offset` of its output.
/// An offset beyond what came before means a gap (this link fell behind); one below it, that
/// the task runs again from the start (on another engine). The result has the whole output.
struct TaskOutputPiece {
  std::uint64_t id = 0;
  std::uint64_t offset = 0;
  std::string data;
};

/// What next_events() brings: ended tasks' results and running tasks' output.
struct TaskEvents {
  std::vector<TaskResult> results;
  std::vector<TaskOutputPiece> output;
};

struct EngineInfo {
  std::uint64_t id = 0;
  JobId job;
  std::string node;
  std::string label;
  bool busy = false;
  std::uint32_t rank = 0, size = 1;
  int pid = 0;
  std::uint64_t tasks_done = 0;
  std::uint32_t running = 0;
  std::int64_t started_ms = 0;
  std::string kind;
  /// "direct": its frames go straight to the hub (an engine of a local pilot); "agent": routed
  /// through its agent (05-tasks.md §5.9).
  std::string link;
};

struct TaskInfo {
  std::uint64_t id = 0;
  std::string state; ///< queued, running, done, failed, lost
  std::uint64_t engine = 0;
  std::string label;
  std::string handler;
  std::int64_t submit_ms = 0, start_ms = 0, end_ms = 0;
  std::string error_type, error_message;
  std::uint32_t attempts = 0;
  std::uint64_t payload_bytes = 0, result_bytes = 0;
};

struct TaskForgetSummary {
  std::uint64_t forgotten = 0, not_ended = 0, not_found = 0;
};

const char* task_outcome_name(TaskOutcome outcome);

/// The error_type of a call whose handler returned a sortie::Error: "sortie::Error(not found)".
std::string engine_error_type(ErrorCode code);
/// The code of such an error_type (none for other types: exceptions, TaskTimeout, EngineLost).
std::optional<ErrorCode> engine_error_code(std::string_view error_type);

class Session {
public:
  /// Connects (or, with start_if_needed, starts and connects) as Client::connect does.
  static Result<std::unique_ptr<Session>> connect(const ConnectOptions& options = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Submits calls; returns their ids once they are durable in the hub's store. With `watch`,
  /// their results come through next_results(); with `arrived` too, those that reach this
  /// session before submit() returns (short tasks: with the reply) go into *arrived instead.
  Result<std::vector<std::uint64_t>> submit(std::vector<TaskCall> calls, bool watch = true,
                                            std::vector<TaskResult>* arrived = nullptr);
  /// The results of these tasks (ended already or later) come through next_results(); ids the
  /// hub does not know come back as Unknown.
  Result<void> watch(const std::vector<std::uint64_t>& ids);
  /// watch(), and what these tasks print while they run comes through next_events() as they
  /// print it (the last 64 KiB printed before, first).
  Result<void> follow(const std::vector<std::uint64_t>& ids);
  /// Results pushed so far, waiting up to `timeout_ms` (< 0: for ever) for the first; empty on
  /// timeout. Unavailable once the link to the hub ended.
  Result<std::vector<TaskResult>> next_results(std::int64_t timeout_ms);
  /// Results and followed output pushed so far, waiting up to `timeout_ms` for some. Output not
  /// taken is kept up to 16 MiB (older pieces are dropped beyond: a gap).
  Result<TaskEvents> next_events(std::int64_t timeout_ms);
  /// Results (or the error the session ended with, once) as they arrive, called on the
  /// session's I/O thread instead of being kept for next_results(). Set it before submitting;
  /// it must not block or call this session.
  using ResultHandler = std::function<void(Result<std::vector<TaskResult>>)>;
  void on_results(ResultHandler handler);
  /// Returns once `done()` holds or the session ended. On a unix-socket link this thread reads
  /// and handles what arrives meanwhile: one thread wake-up fewer per round trip than waiting
  /// for the I/O thread to hand it over. `done` is called with the session's lock held, and
  /// when what arrives may have changed it: it must not call the session.
  void wait_until(const std::function<bool()>& done);
  /// Runs `fn`, this thread staying the reader of a unix-socket link throughout: between the
  /// waits `fn` makes (a request's reply, then wait_until), the I/O thread does not take over.
  void read_here(const std::function<void()>& fn);
  Result<std::vector<EngineInfo>> engines(const std::string& label = {});
  /// These tasks (none: the newest `limit`, 0: 1000); `matched`: how many the hub has.
  Result<std::vector<TaskInfo>> tasks(const std::vector<std::uint64_t>& ids, std::uint64_t limit = 0,
                                      std::uint64_t* matched = nullptr);
  Result<TaskForgetSummary> forget(const std::vector<std::uint64_t>& ids);
  void close();

private:
  struct Impl;
  explicit Session(std::unique_ptr<Impl> impl);
  static Result<void> watch_ids(Impl& impl, const std::vector<std::uint64_t>& ids, bool follow);
  Result<TaskEvents> next_events(std::int64_t timeout_ms, bool with_output);
  Result<std::vector<std::uint64_t>> submit_claiming(std::vector<TaskCall> calls, bool watch,
                                                     std::uint64_t* claim);
  std::unique_ptr<Impl> impl_;
};

/// The engine's side: an engine process connects to the socket its agent made for it (from
/// SORTIE_ENGINE_SOCKET, with SORTIE_ENGINE_KEY), takes tasks and gives back results. Results
/// are kept until the hub has stored them and sent again if the hub restarted meanwhile. One
/// thread uses it (and another may send_output).
class EngineLink {
public:
  struct Task {
    std::uint64_t id = 0;
    std::string handler;
    std::string payload;
    std::int64_t timeout_ms = 0;
  };
  /// The hub's own socket for an engine of a local pilot (SORTIE_ENGINE_DIRECT_SOCKET and
  /// _KEY), tried first: the engine's frames skip its agent then, and go through it again when
  /// that link ends (05-tasks.md §5.9).
  struct DirectSocket {
    std::string socket, key;
  };
  static Result<std::unique_ptr<EngineLink>> connect(const std::string& socket,
                                                     const std::string& key, std::uint32_t rank,
                                                     std::uint32_t size, const std::string& kind,
                                                     std::int64_t timeout_ms = 30'000,
                                                     const DirectSocket& direct = {});
  ~EngineLink();
  std::uint64_t id() const;
  const std::string& label() const;
  /// Tasks to run, waiting up to `timeout_ms` for some (empty on timeout). Unavailable when the
  /// agent is gone or ended the engine; an error the hub sent (it does not want this engine)
  /// as that error.
  Result<std::vector<Task>> next(std::int64_t timeout_ms);
  /// Results of tasks it ran (id, state Done or Failed, value, error, output).
  Result<void> send(std::vector<TaskResult> results);
  /// What a running task printed so far from `offset` on, for those following it live (at most
  /// 1 MiB at a time). Unlike the rest, callable from another thread while one uses the link.
  Result<void> send_output(std::uint64_t task, std::uint64_t offset, std::string_view data);

private:
  struct Impl;
  explicit EngineLink(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace sortie
