// SPDX-License-Identifier: Apache-2.0
// The attributes every process sortie starts gets: its own session, no blocked signals, and
// default dispositions for every signal (the parent's handlers and ignores do not leak in).
#pragma once

#include <signal.h>
#include <spawn.h>

namespace sortie {

class SpawnAttr {
public:
  SpawnAttr() {
    posix_spawnattr_init(&attr_);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr_, &none);
    sigset_t defaults;
    sigfillset(&defaults);
    sigdelset(&defaults, SIGKILL);
    sigdelset(&defaults, SIGSTOP);
    posix_spawnattr_setsigdefault(&attr_, &defaults);
    posix_spawnattr_setflags(&attr_, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
                                         POSIX_SPAWN_SETSIGDEF);
  }
  ~SpawnAttr() { posix_spawnattr_destroy(&attr_); }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
  const posix_spawnattr_t* get() const { return &attr_; }

private:
  posix_spawnattr_t attr_;
};

} // namespace sortie
