// SPDX-License-Identifier: Apache-2.0
// What the CLI prints: job and pilot tables, details, JSON, progress lines.
#include "cli/output.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/clock.hpp"
#include "common/text.hpp"

namespace sortie::cli {
namespace {

using nlohmann::json;

std::string exit_text(const JobInfo& j) {
  if (j.exit_code)
    return std::to_string(*j.exit_code);
  if (j.signal)
    return fmt::format("sig{}", *j.signal);
  return "-";
}

std::string elapsed(const JobInfo& j) {
  if (j.start_ms == 0)
    return "-";
  // A job that ended has its end time, even in the millisecond it started.
  std::int64_t end = j.end_ms >= j.start_ms && j.end_ms != 0 ? j.end_ms : wall_now_ms();
  return format_duration_ms(end - j.start_ms);
}

json job_to_json(const JobInfo& j) {
  json o = {{"id", j.id.value},
            {"state", job_state_name(j.state)},
            {"exit_code", j.exit_code ? json(*j.exit_code) : json(nullptr)},
            {"signal", j.signal ? json(*j.signal) : json(nullptr)},
            {"node", j.node.empty() ? json(nullptr) : json(j.node)},
            {"nodes", j.nodes},
            {"attempt", j.attempt},
            {"array_index", j.array_index ? json(*j.array_index) : json(nullptr)},
            {"group", j.group.value},
            {"name", j.name},
            {"submit_ms", j.submit_ms},
            {"start_ms", j.start_ms ? json(j.start_ms) : json(nullptr)},
            {"end_ms", j.end_ms ? json(j.end_ms) : json(nullptr)},
            {"reason", j.reason},
            {"limits", j.limits},
            {"gpus", j.gpus},
            {"group_name", j.group_name}};
  if (j.spec) {
    json env = json::object();
    for (const auto& [k, v] : j.spec->env)
      env[k] = v;
    json after = json::array();
    for (auto id : j.spec->after)
      after.push_back(id.value);
    o["spec"] = {{"argv", j.spec->argv},
                 {"env", env},
                 {"cwd", j.spec->cwd},
                 {"slots", j.spec->slots},
                 {"label", j.spec->label},
                 {"name", j.spec->name},
                 {"memory_bytes", j.spec->memory_bytes},
                 {"gpus", j.spec->gpus},
                 {"hosts", j.spec->hosts},
                 {"prefer_hosts", j.spec->prefer_hosts},
                 {"max_per_node", j.spec->max_per_node},
                 {"priority", j.spec->priority},
                 {"queue_timeout_ms", j.spec->queue_timeout_ms},
                 {"run_timeout_ms", j.spec->run_timeout_ms},
                 {"time_request_ms", j.spec->time_request_ms},
                 {"retries", j.spec->retries ? json(*j.spec->retries) : json(nullptr)},
                 {"retry_on_failure", j.spec->retry_on_failure},
                 {"mpi_ranks", j.spec->mpi_ranks},
                 {"ranks_per_node", j.spec->ranks_per_node},
                 {"after", after}};
    json hist = json::array();
    for (const auto& h : j.history)
      hist.push_back({{"state", job_state_name(h.state)}, {"time_ms", h.time_ms}});
    o["history"] = hist;
    o["usage"] = {{"user_cpu_us", j.usage.user_cpu_us},
                  {"system_cpu_us", j.usage.system_cpu_us},
                  {"max_rss_kib", j.usage.max_rss_kib}};
  }
  return o;
}


} // namespace

std::string table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> width;
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i)
        width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size())
        line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string jobs_table(const std::vector<JobInfo>& jobs) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "EXIT", "NODE", "ATTEMPT", "ELAPSED", "NAME"}};
  for (const auto& j : jobs)
    rows.push_back({std::to_string(j.id.value), job_state_name(j.state), exit_text(j),
                    j.node.empty() ? "-" : j.node, std::to_string(j.attempt), elapsed(j),
                    j.name.empty() ? (j.array_index ? fmt::format("[{}]", *j.array_index) : "")
                                   : printable(j.name)});
  return table(rows);
}

