// SPDX-License-Identifier: Apache-2.0
// Enforcing a job's --memory on a node: a cgroup per job when the agent may create cgroups (v2,
// or v1's memory controller), else an address-space rlimit. The job is moved into its cgroup right
// after it starts (posix_spawn cannot start it there), so its first moments run unlimited.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sortie/result.hpp"

namespace sortie::agent {

enum class LimitMode { None, CgroupV2, CgroupV1, Rlimit };

/// "cgroup v2", "cgroup v1", "rlimit" or "".
const char* limit_mode_name(LimitMode mode);

class MemoryLimits {
public:
  /// Finds the best way this process can limit its children: `want` is "auto" (cgroups if
  /// writable, else rlimit), "cgroup", "rlimit" or "none" (SORTIE_AGENT_MEMORY_LIMITS). Creates
  /// the agent's own cgroup directory for cgroup modes.
  static MemoryLimits detect(const std::string& want);

  MemoryLimits() = default;
  MemoryLimits(MemoryLimits&&) noexcept;
  MemoryLimits& operator=(MemoryLimits&&) noexcept;
  /// Removes the agent's cgroup directory (and any empty job directories left).
  ~MemoryLimits();

  LimitMode mode() const { return mode_; }
  /// The agent's cgroup directory ("" unless a cgroup mode): the keeper removes it at the end.
  const std::string& agent_dir() const { return dir_; }

  /// Limits process `pid` (just started) to `bytes`; `key` names its cgroup. Returns the handle
  /// to pass to oom_killed() and release() ("" for rlimits).
  Result<std::string> apply(pid_t pid, const std::string& key, std::uint64_t bytes);
  /// True if the job's cgroup recorded an out-of-memory kill.
  bool oom_killed(const std::string& handle) const;
  /// Removes a job's cgroup once its processes are gone; false while it is still busy.
  bool release(const std::string& handle);

private:
  LimitMode mode_ = LimitMode::None;
  std::string dir_;
};

/// Removes the job directories inside an agent cgroup directory, then the directory itself
/// (used by the keeper after the agent died).
void remove_cgroup_tree(const std::string& dir);

} // namespace sortie::agent
