// SPDX-License-Identifier: Apache-2.0
// Job files for `sortie submit --file job.toml`: one job at the top level, or several as
// [[job]] tables, whose keys override the top level's (which then act as defaults):
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
// Keys: command (or argv), env (table), cwd (relative to the file's directory), slots, memory,
// gpus, label, name, hosts, prefer_hosts, max_per_node, priority, queue_timeout, run_timeout,
// time_request, retries, retry_on_failure, after, array. Errors give the file, line and key.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "sortie/job.hpp"
#include "sortie/result.hpp"

namespace sortie::cli {

struct JobFileEntry {
  JobSpec spec;
  std::optional<ArrayRange> array;
};

struct JobFile {
  std::string group;
  std::vector<JobFileEntry> jobs;
};

Result<JobFile> read_job_file(const std::filesystem::path& path);
/// The same from text (`name` is used in errors, `base_dir` for relative cwd).
Result<JobFile> parse_job_file(const std::string& text,
                               const std::string& name,
                               const std::filesystem::path& base_dir);

} // namespace sortie::cli