std::string jobs_json(const std::vector<JobInfo>& jobs) {
  json a = json::array();
  for (const auto& j : jobs)
    a.push_back(job_to_json(j));
  return a.dump(2) + "\n";
}

std::string job_json(const JobInfo& job) { return job_to_json(job).dump(2) + "\n"; }

std::string job_details(const JobInfo& j) {
  std::string out;
  auto line = [&](const char* k, const std::string& v) { out += fmt::format("{:<12} {}\n", k, v); };
  line("id:", std::to_string(j.id.value));
  if (!j.name.empty())
    line("name:", printable(j.name));
  line("state:", job_state_name(j.state));
  if (!j.reason.empty())
    line("reason:", printable(j.reason));
  if (j.exit_code)
    line("exit code:", std::to_string(*j.exit_code));
  if (j.signal)
    line("signal:", std::to_string(*j.signal));
  line("node:", j.node.empty() ? "-" : j.node);
  if (!j.nodes.empty())
    line("nodes:", fmt::format("{}", fmt::join(j.nodes, ", ")));
  line("attempt:", std::to_string(j.attempt));
  if (j.array_index)
    line("array index:", std::to_string(*j.array_index));
  line("group:", j.group_name.empty() ? std::to_string(j.group.value)
                                       : fmt::format("{} ({})", j.group.value, printable(j.group_name)));
  if (!j.gpus.empty()) {
    std::string g;
    for (auto d : j.gpus)
      g += (g.empty() ? "" : ",") + std::to_string(d);
    line("gpus:", g);
  }
  if (j.spec) {
    std::string argv;
    for (const auto& a : j.spec->argv) {
      bool plain = !a.empty() && a.find_first_of(" \t\n'\"\\$`") == std::string::npos;
      argv += (argv.empty() ? "" : " ") + (plain ? a : "'" + a + "'");
    }
    line("command:", argv);
    line("cwd:", j.spec->cwd.empty() ? "(agent's)" : j.spec->cwd);
    line("slots:", std::to_string(j.spec->slots));
    if (!j.spec->label.empty())
      line("label:", j.spec->label);
    if (j.spec->memory_bytes)
      line("memory:", fmt::format("{}{}", format_size_bytes(j.spec->memory_bytes),
                                  j.limits.empty() ? "" : " (enforced by " + j.limits + ")"));
    if (j.spec->gpus)
      line("gpus asked:", std::to_string(j.spec->gpus));
    if (!j.spec->hosts.empty())
      line("hosts:", join(j.spec->hosts, ","));
    if (!j.spec->prefer_hosts.empty())
      line("prefers:", join(j.spec->prefer_hosts, ","));
    if (j.spec->max_per_node)
      line("per node:", fmt::format("at most {} of its group", j.spec->max_per_node));
    if (j.spec->priority)
      line("priority:", std::to_string(j.spec->priority));
    if (j.spec->queue_timeout_ms)
      line("queue tmo:", format_duration_ms(j.spec->queue_timeout_ms));
    if (j.spec->run_timeout_ms)
      line("run tmo:", format_duration_ms(j.spec->run_timeout_ms));
    if (j.spec->time_request_ms)
      line("time req:", format_duration_ms(j.spec->time_request_ms));
    if (j.spec->mpi_ranks)
      line("mpi:", fmt::format("{} ranks{}", j.spec->mpi_ranks,
                               j.spec->ranks_per_node
                                   ? fmt::format(", at most {} per node", j.spec->ranks_per_node)
                                   : ""));
    if (j.spec->retries)
      line("retries:", fmt::format("{}{}", *j.spec->retries,
                                   j.spec->retry_on_failure ? " (also on failure)" : ""));
    if (!j.spec->after.empty()) {
      std::vector<std::string> ids;
      for (auto id : j.spec->after)
        ids.push_back(std::to_string(id.value));
      line("after:", join(ids, ","));
    }
    for (const auto& [k, v] : j.spec->env)
      line("env:", k + "=" + v);
  }
  line("submitted:", format_time_ms(j.submit_ms));
  line("started:", format_time_ms(j.start_ms));
  line("ended:", format_time_ms(j.end_ms));
  if (j.start_ms)
    line("elapsed:", elapsed(j));
  if (j.end_ms && j.start_ms)
    line("usage:", fmt::format("user {:.3f}s, system {:.3f}s, max RSS {}",
                               static_cast<double>(j.usage.user_cpu_us) / 1e6,
                               static_cast<double>(j.usage.system_cpu_us) / 1e6,
                               format_size_bytes(static_cast<std::uint64_t>(j.usage.max_rss_kib) * 1024)));
  if (!j.history.empty()) {
    out += "history:\n";
    std::int64_t first = j.history.front().time_ms;
    for (const auto& h : j.history)
      out += fmt::format("  {}  {:<10} +{}\n", format_time_ms(h.time_ms), job_state_name(h.state),
                         format_duration_ms(h.time_ms - first));
  }
  return out;
}

