// SPDX-License-Identifier: Apache-2.0
// `sortie engine start|list|stop` and `sortie task list|show` (docs/engines.md).
#include <algorithm>
#include <cstdio>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/output.hpp"
#include "common/clock.hpp"
#include "common/text.hpp"
#include "sortie/tasks.hpp"

namespace sortie::cli {
namespace {

using json = nlohmann::json;

Result<std::unique_ptr<Session>> open_session(const Globals& g) {
  ConnectOptions o;
  o.profile = g.profile;
  o.client_name = "cli";
  return Session::connect(o);
}

std::string age(std::int64_t since_ms) {
  if (since_ms <= 0)
    return "-";
  return format_duration_ms(std::max<std::int64_t>(0, wall_now_ms() - since_ms)) + " ago";
}

json engine_json(const EngineInfo& e) {
  return {{"id", e.id},          {"job", e.job.value},       {"node", e.node},
          {"label", e.label},    {"state", e.busy ? "busy" : "idle"},
          {"rank", e.rank},      {"size", e.size},           {"pid", e.pid},
          {"tasks_done", e.tasks_done}, {"running", e.running}, {"started_ms", e.started_ms},
          {"kind", e.kind},      {"link", e.link}};
}

json task_json(const TaskInfo& t) {
  return {{"id", t.id},
          {"state", t.state},
          {"engine", t.engine},
          {"label", t.label},
          {"handler", t.handler},
          {"attempts", t.attempts},
          {"submit_ms", t.submit_ms},
          {"start_ms", t.start_ms},
          {"end_ms", t.end_ms},
          {"error_type", t.error_type},
          {"error_message", t.error_message},
          {"payload_bytes", t.payload_bytes},
          {"result_bytes", t.result_bytes}};
}

} // namespace

int engine_start(const Globals& g, const EngineStartArgs& a) {
  if (a.count == 0 || a.count > 10'000)
    return fail(make_error(ErrorCode::InvalidArgument, "--count: between 1 and 10000 engines"));
  if (a.ranks_per_node > 0 && !a.mpi)
    return fail(make_error(ErrorCode::InvalidArgument,
                           "--ranks-per-node is for MPI engines: add --mpi"));
  if (a.mpi && a.ranks_per_node > a.count)
    return fail(make_error(ErrorCode::InvalidArgument,
                           fmt::format("--ranks-per-node {} is more than the {} ranks (--count)",
                                       a.ranks_per_node, a.count)));
  JobSpec spec;
  spec.kind = "engine";
  spec.argv = a.command.empty()
                  ? std::vector<std::string>{"/usr/bin/python3", "-m", "sortie.engine"}
                  : a.command;
  spec.label = a.label;
  spec.slots = a.slots;
  spec.restart = a.restart;
  spec.name = a.name.empty() ? "engine" : a.name;
  if (!a.memory.empty()) {
    auto m = parse_size_bytes(a.memory);
    if (!m.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--memory: " + m.error().message));
    spec.memory_bytes = *m;
  }
  auto client = connect(g, true);
  if (!client.ok())
    return fail(client.error());
  if (a.mpi) { // one job, its ranks the engines
    spec.mpi_ranks = a.count;
    spec.ranks_per_node = a.ranks_per_node;
  }
  std::vector<JobSpec> specs(a.mpi ? 1 : a.count, spec);
  auto submitted = client->submit_batch(specs, "engines");
  if (!submitted.ok())
    return fail(submitted.error());
  std::uint64_t first = submitted->first_id.value;
  if (specs.size() == 1)
    std::printf("%llu\n", static_cast<unsigned long long>(first));
  else
    std::printf("%llu-%llu\n", static_cast<unsigned long long>(first),
                static_cast<unsigned long long>(first + a.count - 1));
  std::fflush(stdout);
  return kExitOk;
}

int engine_list(const Globals& g, const std::string& label, bool as_json) {
  auto session = open_session(g);
  if (!session.ok())
    return fail(session.error());
  auto engines = (*session)->engines(label);
  if (!engines.ok())
    return fail(engines.error());
  if (as_json) {
    json a = json::array();
    for (const auto& e : *engines)
      a.push_back(engine_json(e));
    std::printf("%s\n", a.dump(2).c_str());
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "JOB", "NODE", "LABEL", "RANK", "STATE", "TASKS DONE", "RUNNING", "STARTED"}};
  for (const auto& e : *engines)
    rows.push_back({std::to_string(e.id), std::to_string(e.job.value), e.node,
                    e.label.empty() ? "-" : e.label, fmt::format("{}/{}", e.rank, e.size),
                    e.busy ? "busy" : "idle", std::to_string(e.tasks_done),
                    std::to_string(e.running), age(e.started_ms)});
  std::fputs(table(rows).c_str(), stdout);
  return kExitOk;
}

int engine_stop(const Globals& g, const std::vector<std::uint64_t>& ids, bool all) {
  if (ids.empty() && !all)
    return fail(make_error(ErrorCode::InvalidArgument,
                           "name the engines to stop (ids from `sortie engine list`), or --all"));
  auto session = open_session(g);
  if (!session.ok())
    return fail(session.error());
  auto engines = (*session)->engines();
  if (!engines.ok())
    return fail(engines.error());
  std::set<std::uint64_t> jobs;
  for (auto id : ids) {
    auto it = std::find_if(engines->begin(), engines->end(),
                           [&](const EngineInfo& e) { return e.id == id; });
    if (it == engines->end())
      return fail(make_error(ErrorCode::NotFound,
                             fmt::format("engine {} does not exist: `sortie engine list` shows "
                                         "the engines",
                                         id)));
    jobs.insert(it->job.value);
  }
  if (all)
    for (const auto& e : *engines)
      jobs.insert(e.job.value);
  if (jobs.empty()) {
    std::fprintf(stderr, "sortie: no engines run\n");
    return kExitOk;
  }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  JobSelector sel;
  for (auto j : jobs)
    sel.ranges.push_back({JobId(j), JobId(j)});
  auto r = client->cancel(sel, "engine stopped");
  if (!r.ok())
    return fail(r.error());
  std::fprintf(stderr, "sortie: stopping %zu engine job%s\n", jobs.size(),
               jobs.size() == 1 ? "" : "s");
  return kExitOk;
}

int task_list(const Globals& g, std::uint64_t limit, bool as_json) {
  auto session = open_session(g);
  if (!session.ok())
    return fail(session.error());
  std::uint64_t matched = 0;
  auto tasks = (*session)->tasks({}, limit, &matched);
  if (!tasks.ok())
    return fail(tasks.error());
  if (as_json) {
    json a = json::array();
    for (const auto& t : *tasks)
      a.push_back(task_json(t));
    std::printf("%s\n", a.dump(2).c_str());
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "ENGINE", "LABEL", "ATTEMPTS", "SUBMITTED", "ERROR"}};
  for (const auto& t : *tasks)
    rows.push_back({std::to_string(t.id), t.state, t.engine ? std::to_string(t.engine) : "-",
                    t.label.empty() ? "-" : t.label, std::to_string(t.attempts),
                    age(t.submit_ms),
                    printable(t.error_type.empty() ? "" : t.error_type + ": " + t.error_message)
                        .substr(0, 100)});
  std::fputs(table(rows).c_str(), stdout);
  if (matched > tasks->size())
    std::fprintf(stderr, "sortie: showing the newest %s of %s tasks: --limit N shows more (at "
                         "most 1000 by default), `sortie task show ID` any one\n",
                 with_thousands(tasks->size()).c_str(), with_thousands(matched).c_str());
  return kExitOk;
}

int task_show(const Globals& g, std::uint64_t id, bool as_json) {
  auto session = open_session(g);
  if (!session.ok())
    return fail(session.error());
  auto tasks = (*session)->tasks({id});
  if (!tasks.ok())
    return fail(tasks.error());
  if (tasks->empty())
    return fail(make_error(ErrorCode::NotFound,
                           fmt::format("task {} does not exist (never submitted, or forgotten)", id)));
  const TaskInfo& t = tasks->front();
  if (as_json) {
    std::printf("%s\n", task_json(t).dump(2).c_str());
    return kExitOk;
  }
  auto line = [](const char* k, const std::string& v) { std::printf("%-11s %s\n", k, v.c_str()); };
  line("id:", std::to_string(t.id));
  line("state:", t.state);
  line("engine:", t.engine ? std::to_string(t.engine) : "-");
  line("label:", t.label.empty() ? "-" : t.label);
  line("handler:", t.handler.empty() ? "(Python call)" : t.handler);
  line("attempts:", std::to_string(t.attempts));
  line("submitted:", age(t.submit_ms));
  line("started:", age(t.start_ms));
  line("ended:", age(t.end_ms));
  line("arguments:", format_size_bytes(t.payload_bytes));
  line("result:", format_size_bytes(t.result_bytes));
  if (!t.error_type.empty())
    line("error:", printable(t.error_type + ": " + t.error_message));
  return kExitOk;
}

int task_output(const Globals& g, std::uint64_t id, bool follow) {
  auto session = open_session(g);
  if (!session.ok())
    return fail(session.error());
  Session& s = **session;
  if (!follow) {
    auto tasks = s.tasks({id});
    if (!tasks.ok())
      return fail(tasks.error());
    if (!tasks->empty() && (tasks->front().state == "queued" || tasks->front().state == "running"))
      return fail(make_error(ErrorCode::FailedPrecondition,
                             fmt::format("task {} is {}: its output comes with its result (add "
                                         "--follow to print it as it is printed)",
                                         id, tasks->front().state)));
  }
  auto watched = follow ? s.follow({id}) : s.watch({id});
  if (!watched.ok())
    return fail(watched.error());
  std::uint64_t got = 0; // bytes of the output printed (or said to be skipped)
  auto print = [&](const std::string& data, std::uint64_t offset) {
    if (offset < got && offset == 0) {
      std::fputs("[sortie: the task runs again on another engine; its output restarts]\n", stderr);
      got = 0;
    }
    if (offset > got) {
      std::fprintf(stderr, "[sortie: %llu bytes of output not shown; `sortie task output %llu` "
                           "has them once the task ended]\n",
                   static_cast<unsigned long long>(offset - got),
                   static_cast<unsigned long long>(id));
      got = offset;
    }
    if (offset + data.size() > got) {
      std::fwrite(data.data() + (got - offset), 1, data.size() - (got - offset), stdout);
      std::fflush(stdout);
      got = offset + data.size();
    }
  };
  while (true) {
    auto events = s.next_events(-1);
    if (!events.ok())
      return fail(events.error());
    for (const auto& piece : events->output)
      if (piece.id == id)
        print(piece.data, piece.offset);
    for (const auto& r : events->results) {
      if (r.id != id)
        continue;
      if (r.state == TaskOutcome::Unknown)
        return fail(make_error(ErrorCode::NotFound,
                               fmt::format("task {} does not exist (never submitted, or "
                                           "forgotten)",
                                           id)));
      if (got < r.output.size()) // the rest, from the whole output the result carries
        std::fwrite(r.output.data() + got, 1, r.output.size() - got, stdout);
      return kExitOk;
    }
  }
}

} // namespace sortie::cli
