// SPDX-License-Identifier: Apache-2.0
// `sortie submit`, `sortie map` and `sortie job list|show|wait|logs|cancel|forget`.
#include "cli/commands.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "agent/agent.hpp"
#include "sortie/job_files.hpp"
#include "cli/output.hpp"
#include "common/mapfile.hpp"
#include "common/clock.hpp"
#include "common/files.hpp"
#include "common/hub_file.hpp"
#include "common/log.hpp"
#include "common/profile.hpp"
#include "common/text.hpp"
#include "common/version.hpp"
#include "hub/server.hpp"
#include "launch/process.hpp"
#include "sortie/client.hpp"
#include "store/store.hpp"

extern char** environ;

namespace sortie::cli {

// ---------------------------------------------------------------------------------------------
// jobs


/// Submits; a submission the hub finds too large to take unconfirmed (confirm_above) is asked
/// about on a terminal, and otherwise fails with the hub's words (which name --yes).
template <typename Submit>
Result<Submitted> submit_confirming(bool yes, Submit submit) {
  auto s = submit(yes);
  if (s.ok() || yes || s.error().code != ErrorCode::FailedPrecondition ||
      s.error().message.find("confirm_above") == std::string::npos || ::isatty(0) != 1 ||
      !stderr_is_tty())
    return s;
  std::fprintf(stderr, "sortie: %s\nsortie: submit them? [y/N] ", s.error().message.c_str());
  std::fflush(stderr);
  char answer[16] = {};
  if (std::fgets(answer, sizeof answer, stdin) && (answer[0] == 'y' || answer[0] == 'Y'))
    return submit(true);
  return make_error(ErrorCode::Cancelled, "nothing was submitted");
}

void add_job_options(CLI::App* cmd, JobOptions& o) {
  auto add = [&](CLI::Option* opt) { o.given.push_back(opt); };
  add(cmd->add_option("--label", o.label, "run only on pilots with this label"));
  add(cmd->add_option("--slots", o.slots, "slots (threads) it needs; sets OMP_NUM_THREADS")
          ->check(CLI::Range(1, 4096)));
  add(cmd->add_option("--memory", o.memory, "memory it may use, e.g. 4G (a bare number is MiB, as in Slurm): reserved and enforced"));
  add(cmd->add_option("--gpus", o.gpus, "GPUs it needs; it sees them in CUDA_VISIBLE_DEVICES")
          ->check(CLI::Range(0, 64)));
  add(cmd->add_option("--env", o.env, "NAME=VALUE added to its environment (repeatable)"));
  add(cmd->add_option("--export", o.export_env,
                      "your environment it gets, as sbatch: ALL (default; not PWD, SSH_*, "
                      "DISPLAY...), NONE (the node's only), or NAME[=VALUE],... (may list ALL)"));
  add(cmd->add_option("--cwd", o.cwd, "working directory (default: the current one)"));
  add(cmd->add_option("--name", o.name, "a name shown in listings"));
  add(cmd->add_option("--host", o.hosts, "run only on one of these nodes: H[,H2...]"));
  add(cmd->add_option("--prefer-host", o.prefer_hosts,
                      "run on these nodes when they can take it, else anywhere: H[,H2...]"));
  add(cmd->add_option("--max-per-node", o.max_per_node,
                      "at most K jobs of this submission's group on one node at once"));
  add(cmd->add_option("--group", o.group,
                      "name the submission's group; named groups join for --max-per-node"));
  add(cmd->add_option("--priority", o.priority, "higher runs first (default 0)"));
  add(cmd->add_option("--queue-timeout", o.queue_timeout,
                      "timed_out if not started within this long, e.g. 15m"));
  add(cmd->add_option("--run-timeout", o.run_timeout,
                      "killed (with its children) and timed_out after running this long"));
  add(cmd->add_option("--time-request", o.time_request,
                      "start only on a pilot with at least this much walltime left"));
  add(cmd->add_option("--retries", o.retries, "run again up to N times if its node is lost"));
  add(cmd->add_flag("--retry-on-failure", o.retry_on_failure,
                    "retries also cover a non-zero exit or a signal"));
  add(cmd->add_option("--after", o.after, "start only after these jobs succeeded: ID[,ID...]"));
  add(cmd->add_option("--mpi", o.mpi, "an MPI job of N ranks, started with mpiexec")
          ->check(CLI::Range(1, 4096)));
  add(cmd->add_option("--ranks-per-node", o.ranks_per_node, "at most K ranks on one node: spread over nodes of one pilot"));
  cmd->add_flag("--json", o.json, "print JSON");
  cmd->add_flag("--yes", o.yes,
                "yes, that many jobs: needed above the hub's confirm_above (100,000 by default)");
}

/// Applies the given options to `spec`; `cwd_default` when neither the option nor the spec has one.
Result<void> apply_job_options(const JobOptions& o, JobSpec& spec, bool set_default_cwd) {
  auto list = [](const std::string& text) {
    std::vector<std::string> out;
    for (auto& part : split(text, ','))
      if (!trim(part).empty())
        out.emplace_back(trim(part));
    return out;
  };
  auto duration = [](const char* flag, const std::string& text) -> Result<std::int64_t> {
    auto d = parse_duration_ms(text);
    if (!d.ok())
      return make_error(ErrorCode::InvalidArgument, fmt::format("{}: {}", flag, d.error().message));
    return *d;
  };
  if (o.has("--label"))
    spec.label = o.label;
  if (o.has("--slots"))
    spec.slots = o.slots;
  if (o.has("--name"))
    spec.name = o.name;
  if (o.has("--gpus"))
    spec.gpus = o.gpus;
  if (o.has("--memory")) {
    auto b = parse_size_bytes(o.memory);
    if (!b.ok())
      return make_error(ErrorCode::InvalidArgument, "--memory: " + b.error().message);
    spec.memory_bytes = *b;
  }
  for (const auto& kv : o.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return make_error(ErrorCode::InvalidArgument, fmt::format("--env '{}' is not NAME=VALUE", kv));
    spec.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  if (o.has("--export")) {
    if (auto r = exported_environment(o.export_env); !r.ok()) // its error, before any connection
      return r.error();
    spec.export_env = o.export_env;
  }
  if (o.has("--host"))
    spec.hosts = list(o.hosts);
  if (o.has("--prefer-host"))
    spec.prefer_hosts = list(o.prefer_hosts);
  if (o.has("--max-per-node"))
    spec.max_per_node = o.max_per_node;
  if (o.has("--priority"))
    spec.priority = o.priority;
  if (o.has("--queue-timeout")) {
    SORTIE_ASSIGN_OR_RETURN(d, duration("--queue-timeout", o.queue_timeout));
    spec.queue_timeout_ms = d;
  }
  if (o.has("--run-timeout")) {
    SORTIE_ASSIGN_OR_RETURN(d, duration("--run-timeout", o.run_timeout));
    spec.run_timeout_ms = d;
  }
  if (o.has("--time-request")) {
    SORTIE_ASSIGN_OR_RETURN(d, duration("--time-request", o.time_request));
    spec.time_request_ms = d;
  }
  if (o.has("--retries"))
    spec.retries = o.retries;
  if (o.has("--retry-on-failure"))
    spec.retry_on_failure = o.retry_on_failure;
  if (o.has("--mpi"))
    spec.mpi_ranks = o.mpi;
  if (o.has("--ranks-per-node"))
    spec.ranks_per_node = o.ranks_per_node;
  if (o.has("--after")) {
    spec.after.clear();
    for (const auto& part : list(o.after)) {
      auto id = parse_int(part, 1, INT64_MAX);
      if (!id.ok())
        return make_error(ErrorCode::InvalidArgument,
                          fmt::format("--after: '{}' is not a job id", part));
      spec.after.push_back(JobId(static_cast<std::uint64_t>(*id)));
    }
  }
  // Like sbatch, jobs run where they were submitted unless told otherwise.
  std::error_code ec;
  if (o.has("--cwd"))
    spec.cwd = std::filesystem::absolute(o.cwd, ec).lexically_normal().string();
  else if (set_default_cwd && spec.cwd.empty())
    spec.cwd = std::filesystem::current_path(ec).string();
  return ok_result();
}

void print_submitted(const Submitted& s, bool json) {
  if (!s.warning.empty())
    std::fprintf(stderr, "sortie: note: %s\n", s.warning.c_str());
  if (json)
    std::fputs(submitted_json(s).c_str(), stdout);
  else if (s.count == 1)
    std::printf("%llu\n", static_cast<unsigned long long>(s.first_id.value));
  else
    std::printf("%llu-%llu\n", static_cast<unsigned long long>(s.first_id.value),
                static_cast<unsigned long long>(s.first_id.value + s.count - 1));
}

int submit(const Globals& g,
           const JobOptions& o,
           const std::string& array,
           const std::string& file,
           std::vector<std::string> command) {
  std::vector<SubmitItem> items;
  std::string group = o.group;
  if (!file.empty()) {
    if (!command.empty())
      return fail(make_error(ErrorCode::InvalidArgument,
                             "give the command in the job file or on the command line, not both"));
    auto jf = read_job_file(file);
    if (!jf.ok())
      return fail(jf.error());
    if (group.empty())
      group = jf->group;
    items = std::move(jf->jobs);
  } else {
    if (command.empty())
      return fail(make_error(ErrorCode::InvalidArgument,
                             "no command given: sortie submit [options] -- PROGRAM [ARGS...], or "
                             "--file job.toml"));
    items.push_back({JobSpec{}, std::nullopt});
    items[0].spec.argv = std::move(command);
  }
  for (auto& item : items)
    if (auto r = apply_job_options(o, item.spec, true); !r.ok())
      return fail(r.error());
  if (!array.empty()) {
    if (items.size() != 1)
      return fail(make_error(ErrorCode::InvalidArgument, "--array needs exactly one job"));
    auto r = parse_array_range(array);
    if (!r.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--array: " + r.error().message));
    items[0].array = *r;
  }
  auto client = connect(g, true);
  if (!client.ok())
    return fail(client.error());
  auto s = submit_confirming(o.yes, [&](bool confirmed) {
    return client->submit_items(items, group, confirmed);
  });
  if (!s.ok())
    return fail(s.error());
  print_submitted(*s, o.json);
  return kExitOk;
}


int map_jobs(const Globals& g,
             const JobOptions& o,
             const std::string& mapfile,
             const std::string& each_line,
             const std::string& array,
             const std::vector<std::string>& command) {
  int sources = !mapfile.empty() + !each_line.empty() + !array.empty();
  if (sources != 1)
    return fail(make_error(ErrorCode::InvalidArgument,
                           "give exactly one of --mapfile FILE, --each-line FILE or --array A-B"));
  if (command.empty())
    return fail(make_error(ErrorCode::InvalidArgument,
                           "no command given: sortie map ... -- PROGRAM [ARGS...] {}"));
  JobSpec base;
  base.argv = command;
  if (auto r = apply_job_options(o, base, true); !r.ok())
    return fail(r.error());
  Result<std::vector<JobSpec>> listed = std::vector<JobSpec>{};
  if (!mapfile.empty()) {
    listed = jobs_from_map_file(base, mapfile);
  } else if (!each_line.empty()) {
    listed = jobs_from_lines(base, each_line);
  } else {
    auto r = parse_array_range(array);
    if (!r.ok())
      return fail(make_error(ErrorCode::InvalidArgument, "--array: " + r.error().message));
    listed = jobs_from_range(base, *r);
  }
  if (!listed.ok())
    return fail(listed.error());
  const std::vector<JobSpec>& specs = *listed;
  if (specs.empty())
    return fail(make_error(ErrorCode::InvalidArgument, "nothing to run: the list is empty"));
  auto client = connect(g, true);
  if (!client.ok())
    return fail(client.error());
  auto s = submit_confirming(o.yes, [&](bool confirmed) {
    return client->submit_batch(specs, o.group, confirmed);
  });
  if (!s.ok())
    return fail(s.error());
  if (o.json) {
    std::fputs(submitted_json(*s).c_str(), stdout);
  } else {
    // The group is what one waits for: `sortie job wait --group G`.
    if (!s->warning.empty())
      std::fprintf(stderr, "sortie: note: %s\n", s->warning.c_str());
    std::printf("%llu\n", static_cast<unsigned long long>(s->group.value));
    std::fprintf(stderr, "group %llu: %s (%llu-%llu)\n",
                 static_cast<unsigned long long>(s->group.value), count_of(s->count, "job").c_str(),
                 static_cast<unsigned long long>(s->first_id.value),
                 static_cast<unsigned long long>(s->first_id.value + s->count - 1));
  }
  return kExitOk;
}


Result<JobSelector> selector_from(const SelectArgs& a, bool default_all) {
  SORTIE_ASSIGN_OR_RETURN(sel, parse_ids(a.ids));
  for (const auto& gtext : a.groups) {
    auto gid = parse_int(gtext, 1, INT64_MAX);
    if (gid.ok())
      sel.groups.push_back(GroupId(static_cast<std::uint64_t>(*gid)));
    else
      sel.group_names.push_back(gtext);
  }
  sel.all = a.all;
  if (sel.ranges.empty() && sel.groups.empty() && sel.group_names.empty() && !sel.all) {
    if (!default_all)
      return make_error(ErrorCode::InvalidArgument,
                        "name the jobs: ids (17, 17-20, 3,5), --group G, or --all");
    sel.all = true;
  }
  return sel;
}

/// Rows `job list` prints on a terminal unless told (--limit).
constexpr std::uint64_t kDefaultListLimit = 100;

int job_list(const Globals& g, const SelectArgs& a, const std::vector<std::string>& states,
             bool as_json, std::optional<std::uint64_t> limit_option) {
  auto sel = selector_from(a, true);
  if (!sel.ok())
    return fail(sel.error());
  std::vector<JobState> want;
  for (const auto& s : states)
    for (const auto& name : split(s, ',')) {
      auto st = parse_job_state(name);
      if (!st)
        return fail(make_error(ErrorCode::InvalidArgument,
                               fmt::format("'{}' is not a job state: use queued, assigned, running, "
                                           "succeeded, failed, cancelled, timed_out or lost",
                                           name)));
      want.push_back(*st);
    }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  // A terminal gets the newest jobs and a count of the rest; JSON gets every job unless told.
  std::uint64_t limit = limit_option.value_or(as_json ? 0 : kDefaultListLimit);
  auto page = client->jobs_page(*sel, want, limit);
  if (!page.ok())
    return fail(page.error());
  std::fputs((as_json ? jobs_json(page->jobs) : jobs_table(page->jobs)).c_str(), stdout);
  if (!as_json && page->matched > page->jobs.size()) {
    std::string by_state;
    for (const auto& [state, n] : page->counts)
      by_state += fmt::format("{}{} {}", by_state.empty() ? "" : ", ", with_thousands(n),
                              job_state_name(state));
    std::fprintf(stderr, "sortie: showing the newest %s of %s jobs (%s): --limit 0 shows all, "
                         "or select ids, --group or --state\n",
                 with_thousands(page->jobs.size()).c_str(), with_thousands(page->matched).c_str(),
                 by_state.c_str());
  }
  return kExitOk;
}

/// Calls `call` with the jobs the arguments name (which must name some) on a connected client.
template <typename Call>
auto on_selected(const Globals& g, const SelectArgs& a, Call call)
    -> decltype(call(std::declval<Client&>(), std::declval<const JobSelector&>())) {
  SORTIE_ASSIGN_OR_RETURN(sel, selector_from(a, false));
  SORTIE_ASSIGN_OR_RETURN(client, connect(g));
  return call(client, sel);
}

int job_forget(const Globals& g, const SelectArgs& a) {
  auto r = on_selected(g, a, [](Client& c, const JobSelector& sel) { return c.forget(sel); });
  if (!r.ok())
    return fail(r.error());
  std::printf("%s forgotten", count_of(r->forgotten, "job").c_str());
  if (r->not_ended)
    std::printf(", %s not ended kept (cancel them first)", count_of(r->not_ended, "job").c_str());
  if (r->not_found)
    std::printf(", %llu not found", static_cast<unsigned long long>(r->not_found));
  std::printf("\n");
  return r->not_found ? kExitFailure : kExitOk;
}

int job_show(const Globals& g, const std::string& id_text, bool as_json) {
  auto id = parse_int(id_text, 1, INT64_MAX);
  if (!id.ok())
    return fail(make_error(ErrorCode::InvalidArgument,
                           fmt::format("'{}' is not a job id", id_text)));
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  auto job = client->job(JobId(static_cast<std::uint64_t>(*id)));
  if (!job.ok())
    return fail(job.error());
  std::fputs((as_json ? job_json(*job) : job_details(*job)).c_str(), stdout);
  return kExitOk;
}

int job_wait(const Globals& g, const SelectArgs& a, const std::string& timeout, bool quiet) {
  auto sel = selector_from(a, false);
  if (!sel.ok())
    return fail(sel.error());
  std::int64_t timeout_ms = -1;
  if (!timeout.empty()) {
    auto t = parse_duration_ms(timeout);
    if (!t.ok())
      return fail(t.error());
    timeout_ms = *t;
  }
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  bool bar = stderr_is_tty() && !quiet;
  auto on_progress = [&](const WaitProgress& p) {
    std::fprintf(stderr, "\r%s\033[K", progress_line(p, terminal_width()).c_str());
    std::fflush(stderr);
  };
  auto result = bar ? client->wait(*sel, on_progress, timeout_ms) : client->wait(*sel, {}, timeout_ms);
  if (bar)
    std::fputs("\n", stderr);
  if (!result.ok())
    return fail(result.error());
  if (result->all_succeeded()) {
    if (!quiet)
      std::printf("%s succeeded\n", count_of(result->total, "job").c_str());
    return kExitOk;
  }
  std::vector<std::string> ids;
  for (auto id : result->failed_ids)
    ids.push_back(std::to_string(id.value));
  std::fprintf(stderr, "sortie: %llu of %s did not succeed (%llu failed, %llu cancelled): %s%s\n",
               static_cast<unsigned long long>(result->total - result->succeeded),
               count_of(result->total, "job").c_str(),
               static_cast<unsigned long long>(result->failed),
               static_cast<unsigned long long>(result->cancelled), join(ids, " ").c_str(),
               result->total - result->succeeded > ids.size() ? " ..." : "");
  return kExitFailure;
}

/// `job logs IDS|--group G [-f] [--stderr]`: one job's output as it is; several jobs' one after
/// the other, each line prefixed with "[ID] ". With -f, follows each to its end and exits 0 only
/// if every job succeeded (1 otherwise), like `job wait`.
int job_logs(const Globals& g, const SelectArgs& a, bool follow, bool use_stderr,
             std::uint32_t attempt) {
  if (a.ids.empty() && a.groups.empty())
    return fail(make_error(ErrorCode::InvalidArgument,
                           "name the jobs: job logs ID [ID...] (ranges like 3-7), or --group G"));
  auto sel = selector_from(a, false);
  if (!sel.ok())
    return fail(sel.error());
  auto client = connect(g);
  if (!client.ok())
    return fail(client.error());
  std::vector<JobId> ids;
  bool single = a.groups.empty() && a.ids.size() == 1 && a.ids[0].find_first_of(",-") == std::string::npos;
  if (single) {
    ids.push_back(sel->ranges[0].first);
  } else {
    auto jobs = client->jobs(*sel);
    if (!jobs.ok())
      return fail(jobs.error());
    for (const auto& j : *jobs)
      ids.push_back(j.id);
    if (ids.empty())
      return fail(make_error(ErrorCode::NotFound, "no job matches"));
  }
  bool all_succeeded = true;
  for (auto id : ids) {
    std::string prefix = single ? "" : fmt::format("[{}] ", id.value);
    bool at_line_start = true;
    auto r = client->output(id, use_stderr ? OutputStream::Stderr : OutputStream::Stdout, follow,
                            [&](std::string_view data) {
                              if (prefix.empty()) {
                                std::fwrite(data.data(), 1, data.size(), stdout);
                              } else {
                                for (char c : data) {
                                  if (at_line_start)
                                    std::fputs(prefix.c_str(), stdout);
                                  std::fputc(c, stdout);
                                  at_line_start = c == '\n';
                                }
                              }
                              if (std::ferror(stdout))
                                return false;
                              std::fflush(stdout);
                              return true;
                            },
                            attempt);
    if (!at_line_start)
      std::fputc('\n', stdout);
    if (!r.ok()) {
      if (single || r.error().code != ErrorCode::NotFound)
        return fail(r.error());
      continue; // one of several that has not started: the others still print
    }
    if (follow) {
      auto info = client->job(id);
      if (!info.ok())
        return fail(info.error());
      all_succeeded = all_succeeded && info->state == JobState::Succeeded;
    }
  }
  return all_succeeded ? kExitOk : kExitFailure;
}

int job_cancel(const Globals& g, const SelectArgs& a) {
  auto r = on_selected(g, a, [](Client& c, const JobSelector& sel) { return c.cancel(sel); });
  if (!r.ok())
    return fail(r.error());
  std::printf("%llu cancelled, %llu already finished", static_cast<unsigned long long>(r->cancelled),
              static_cast<unsigned long long>(r->already_finished));
  if (r->not_found)
    std::printf(", %llu not found", static_cast<unsigned long long>(r->not_found));
  std::printf("\n");
  return r->not_found ? kExitFailure : kExitOk;
}

} // namespace sortie::cli
