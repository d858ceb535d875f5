// SPDX-License-Identifier: Apache-2.0
#pragma once

namespace sortie::cli {

/// Runs the `sortie` command line; returns the process exit code.
int run(int argc, char** argv);

} // namespace sortie::cli
