// SPDX-License-Identifier: Apache-2.0
// The floor for running N short commands P at a time on this machine: posix_spawn and waitpid,
// nothing else. Prints the elapsed seconds.
//   bench_spawn_floor N P PROGRAM [ARGS...]
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern char** environ;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: bench_spawn_floor N PARALLEL PROGRAM [ARGS...]\n");
    return 2;
  }
  long n = std::atol(argv[1]);
  long parallel = std::atol(argv[2]);
  std::vector<char*> args(argv + 3, argv + argc);
  args.push_back(nullptr);
  auto t0 = std::chrono::steady_clock::now();
  long started = 0, running = 0, failed = 0;
  while (started < n || running > 0) {
    while (running < parallel && started < n) {
      pid_t pid;
      if (posix_spawn(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0)
        return 1;
      ++started;
      ++running;
    }
    int status;
    if (wait(&status) > 0) {
      --running;
      failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%.6f\n", s);
  return failed ? 1 : 0;
}