std::string status_text(const HubStatus& s) {
  std::string jobs;
  for (const auto& [k, v] : s.jobs_by_state)
    jobs += fmt::format("{}{} {}", jobs.empty() ? "" : ", ", v, k);
  return fmt::format("hub:      running (pid {}, sortie {})\n"
                     "profile:  {}\n"
                     "address:  {}\n"
                     "up since: {}\n"
                     "agents:   {} ({} of {} slots busy)\n"
                     "pilots:   {}\n"
                     "jobs:     {}\n"
                     "store:    {} ({} commits since the hub started)\n",
                     s.pid, s.version, s.profile, s.address, format_time_ms(s.started_ms), s.agents,
                     s.slots_used, s.slots_total, s.pilots, jobs.empty() ? "none" : jobs,
                     s.store_path, s.store_commits);
}

std::string status_json(const HubStatus& s) {
  json o = {{"running", true},      {"version", s.version},         {"profile", s.profile},
            {"pid", s.pid},         {"started_ms", s.started_ms},   {"address", s.address},
            {"agents", s.agents},   {"pilots", s.pilots},           {"slots_total", s.slots_total},
            {"slots_used", s.slots_used}, {"jobs_by_state", s.jobs_by_state},
            {"store", s.store_path},      {"store_commits", s.store_commits}};
  return o.dump(2) + "\n";
}

std::string pilots_table(const std::vector<PilotInfo>& pilots) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "RESOURCE", "STATE", "NODES", "SLOTS", "LABEL", "TIME LEFT", "BATCH ID", "REASON"}};
  auto now = wall_now_ms();
  for (const auto& p : pilots)
    rows.push_back({std::to_string(p.id.value), p.spec.resource, p.state,
                    p.spec.nodes ? fmt::format("{}/{}", p.nodes_up, p.spec.nodes)
                                 : fmt::format("{}", p.nodes_up),
                    fmt::format("{}/{}", p.slots_used, p.slots_total),
                    p.spec.label.empty() ? "-" : p.spec.label,
                    p.end_ms == 0 || p.state == "ended" || p.state == "failed" || p.state == "cancelled"
                        ? "-"
                        : format_duration_ms(std::max<std::int64_t>(0, p.end_ms - now)),
                    p.batch_id.empty() ? "-" : p.batch_id, one_line(p.reason, 100)});
  return table(rows);
}

std::string one_line(const std::string& text, std::size_t width) {
  // The first line, made printable, cut at `width` characters; `pilot show` has the rest.
  std::string first = printable(text.substr(0, text.find('\n')));
  bool cut = first.size() > width || first.size() < printable(text).size();
  if (first.size() > width)
    first.resize(width);
  return cut ? first + "... (pilot show)" : first;
}

