// SPDX-License-Identifier: Apache-2.0
// The `sortie` executable: the CLI, the hub (`hub start`) and the agent (`agent`) in one binary.
#include "cli/cli.hpp"

int main(int argc, char** argv) { return sortie::cli::run(argc, argv); }
