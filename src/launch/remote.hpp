// SPDX-License-Identifier: Apache-2.0
// The pure parts of reaching other machines: ssh destinations and machinefiles, the ssh command
// that starts an agent, Slurm and Grid Engine batch scripts and submission commands, and what
// squeue/qstat print. No processes here (drivers.cpp runs them), so all of it is unit-tested.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sortie/result.hpp"

namespace sortie::launch {

/// An ssh destination: [user@]host[:port].
struct SshTarget {
  std::string user;
  std::string host;
  std::uint16_t port = 0; ///< 0: ssh's default (or ~/.ssh/config)
  /// user@host (what ssh takes as destination).
  std::string destination() const;
  /// user@host:port (ProxyJump's form).
  std::string jump() const;
};

Result<SshTarget> parse_ssh_target(std::string_view text);
/// A comma-separated list of destinations.
Result<std::vector<SshTarget>> parse_ssh_targets(std::string_view text);

struct MachineEntry {
  SshTarget target;
  std::uint32_t slots = 0; ///< 0: not given (the agent counts the cores)
};

/// A machinefile: one host per line as `host`, `host:N` or `host slots=N` (OpenMPI's form);
/// `#` starts a comment. `name` is used in errors ("hosts.txt:3: ...").
Result<std::vector<MachineEntry>> parse_machinefile(std::string_view text, const std::string& name);

/// `ssh` with BatchMode and keepalives, jumping through `jumps` (outermost first), with the
/// user's extra options, running `remote_argv` on `target` (each word quoted for the remote
/// shell, which ssh always involves).
std::vector<std::string> ssh_argv(const SshTarget& target,
                                  const std::vector<SshTarget>& jumps,
                                  const std::vector<std::string>& options,
                                  const std::vector<std::string>& remote_argv);

/// What a batch pilot asks of the batch system.
struct BatchJob {
  std::string name;            ///< job name
  std::uint32_t nodes = 1;
  std::uint32_t slots_per_node = 1;
  std::int64_t walltime_ms = 0; ///< 0: the queue's default
  std::string queue;           ///< partition (slurm) or queue (sge)
  std::string output;          ///< file for the batch job's own output (passed as an argument)
  std::vector<std::string> agent_argv; ///< the agent command, started once per node
};

/// Slurm: a POSIX sh script with #SBATCH lines and one `srun` of the agent per node.
std::string slurm_script(const BatchJob& job);
/// sbatch --parsable [--output=FILE] [raw options] [SCRIPT] (no script: sbatch reads it from
/// stdin). Raw options come after ours, so they win.
std::vector<std::string> sbatch_argv(const std::vector<std::string>& raw_options,
                                     const std::string& script_path,
                                     const std::string& output = {});
/// The job id in sbatch --parsable's output ("1234" or "1234;cluster").
Result<std::string> parse_sbatch_id(std::string_view out);

/// Grid Engine: a script with #$ lines; multi-node pilots use the parallel environment `pe`
/// and start the other agents with `qrsh -inherit`.
std::string sge_script(const BatchJob& job, const std::string& pe);
/// qsub -terse [-o FILE] [raw options] [SCRIPT] (no script: qsub reads it from stdin).
std::vector<std::string> qsub_argv(const std::vector<std::string>& raw_options,
                                   const std::string& script_path,
                                   const std::string& output = {});
/// The job id in qsub -terse's output ("1234" or "1234.1-10:1").
Result<std::string> parse_qsub_id(std::string_view out);

/// Where a batch job is, as far as the pilot cares.
enum class BatchState { Pending, Running, Gone, Unknown };

/// squeue -h -o '%T|%r' for one job: "PENDING|Resources", "RUNNING|None"; empty: gone.
BatchState parse_squeue(std::string_view out, std::string& reason);
/// qstat's table for this user: the state column of job `id` ("qw", "r", "Eqw", ...); absent:
/// gone.
BatchState parse_qstat(std::string_view out, const std::string& id, std::string& reason);

/// "2:03:00" style for --time / h_rt (rounded up to whole seconds, Slurm rounds to minutes).
std::string hms(std::int64_t ms);

/// Letters, digits and -_.+: safe in a directive line without quoting.
bool safe_word(std::string_view s);

} // namespace sortie::launch
