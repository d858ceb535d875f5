// SPDX-License-Identifier: Apache-2.0
// What the `sortie` command's parts share: exit codes, the global options, each command's
// arguments, and the command functions (hub_cmds.cpp, pilot_cmds.cpp, job_cmds.cpp,
// agent_cmd.cpp), which cli.cpp wires to CLI11. Exit codes: 0 success, 1 failure (a job failed,
// a request was refused), 2 bad usage, 3 no hub running, 4 timeout.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "sortie/client.hpp"
#include "sortie/result.hpp"

namespace sortie::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNoHub = 3;
inline constexpr int kExitTimeout = 4;

struct Globals {
  std::string profile;
  bool verbose = false;
};

struct HubStartArgs {
  bool foreground = false;
  std::string listen;
  int ready_fd = -1;
  std::string log_file;
};

struct PilotAddArgs {
  std::string resource = "local";
  std::uint32_t slots = 0;
  std::uint32_t nodes = 0;
  std::string label;
  std::string node_names;
  std::uint32_t gpus_per_node = 0;
  std::string memory_per_node;
  std::string time;
  std::string queue;
  std::vector<std::string> options;
  bool json = false;
};

struct PilotWaitArgs {
  std::vector<std::uint64_t> ids;
  bool all = false;
  std::string timeout;
};

struct ResourceAddArgs {
  std::string name;
  std::string type;
  std::string location;
  std::string install_dir;
  std::string tmp_dir;
  std::string gateway;
  std::vector<std::string> ssh_options;
  std::string machinefile;
  bool replace = false;
};

/// The options of a job, shared by `submit` and `map`. Each is applied only when given, so that
/// they override a job file's values (as sbatch's flags override #SBATCH lines).
struct JobOptions {
  std::string label;
  std::uint32_t slots = 1;
  std::vector<std::string> env;
  std::string export_env;
  std::string cwd;
  std::string name;
  std::string memory;
  std::uint32_t gpus = 0;
  std::string hosts;
  std::string prefer_hosts;
  std::uint32_t max_per_node = 0;
  std::string group;
  std::int32_t priority = 0;
  std::string queue_timeout;
  std::string run_timeout;
  std::string time_request;
  std::uint32_t retries = 0;
  bool retry_on_failure = false;
  std::uint32_t mpi = 0;
  std::uint32_t ranks_per_node = 0;
  std::string after;
  bool json = false;
  bool yes = false; ///< more jobs than the hub's confirm_above are meant
  std::vector<CLI::Option*> given; ///< filled by add_job_options

  /// True if the option (e.g. "--label") was given on the command line.
  bool has(std::string_view flag) const {
    std::string long_name(flag.substr(flag.find_first_not_of('-')));
    for (auto* o : given)
      if (o->check_lname(long_name) && o->count() > 0)
        return true;
    return false;
  }
};

struct EngineStartArgs {
  std::uint32_t count = 1;
  std::string label;
  std::uint32_t slots = 1;
  std::string memory;
  bool restart = false;
  std::string name;
  std::vector<std::string> command; ///< empty: the Python engine
  bool mpi = false;                 ///< the engines are the ranks of one MPI job
  std::uint32_t ranks_per_node = 0; ///< with mpi (0: all on one node)
};

struct SelectArgs {
  std::vector<std::string> ids;
  bool all = false;
  std::vector<std::string> groups; ///< ids or names
};

struct AgentArgs {
  std::string profile_dir;
  std::string hub_file;
  std::uint64_t pilot = 0;
  std::string node_name;
  std::string address;
  std::uint32_t slots = 0;
  std::string label;
  std::string connect_window = "60s";
  std::string gpus;
  std::string memory;
  std::int64_t walltime_end_ms = 0;
  std::int64_t walltime_ms = 0;
  bool stdio = false;
};

int fail(const Error& e);
std::filesystem::path self_exe();
Result<JobSelector> parse_ids(const std::vector<std::string>& args);
/// Connects to the profile's hub; `start`: commands that create work start it when none runs.
Result<Client> connect(const Globals& g, bool start = false);
/// Whether stderr is a terminal (progress bars, questions).
bool stderr_is_tty();
/// Terminal width of stderr (80 when it is not a terminal).
int terminal_width();

int hub_start(const Globals& g, const HubStartArgs& a);
int hub_stop(const Globals& g, bool restart = false);
int hub_check(const Globals& g, bool recover);
int hub_status(const Globals& g, bool as_json);
int pilot_add(const Globals& g, const PilotAddArgs& a);
int pilot_list(const Globals& g, bool as_json, std::uint64_t id = 0);
int pilot_wait(const Globals& g, const PilotWaitArgs& a);
int resource_add(const Globals& g, const ResourceAddArgs& a);
int resource_list(const Globals& g, bool as_json);
int resource_rm(const Globals& g, const std::string& name);
int pilot_cancel(const Globals& g, std::uint64_t id);
void add_job_options(CLI::App* cmd, JobOptions& o);
int submit(const Globals& g,
           const JobOptions& o,
           const std::string& array,
           const std::string& file,
           std::vector<std::string> command);
int map_jobs(const Globals& g,
             const JobOptions& o,
             const std::string& mapfile,
             const std::string& each_line,
             const std::string& array,
             const std::vector<std::string>& command);
Result<JobSelector> selector_from(const SelectArgs& a, bool default_all);
int job_list(const Globals& g, const SelectArgs& a, const std::vector<std::string>& states,
             bool as_json, std::optional<std::uint64_t> limit_option);
int job_forget(const Globals& g, const SelectArgs& a);
int job_show(const Globals& g, const std::string& id_text, bool as_json);
int job_wait(const Globals& g, const SelectArgs& a, const std::string& timeout, bool quiet);
int job_logs(const Globals& g, const SelectArgs& a, bool follow, bool use_stderr,
             std::uint32_t attempt);
int job_cancel(const Globals& g, const SelectArgs& a);
int agent_main(const Globals& g, const AgentArgs& a);
int engine_start(const Globals& g, const EngineStartArgs& a);
int engine_list(const Globals& g, const std::string& label, bool as_json);
int engine_stop(const Globals& g, const std::vector<std::uint64_t>& ids, bool all);
int task_list(const Globals& g, std::uint64_t limit, bool as_json);
int task_show(const Globals& g, std::uint64_t id, bool as_json);
int task_output(const Globals& g, std::uint64_t id, bool follow);

} // namespace sortie::cli