std::string pilot_detail(const PilotInfo& p) {
  std::string out;
  auto line = [&](const char* key, const std::string& value) {
    out += fmt::format("{:<10} {}\n", key, value);
  };
  line("pilot:", std::to_string(p.id.value));
  line("resource:", p.spec.resource);
  line("state:", p.state);
  if (!p.reason.empty()) {
    // Every reason it collected, one per line (nodes that failed, the batch queue's word).
    std::string reasons = printable(p.reason);
    for (std::size_t at; (at = reasons.find("; ")) != std::string::npos;)
      reasons.replace(at, 2, "\n           ");
    line("reason:", reasons);
  }
  line("nodes:", p.spec.nodes ? fmt::format("{} of {} up", p.nodes_up, p.spec.nodes)
                              : fmt::format("{} up", p.nodes_up));
  for (const auto& n : p.nodes)
    line("", fmt::format("{} (up)", n));
  line("slots:", fmt::format("{} used of {}", p.slots_used, p.slots_total));
  if (!p.spec.label.empty())
    line("label:", p.spec.label);
  if (!p.batch_id.empty())
    line("batch id:", p.batch_id);
  line("created:", format_time_ms(p.created_ms));
  if (p.end_ms)
    line("ends:", format_time_ms(p.end_ms));
  return out;
}

std::string pilots_json(const std::vector<PilotInfo>& pilots) {
  json a = json::array();
  for (const auto& p : pilots)
    a.push_back({{"id", p.id.value},
                 {"resource", p.spec.resource},
                 {"state", p.state},
                 {"nodes", p.spec.nodes},
                 {"nodes_up", p.nodes_up},
                 {"node_names", p.spec.node_names},
                 {"slots_per_node", p.spec.slots_per_node},
                 {"slots_used", p.slots_used},
                 {"slots_total", p.slots_total},
                 {"label", p.spec.label},
                 {"created_ms", p.created_ms},
                 {"end_ms", p.end_ms ? json(p.end_ms) : json(nullptr)},
                 {"gpus_per_node", p.spec.gpus_per_node},
                 {"memory_per_node", p.spec.memory_per_node},
                 {"walltime_ms", p.spec.walltime_ms},
                 {"queue", p.spec.queue},
                 {"batch_options", p.spec.batch_options},
                 {"batch_id", p.batch_id},
                 {"reason", p.reason}});
  return a.dump(2) + "\n";
}

std::string resources_table(const std::vector<ResourceSpec>& resources) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "TYPE", "LOCATION", "GATEWAY", "INSTALL DIR", "FROM"}};
  for (const auto& r : resources)
    rows.push_back({r.name, r.type,
                    !r.machinefile.empty() ? "machinefile " + r.machinefile
                    : r.location.empty()   ? "-"
                                           : r.location,
                    r.gateway.empty() ? "-" : r.gateway,
                    r.install_dir.empty() ? "-" : r.install_dir,
                    r.type == "local" && r.name == "local" ? "built in"
                    : r.from_config                        ? "config.toml"
                                                           : "resource add"});
  return table(rows);
}

std::string resources_json(const std::vector<ResourceSpec>& resources) {
  json a = json::array();
  for (const auto& r : resources)
    a.push_back({{"name", r.name},
                 {"type", r.type},
                 {"location", r.location},
                 {"install_dir", r.install_dir},
                 {"tmp_dir", r.tmp_dir},
                 {"gateway", r.gateway},
                 {"ssh_options", r.ssh_options},
                 {"machinefile", r.machinefile},
                 {"from_config", r.from_config}});
  return a.dump(2) + "\n";
}

std::string submitted_json(const Submitted& s) {
  json o = {{"first_id", s.first_id.value},
            {"count", s.count},
            {"last_id", s.first_id.value + s.count - 1},
            {"group", s.group.value}};
  return o.dump() + "\n";
}

std::string progress_line(const WaitProgress& p, int width) {
  std::string tail = fmt::format(" {}/{} done", p.finished, p.total);
  if (p.failed)
    tail += fmt::format(", {} failed", p.failed);
  if (p.cancelled)
    tail += fmt::format(", {} cancelled", p.cancelled);
  int bar = std::max(10, std::min(50, width - static_cast<int>(tail.size()) - 3));
  int filled = p.total ? static_cast<int>(static_cast<double>(bar) * static_cast<double>(p.finished) /
                                          static_cast<double>(p.total))
                       : bar;
  return fmt::format("[{}{}]{}", std::string(static_cast<std::size_t>(filled), '#'),
                     std::string(static_cast<std::size_t>(bar - filled), '.'), tail);
}

} // namespace sortie::cli
