// SPDX-License-Identifier: Apache-2.0
// The C++ library's example from the README, whole: connect to the default profile's hub, submit
// one job (its command from this program's arguments), wait for it, print its output. The job
// runs in this program's current directory (JobSpec::cwd's default) with its environment
// (JobSpec::export_env, "ALL"). tests/integration/test_docs.py runs it.
#include <iostream>

#include "sortie/client.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " PROGRAM [ARGS...]\n";
    return 2;
  }
  auto client = sortie::Client::connect(); // the default profile's hub
  if (!client.ok()) {
    std::cerr << client.error().to_string() << "\n";
    return 1;
  }
  sortie::JobSpec spec;
  spec.argv.assign(argv + 1, argv + argc);
  auto submitted = client->submit(spec); // durable when it returns
  if (!submitted.ok()) {
    std::cerr << submitted.error().to_string() << "\n";
    return 1;
  }
  auto done = client->wait(sortie::JobSelector::range(submitted->first_id));
  if (!done.ok()) {
    std::cerr << done.error().to_string() << "\n";
    return 1;
  }
  auto printed = client->output(submitted->first_id, sortie::OutputStream::Stdout,
                                /*follow=*/false, [](std::string_view s) {
                                  std::cout << s;
                                  return true;
                                });
  if (!printed.ok()) {
    std::cerr << printed.error().to_string() << "\n";
    return 1;
  }
  return done->all_succeeded() ? 0 : 1;
}
