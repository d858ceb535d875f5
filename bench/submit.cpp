// SPDX-License-Identifier: Apache-2.0
// Bulk submission through the client library: N jobs in one acknowledged (durable) submission.
// Prints the seconds from the call to the acknowledgement.
//   bench_submit array N        one array job of N indices (one shared spec)
//   bench_submit batch N        N distinct jobs (each its own argv)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "sortie/client.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: bench_submit array|batch N\n");
    return 2;
  }
  std::string mode = argv[1];
  long n = std::atol(argv[2]);
  auto client = sortie::Client::connect();
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.error().to_string().c_str());
    return 1;
  }
  sortie::JobSpec spec;
  spec.argv = {"/bin/true"};
  std::vector<sortie::JobSpec> specs;
  if (mode == "batch") {
    specs.reserve(static_cast<std::size_t>(n));
    for (long i = 0; i < n; ++i) {
      sortie::JobSpec s;
      s.argv = {"/bin/echo", "input-" + std::to_string(i) + ".dat"};
      specs.push_back(std::move(s));
    }
  }
  auto t0 = std::chrono::steady_clock::now();
  auto r = mode == "array" ? client->submit_array(spec, sortie::ArrayRange{1, n, 1})
                           : client->submit_batch(specs);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r.ok() || r->count != static_cast<std::uint64_t>(n)) {
    std::fprintf(stderr, "submission failed: %s\n", r.ok() ? "wrong count" : r.error().to_string().c_str());
    return 1;
  }
  std::printf("%.6f\n", s);
  return 0;
}
