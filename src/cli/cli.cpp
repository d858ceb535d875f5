// SPDX-License-Identifier: Apache-2.0
// The `sortie` command: its options and subcommands (CLI11), each wired to its command function
// (commands.hpp), and help that suggests the option meant.
#include "cli/cli.hpp"

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
#include "cli/commands.hpp"

namespace sortie::cli {
namespace {

/// " (did you mean --label?)" for the first unknown --option in `args` close to a known one.
std::string did_you_mean(CLI::App& app, const std::vector<std::string>& args) {
  std::vector<std::string> known;
  std::vector<CLI::App*> apps = {&app};
  while (!apps.empty()) {
    CLI::App* a = apps.back();
    apps.pop_back();
    for (const auto* opt : a->get_options())
      for (const auto& name : opt->get_lnames())
        known.push_back("--" + name);
    for (auto* sub : a->get_subcommands([](CLI::App*) { return true; }))
      apps.push_back(sub);
  }
  for (const auto& arg : args) {
    if (arg == "--")
      break;
    if (arg.rfind("--", 0) != 0)
      continue;
    std::string word = arg.substr(0, arg.find('='));
    if (std::find(known.begin(), known.end(), word) != known.end())
      continue;
    if (auto best = closest(word, known, 2); !best.empty())
      return fmt::format(" (did you mean {}?)", best);
  }
  return {};
}

std::pair<std::vector<std::string>, std::vector<std::string>> split_command(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  static const std::vector<std::string> with_value = {
      "--label", "--slots", "--env", "--export", "--cwd", "--name", "--array", "--memory", "--gpus", "--host",
      "--prefer-host", "--max-per-node", "--group", "--priority", "--queue-timeout",
      "--run-timeout", "--time-request", "--retries", "--after", "--file", "--mapfile", "--mpi",
      "--ranks-per-node",
      "--each-line"};
  std::size_t i = 0;
  // Global options, then the subcommand.
  while (i < args.size() && args[i] != "submit" && args[i] != "map") {
    if (args[i] == "--profile")
      ++i;
    else if (!args[i].starts_with("-"))
      return {args, {}}; // another subcommand
    ++i;
  }
  for (++i; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      std::vector<std::string> command(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      args.resize(i);
      return {args, command};
    }
    if (a.starts_with("-")) {
      if (a.find('=') == std::string::npos &&
          std::find(with_value.begin(), with_value.end(), a) != with_value.end())
        ++i;
      continue;
    }
    std::vector<std::string> command(args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
    args.resize(i);
    return {args, command};
  }
  return {args, {}};
}

} // namespace

int run(int argc, char** argv) {
  auto split = split_command(argc, argv);
  std::vector<std::string>& args = split.first;
  std::vector<std::string>& command = split.second;
  CLI::App app{"sortie: send work to the machines that should run it"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("sortie ") + kSortieVersion);
  Globals g;
  app.add_option("--profile", g.profile,
                 "profile to use (default: $SORTIE_PROFILE or 'default', under $SORTIE_HOME or "
                 "~/.sortie)")
      ->check([](const std::string& v) {
        return v.empty() ? std::string("an empty profile name: leave --profile out for the "
                                       "default profile")
                         : std::string();
      });
  app.add_flag("-v,--verbose", g.verbose, "log more");

  // Callbacks only choose the action: CLI11 runs them before its last checks of the arguments.
  std::function<int()> action;
  // --- hub
  auto* hub = app.add_subcommand("hub", "start, stop and inspect the hub of a profile");
  hub->require_subcommand(1);
  HubStartArgs start_args;
  auto* hub_start_cmd = hub->add_subcommand("start", "start the hub (as a daemon by default)");
  hub_start_cmd->add_flag("--foreground", start_args.foreground,
                          "run in this terminal and log to it");
  hub_start_cmd->add_option("--listen", start_args.listen,
                            "TCP address to listen on, HOST[:PORT] (default 127.0.0.1, any port)");
  hub_start_cmd->add_option("--ready-fd", start_args.ready_fd)->group("");
  hub_start_cmd->add_option("--log-file", start_args.log_file)->group("");
  hub_start_cmd->callback([&] { action = [&] { return hub_start(g, start_args); }; });
  hub->add_subcommand("stop", "stop the hub and its pilots; returns once their jobs have ended "
                             "(they are requeued, counting a lost attempt)")
      ->callback([&] { action = [&] { return hub_stop(g); }; });
  hub->add_subcommand("restart", "restart the hub while its pilots and running jobs carry on "
                                "(ssh pilots end: the hub carries their links)")
      ->callback([&] {
        action = [&] {
          int r = hub_stop(g, true);
          return r != kExitOk ? r : hub_start(g, start_args);
        };
      });
  bool recover_flag = false;
  auto* check = hub->add_subcommand("check", "check the store's integrity (the hub must be stopped)");
  check->add_flag("--recover", recover_flag,
                  "copy what is readable into a new store; the damaged one is kept beside it");
  check->callback([&] { action = [&] { return hub_check(g, recover_flag); }; });
  bool status_json_flag = false;
  auto* st = hub->add_subcommand("status", "show whether the hub runs and what it holds");
  st->add_flag("--json", status_json_flag, "print JSON");
  st->callback([&] { action = [&] { return hub_status(g, status_json_flag); }; });

  // --- pilot
  auto* pilot = app.add_subcommand("pilot", "start and stop pilots (groups of agents)");
  pilot->require_subcommand(1);
  PilotAddArgs padd;
  auto* pa = pilot->add_subcommand("add", "start a pilot");
  pa->add_option("--resource", padd.resource, "where: a resource's name (default: local)");
  pa->add_option("--slots,--slots-per-node", padd.slots, "slots per node (default: cores)");
  pa->add_option("--nodes", padd.nodes,
                 "number of nodes (agents) (default: 1; ssh: one per host of the resource)");
  pa->add_option("--label", padd.label, "label; labelled jobs run only on pilots with that label");
  pa->add_option("--node-names", padd.node_names, "comma-separated names, one per node");
  pa->add_option("--gpus-per-node", padd.gpus_per_node,
                 "GPUs each node declares (devices 0..N-1) instead of detecting them");
  pa->add_option("--memory-per-node", padd.memory_per_node,
                 "memory jobs may reserve on each node, e.g. 8G; a bare number is MiB (default: all of it)");
  pa->add_option("--time", padd.time, "walltime: the pilot ends after this long, e.g. 2h");
  pa->add_option("--queue", padd.queue, "batch queue or partition (slurm, sge)");
  pa->add_option("--option", padd.options,
                 "a raw sbatch/qsub flag, repeatable; write --option=--account=abc");
  pa->add_flag("--json", padd.json, "print JSON");
  pa->callback([&] { action = [&] { return pilot_add(g, padd); }; });
  bool plist_json = false;
  auto* pl = pilot->add_subcommand("list", "list pilots");
  pl->add_flag("--json", plist_json, "print JSON");
  pl->callback([&] { action = [&] { return pilot_list(g, plist_json); }; });
  std::uint64_t pshow_id = 0;
  bool pshow_json = false;
  auto* ps = pilot->add_subcommand("show", "one pilot: state, every reason, its nodes");
  ps->add_option("id", pshow_id, "pilot id")->required()->check([](const std::string& v) {
    return v == "0" ? std::string("pilot ids start at 1: `sortie pilot list` shows them")
                    : std::string();
  });
  ps->add_flag("--json", pshow_json, "print JSON");
  ps->callback([&] { action = [&] { return pilot_list(g, pshow_json, pshow_id); }; });
  std::uint64_t pcancel_id = 0;
  auto* pc = pilot->add_subcommand("cancel", "stop a pilot; its running jobs are requeued");
  pc->add_option("id", pcancel_id, "pilot id")->required();
  pc->callback([&] { action = [&] { return pilot_cancel(g, pcancel_id); }; });
  PilotWaitArgs pwait;
  auto* pw = pilot->add_subcommand("wait", "wait until pilots run with all their nodes");
  pw->add_option("ids", pwait.ids, "pilot ids");
  pw->add_flag("--all", pwait.all, "every pilot that has not ended");
  pw->add_option("--timeout", pwait.timeout, "give up after this long (exit 4), e.g. 5m");
  pw->callback([&] { action = [&] { return pilot_wait(g, pwait); }; });

  // --- resource
  auto* resource = app.add_subcommand("resource", "define where pilots can run");
  resource->require_subcommand(1);
  ResourceAddArgs radd;
  auto* ra = resource->add_subcommand("add", "define a resource (docs/resources.md)");
  ra->add_option("name", radd.name, "its name")->required();
  ra->add_option("--type", radd.type, "ssh, slurm or sge")->required();
  ra->add_option("--location", radd.location,
                 "ssh: [user@]host[:port][,host2...]; slurm/sge: the login host (default: here)");
  ra->add_option("--install-dir", radd.install_dir,
                 "the sortie tree there (DIR/bin/sortie; default: this sortie's path)");
  ra->add_option("--tmp-dir", radd.tmp_dir, "where batch jobs write their output");
  ra->add_option("--gateway", radd.gateway, "an ssh resource to hop through (ProxyJump)");
  ra->add_option("--ssh-option", radd.ssh_options,
                 "an extra ssh argument, repeatable; write --ssh-option=-oPort=2222");
  ra->add_option("--machinefile", radd.machinefile, "ssh: a file of host[:N] lines");
  ra->add_flag("--replace", radd.replace, "overwrite a resource of the same name");
  ra->callback([&] { action = [&] { return resource_add(g, radd); }; });
  bool rlist_json = false;
  auto* rl = resource->add_subcommand("list", "list resources");
  rl->add_flag("--json", rlist_json, "print JSON");
  rl->callback([&] { action = [&] { return resource_list(g, rlist_json); }; });
  std::string rrm_name;
  auto* rr = resource->add_subcommand("rm", "remove a resource");
  rr->add_option("name", rrm_name, "its name")->required();
  rr->callback([&] { action = [&] { return resource_rm(g, rrm_name); }; });

  // --- submit and map
  JobOptions sopts;
  std::string sarray, sfile;
  auto* sub = app.add_subcommand("submit",
                                 "submit a command job: sortie submit [options] [--] CMD ARGS...");
  add_job_options(sub, sopts);
  sub->add_option("--array", sarray, "FIRST-LAST[:STEP]: one job per index, in SORTIE_ARRAY_INDEX");
  sub->add_option("--file", sfile, "a TOML job file (docs/jobs.md); options given here override it");
  sub->callback([&] { action = [&] { return submit(g, sopts, sarray, sfile, command); }; });
  JobOptions mopts;
  std::string mapfile, each_line, marray;
  auto* mp = app.add_subcommand(
      "map", "one job per item: sortie map --mapfile F|--each-line F|--array A-B -- CMD ARGS {}");
  add_job_options(mp, mopts);
  mp->add_option("--mapfile", mapfile, "host=[file, ...] lines: one job per file, on its host");
  mp->add_option("--each-line", each_line, "one job per line of this file");
  mp->add_option("--array", marray, "FIRST-LAST[:STEP]: one job per index");
  mp->callback([&] {
    action = [&] { return map_jobs(g, mopts, mapfile, each_line, marray, command); };
  });

  // --- job
  auto* job = app.add_subcommand("job", "list, inspect, wait for and cancel jobs");
  job->require_subcommand(1);
  SelectArgs list_sel;
  std::vector<std::string> list_states;
  bool list_json = false;
  auto* jl = job->add_subcommand("list", "list jobs (the newest 100 by default)");
  jl->add_option("ids", list_sel.ids, "job ids or ranges: 17 17-20 3,5");
  jl->add_option("--group", list_sel.groups, "only jobs of this group (id or name)");
  jl->add_option("--state", list_states, "only jobs in these states (comma-separated)");
  jl->add_flag("--json", list_json, "print a JSON array (every matching job unless --limit)");
  std::optional<std::uint64_t> list_limit;
  jl->add_option("--limit", list_limit,
                 "only the newest N matching jobs (0: all; default 100 on a terminal table)");
  jl->callback([&] {
    action = [&] { return job_list(g, list_sel, list_states, list_json, list_limit); };
  });
  std::string show_id;
  bool show_json = false;
  auto* js = job->add_subcommand("show", "show one job: spec, history, node, exit code, usage");
  js->add_option("id", show_id, "job id")->required();
  js->add_flag("--json", show_json, "print JSON");
  js->callback([&] { action = [&] { return job_show(g, show_id, show_json); }; });
  SelectArgs wait_sel;
  std::string wait_timeout;
  bool wait_quiet = false;
  auto* jw = job->add_subcommand("wait", "wait for jobs; exit 0 only if every one succeeded");
  jw->add_option("ids", wait_sel.ids, "job ids or ranges");
  jw->add_flag("--all", wait_sel.all, "every job submitted so far");
  jw->add_option("--group", wait_sel.groups, "the jobs of a group (id or name)");
  jw->add_option("--timeout", wait_timeout, "give up after this long (e.g. 30s, 2h): exit 4");
  jw->add_flag("-q,--quiet", wait_quiet, "no progress bar or summary");
  jw->callback([&] { action = [&] { return job_wait(g, wait_sel, wait_timeout, wait_quiet); }; });
  SelectArgs logs_sel;
  bool logs_follow = false, logs_stderr = false;
  std::uint32_t logs_attempt = 0;
  auto* jo = job->add_subcommand("logs", "print jobs' output (several: each line prefixed [ID])");
  jo->add_option("ids", logs_sel.ids, "job ids or ranges: 17 17-20 3,5");
  jo->add_option("--group", logs_sel.groups, "the jobs of a group (id or name)");
  jo->add_flag("-f,--follow", logs_follow,
               "keep printing until the jobs end; exit 0 only if they all succeeded");
  jo->add_flag("--stderr", logs_stderr, "standard error instead of standard output");
  jo->add_option("--attempt", logs_attempt, "which attempt (default: the latest)");
  jo->callback([&] { action = [&] { return job_logs(g, logs_sel, logs_follow, logs_stderr, logs_attempt); }; });
  SelectArgs cancel_sel;
  auto* jc = job->add_subcommand("cancel", "cancel jobs (their whole process trees)");
  jc->add_option("ids", cancel_sel.ids, "job ids or ranges");
  jc->add_flag("--all", cancel_sel.all, "every unfinished job");
  jc->add_option("--group", cancel_sel.groups, "the jobs of a group (id or name)");
  jc->callback([&] { action = [&] { return job_cancel(g, cancel_sel); }; });
  SelectArgs forget_sel;
  auto* jf = job->add_subcommand("forget", "forget ended jobs: their records and output files");
  jf->add_option("ids", forget_sel.ids, "job ids or ranges");
  jf->add_flag("--all", forget_sel.all, "every ended job");
  jf->add_option("--group", forget_sel.groups, "the jobs of a group (id or name)");
  jf->callback([&] { action = [&] { return job_forget(g, forget_sel); }; });

  // --- engines and tasks (docs/engines.md)
  auto* engine = app.add_subcommand("engine", "start, list and stop engines (workers for tasks)");
  engine->require_subcommand(1);
  EngineStartArgs eargs;
  auto* es = engine->add_subcommand("start", "start engines: jobs of kind engine, placed as "
                                             "jobs are; prints their job ids");
  es->add_option("--count,-n", eargs.count, "how many engines (default 1)");
  es->add_option("--label", eargs.label, "run on pilots with this label");
  es->add_option("--slots", eargs.slots, "slots each engine holds (default 1)");
  es->add_option("--memory", eargs.memory, "memory each engine may use, e.g. 4G (enforced)");
  es->add_flag("--restart", eargs.restart, "start an engine again whenever it ends");
  es->add_option("--name", eargs.name, "the engine jobs' name (default: engine)");
  es->add_flag("--mpi", eargs.mpi, "the engines are the ranks of one MPI job (mpiexec)");
  es->add_option("--ranks-per-node", eargs.ranks_per_node,
                 "with --mpi: ranks on each node (default: all on one node)");
  es->add_option("command", eargs.command,
                 "an engine program and its arguments, after -- (default: the Python engine)");
  es->callback([&] { action = [&] { return engine_start(g, eargs); }; });
  std::string elist_label;
  bool elist_json = false;
  auto* el = engine->add_subcommand("list", "list the engines that are up");
  el->add_option("--label", elist_label, "only engines with this label");
  el->add_flag("--json", elist_json, "print JSON");
  el->callback([&] { action = [&] { return engine_list(g, elist_label, elist_json); }; });
  std::vector<std::uint64_t> estop_ids;
  bool estop_all = false;
  auto* est = engine->add_subcommand("stop", "stop engines (cancels their jobs)");
  est->add_option("ids", estop_ids, "engine ids");
  est->add_flag("--all", estop_all, "every engine");
  est->callback([&] { action = [&] { return engine_stop(g, estop_ids, estop_all); }; });
  auto* task = app.add_subcommand("task", "list and inspect tasks (calls to engines)");
  task->require_subcommand(1);
  std::uint64_t tlist_limit = 100;
  bool tlist_json = false;
  auto* tl = task->add_subcommand("list", "list tasks (the newest 100 by default)");
  tl->add_option("--limit", tlist_limit, "how many of the newest (0: 1000)");
  tl->add_flag("--json", tlist_json, "print JSON");
  tl->callback([&] { action = [&] { return task_list(g, tlist_limit, tlist_json); }; });
  std::uint64_t tshow_id = 0;
  bool tshow_json = false;
  auto* ts = task->add_subcommand("show", "one task: state, engine, times, error");
  ts->add_option("id", tshow_id, "task id")->required();
  ts->add_flag("--json", tshow_json, "print JSON");
  ts->callback([&] { action = [&] { return task_show(g, tshow_id, tshow_json); }; });
  std::uint64_t tout_id = 0;
  bool tout_follow = false;
  auto* to = task->add_subcommand("output", "what a task printed (stdout and stderr)");
  to->add_option("id", tout_id, "task id")->required();
  to->add_flag("-f,--follow", tout_follow, "print it as it is printed, until the task ends");
  to->callback([&] { action = [&] { return task_output(g, tout_id, tout_follow); }; });

  // --- agent (internal: started by pilots)
  AgentArgs aargs;
  auto* ag = app.add_subcommand("agent", "run an agent (started by pilots)");
  ag->group("");
  ag->add_option("--profile-dir", aargs.profile_dir,
                 "the profile directory whose hub.json says where the hub is");
  ag->add_option("--hub-file", aargs.hub_file, "a hub.json to connect with (instead of a profile)");
  ag->add_option("--pilot", aargs.pilot, "the pilot this agent belongs to (0: none)");
  ag->add_option("--node-name", aargs.node_name, "this node's name (default: the host name)");
  ag->add_option("--address", aargs.address, "how other nodes reach this one (MPI hostfiles)");
  ag->add_option("--slots", aargs.slots, "slots jobs may use (default: the cores)");
  ag->add_option("--label", aargs.label, "only jobs with this label (or none) run here");
  ag->add_option("--connect-window", aargs.connect_window,
                 "how long to keep trying to reach the hub at start, e.g. 60s");
  ag->add_option("--gpus", aargs.gpus, "GPU devices, e.g. 0,1 (default: detected)");
  ag->add_option("--memory", aargs.memory,
                 "memory jobs may reserve, e.g. 16G; a bare number is MiB (default: the node's)");
  ag->add_option("--walltime-end-ms", aargs.walltime_end_ms,
                 "when this node's pilot ends, in Unix milliseconds (0: never)");
  ag->add_option("--walltime", aargs.walltime_ms, "milliseconds of walltime from now");
  ag->add_flag("--stdio", aargs.stdio, "speak the protocol on stdin/stdout (ssh pilots)");
  ag->callback([&] { action = [&] { return agent_main(g, aargs); }; });

  try {
    std::vector<char*> av = {argv[0]};
    for (auto& a : args)
      av.push_back(a.data());
    app.parse(static_cast<int>(av.size()), av.data());
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "sortie: %s%s\nRun `sortie --help` (or `sortie COMMAND --help`) for usage.\n",
                 e.what(), did_you_mean(app, args).c_str());
    return kExitUsage;
  }
  return action ? action() : kExitUsage;
}

} // namespace sortie::cli
