// SPDX-License-Identifier: Apache-2.0
// bench (j): a compiled engine's call round trip (Client::call) against the loopback TCP round
// trip measured in the same run. `bench_call --serve` is the engine (an "echo" handler); without
// it, it measures: N sequential TCP ping-pongs of 8 bytes with a forked echo process over
// 127.0.0.1, then N sequential Client::call("echo", 8 bytes) to the running hub of the profile
// in SORTIE_HOME. Prints "tcp_p50_us tcp_p99_us call_p50_us call_p99_us".
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <sortie/client.hpp>
#include <sortie/engine.hpp>

namespace {

using Clock = std::chrono::steady_clock;

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

bool full(int fd, char* buf, std::size_t n, bool reading) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = reading ? ::read(fd, buf + done, n - done) : ::write(fd, buf + done, n - done);
    if (r <= 0)
      return false;
    done += static_cast<std::size_t>(r);
  }
  return true;
}

std::vector<double> tcp_round_trips(int n) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener, 1) != 0 ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("bench_call: loopback listener");
    std::exit(1);
  }
  pid_t child = ::fork();
  if (child == 0) { // the echo side, another process as an engine is
    int fd = ::accept(listener, nullptr, nullptr);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buf[8];
    while (full(fd, buf, sizeof buf, true) && full(fd, buf, sizeof buf, false)) {
    }
    ::_exit(0);
  }
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::perror("bench_call: connect");
    std::exit(1);
  }
  std::vector<double> out;
  char buf[8] = {};
  for (int i = 0; i < n + 100; ++i) {
    auto t = Clock::now();
    if (!full(fd, buf, sizeof buf, false) || !full(fd, buf, sizeof buf, true))
      std::exit(1);
    if (i >= 100) // after a warm-up
      out.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }
  ::close(fd);
  ::close(listener);
  ::waitpid(child, nullptr, 0);
  return out;
}

} // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--serve") {
    sortie::Engine engine;
    engine.on("echo", [](const std::string& in) -> sortie::Result<std::string> { return in; });
    return engine.run();
  }
  int n = argc > 1 ? std::atoi(argv[1]) : 2000;
  auto tcp = tcp_round_trips(n);
  auto client = sortie::Client::connect();
  if (!client.ok()) {
    std::fprintf(stderr, "bench_call: %s\n", client.error().to_string().c_str());
    return 1;
  }
  std::vector<double> calls;
  const std::string payload(8, 'x');
  for (int i = 0; i < n + 100; ++i) {
    auto t = Clock::now();
    auto r = client->call("echo", payload);
    if (!r.ok() || *r != payload) {
      std::fprintf(stderr, "bench_call: %s\n", r.ok() ? "wrong reply" : r.error().to_string().c_str());
      return 1;
    }
    if (i >= 100)
      calls.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }
  std::printf("%.1f %.1f %.1f %.1f\n", percentile(tcp, 0.5), percentile(tcp, 0.99),
              percentile(calls, 0.5), percentile(calls, 0.99));
  return 0;
}
