// SPDX-License-Identifier: Apache-2.0
// Memory limits for a job: cgroup v2, cgroup v1 or RLIMIT_AS, whichever the node allows.
#include "agent/limits.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/files.hpp"
#include "common/log.hpp"

namespace sortie::agent {
namespace {

bool write_text(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// The path of this process's cgroup for a v1 controller, or in the v2 hierarchy ("" key).
std::string own_cgroup(const std::string& controller) {
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line)) {
    // "N:controllers:/path"
    auto a = line.find(':');
    auto b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos)
      continue;
    std::string ctrls = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (controller.empty()) {
      if (line.compare(0, 3, "0::") == 0) // the unified (v2) hierarchy
        return path;
      continue;
    }
    std::stringstream ss(ctrls);
    std::string c;
    while (std::getline(ss, c, ','))
      if (c == controller)
        return path;
  }
  return {};
}

std::uint64_t read_counter(const std::string& path, const std::string& key) {
  std::istringstream in(read_text(path));
  std::string k;
  std::uint64_t v;
  while (in >> k >> v)
    if (k == key)
      return v;
  return 0;
}

/// Makes the agent's directory under `base`; empty if it cannot.
std::string make_agent_dir(const std::string& base) {
  if (base.empty())
    return {};
  std::string dir = fmt::format("{}/sortie-agent-{}", base, ::getpid());
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return {};
  return dir;
}

} // namespace

const char* limit_mode_name(LimitMode mode) {
  switch (mode) {
  case LimitMode::CgroupV2:
    return "cgroup v2";
  case LimitMode::CgroupV1:
    return "cgroup v1";
  case LimitMode::Rlimit:
    return "rlimit";
  case LimitMode::None:
    break;
  }
  return "";
}

MemoryLimits MemoryLimits::detect(const std::string& want) {
  MemoryLimits m;
  if (want == "none")
    return m;
  if (want != "rlimit") {
    // v2: our cgroup in the unified hierarchy, with the memory controller available below it.
    std::string v2 = own_cgroup("");
    std::string root = "/sys/fs/cgroup";
    if (!v2.empty() && read_text(root + "/cgroup.controllers").find("memory") != std::string::npos) {
      std::string base = root + (v2 == "/" ? "" : v2);
      std::string dir = make_agent_dir(base);
      // Jobs go into children of our directory, which therefore needs the controller enabled.
      if (!dir.empty() && write_text(dir + "/cgroup.subtree_control", "+memory")) {
        m.mode_ = LimitMode::CgroupV2;
        m.dir_ = dir;
        return m;
      }
      if (!dir.empty())
        ::rmdir(dir.c_str());
    }
    std::string v1 = own_cgroup("memory");
    if (!v1.empty() && ::access("/sys/fs/cgroup/memory", W_OK) == 0) {
      std::string base = "/sys/fs/cgroup/memory" + (v1 == "/" ? std::string() : v1);
      std::string dir = make_agent_dir(base);
      if (!dir.empty()) {
        m.mode_ = LimitMode::CgroupV1;
        m.dir_ = dir;
        return m;
      }
    }
    if (want == "cgroup")
      log::warn("no writable memory cgroup here; limiting memory with rlimits instead");
  }
  m.mode_ = LimitMode::Rlimit;
  return m;
}

MemoryLimits::MemoryLimits(MemoryLimits&& o) noexcept : mode_(o.mode_), dir_(std::move(o.dir_)) {
  o.dir_.clear();
}

MemoryLimits& MemoryLimits::operator=(MemoryLimits&& o) noexcept {
  std::swap(mode_, o.mode_);
  std::swap(dir_, o.dir_);
  return *this;
}

MemoryLimits::~MemoryLimits() {
  if (!dir_.empty())
    remove_cgroup_tree(dir_);
}

Result<std::string> MemoryLimits::apply(pid_t pid, const std::string& key, std::uint64_t bytes) {
  if (mode_ == LimitMode::None || bytes == 0)
    return std::string();
  if (mode_ == LimitMode::Rlimit) {
    rlimit rl{bytes, bytes};
    if (::prlimit(pid, RLIMIT_AS, &rl, nullptr) != 0)
      return make_error(ErrorCode::Io, fmt::format("cannot limit the memory of process {}: {}", pid,
                                                   errno_text(errno)));
    return std::string();
  }
  std::string dir = dir_ + "/" + key;
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return make_error(ErrorCode::Io, fmt::format("cannot create cgroup {}: {}", dir, errno_text(errno)));
  std::string limit = std::to_string(bytes);
  bool ok;
  if (mode_ == LimitMode::CgroupV2) {
    ok = write_text(dir + "/memory.max", limit);
    write_text(dir + "/memory.swap.max", "0"); // best effort: no swapping around the limit
  } else {
    ok = write_text(dir + "/memory.limit_in_bytes", limit);
    write_text(dir + "/memory.memsw.limit_in_bytes", limit); // best effort, as above
    write_text(dir + "/memory.move_charge_at_immigrate", "3");
  }
  if (!ok || !write_text(dir + "/cgroup.procs", std::to_string(pid)))
    return make_error(ErrorCode::Io,
                      fmt::format("cannot put process {} under a memory limit in {}: {}", pid, dir,
                                  errno_text(errno)));
  return dir;
}

bool MemoryLimits::oom_killed(const std::string& handle) const {
  if (handle.empty())
    return false;
  if (mode_ == LimitMode::CgroupV2)
    return read_counter(handle + "/memory.events", "oom_kill") > 0;
  return read_counter(handle + "/memory.oom_control", "oom_kill") > 0;
}

bool MemoryLimits::release(const std::string& handle) {
  if (handle.empty())
    return true;
  return ::rmdir(handle.c_str()) == 0 || errno == ENOENT;
}

void remove_cgroup_tree(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (auto* e = ::readdir(d)) {
      if (e->d_type == DT_DIR && e->d_name[0] != '.')
        ::rmdir((dir + "/" + e->d_name).c_str());
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

} // namespace sortie::agent
