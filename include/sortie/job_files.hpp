// SPDX-License-Identifier: Apache-2.0
// Many jobs from a file or a range, as `sortie submit --file`, `sortie map` and `--array` make
// them; front ends (the CLI, the Python package) call these rather than parse for themselves.
// Errors name the file, line and column, and what to write instead.
//
// Job files (TOML): one job at the top level, or several as [[job]] tables whose keys override
// the top level's (which then act as defaults):
//
//   group = "sims"                   # optional: the submission's group name
//   command = ["python3", "sim.py", "--seed", "7"]
//   slots = 4
//   memory = "4G"
//   run_timeout = "2h"
//
//   [[job]]
//   name = "small"
//   array = "1-100"
//
// Keys: command (or argv), env (table), export, cwd (relative to the file's directory), slots,
// memory, gpus, label, name, hosts, prefer_hosts, max_per_node, priority, queue_timeout,
// run_timeout, time_request, retries, retry_on_failure, after, array, mpi, ranks_per_node.
//
// Map files: where data files live, one entry per host (docs/jobs.md, "Map files"):
//
//   node-a = [run1/in.dat, run2/in.dat,
//             "name with spaces.dat"]
//   node-b=[run3/in.dat]
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sortie/job.hpp"
#include "sortie/result.hpp"

namespace sortie {

struct JobFile {
  std::string group;
  std::vector<SubmitItem> jobs;
};

Result<JobFile> read_job_file(const std::filesystem::path& path);
/// The same from text (`name` is used in errors, `base_dir` for relative cwd).
Result<JobFile> parse_job_file(const std::string& text, const std::string& name,
                               const std::filesystem::path& base_dir);

/// "1-100", "0-99:10" (FIRST-LAST[:STEP]) or "7".
Result<ArrayRange> parse_array_range(std::string_view text);

/// `command` with every "{}" replaced by `item`; `item` appended when there is none.
std::vector<std::string> substitute_item(const std::vector<std::string>& command,
                                         const std::string& item);

/// One job per entry of a map file, run on the entry's host: `tmpl` with "{}" in its argv
/// replaced by the entry's file (see substitute_item) and, unless it has one, named after it.
Result<std::vector<JobSpec>> jobs_from_map_file(const JobSpec& tmpl,
                                                const std::filesystem::path& path);
/// The same from text (`name` is used in errors).
Result<std::vector<JobSpec>> jobs_from_map_text(const JobSpec& tmpl, std::string_view text,
                                                const std::string& name);
/// One job per non-empty line of a file (surrounding blanks and a CR are not part of it).
Result<std::vector<JobSpec>> jobs_from_lines(const JobSpec& tmpl,
                                             const std::filesystem::path& path);
/// One job per index of `range` (at most 1,000,000), "{}" replaced by the index.
Result<std::vector<JobSpec>> jobs_from_range(const JobSpec& tmpl, const ArrayRange& range);

} // namespace sortie
