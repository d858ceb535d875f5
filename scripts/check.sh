#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs exactly what CI runs: installs what is missing, builds with warnings as errors, runs the
# unit and integration tests and the fault catalogue (tests/faults), fuzzes each parser briefly,
# then builds and runs the tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
# The test beds (sshd, Slurm, Grid Engine; scripts/testbeds/) run meanwhile.
#   scripts/check.sh            everything
#   scripts/check.sh --fast     skip the sanitizer pass
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
[ "${1:-}" = "--fast" ] && fast=1
jobs=$(nproc)
PY=/usr/bin/python3 # Debian's: it has pytest (python3 first on PATH may not)

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

step "dependencies"
scripts/setup.sh --test

# Real sshd, network-namespace hosts, Slurm and Grid Engine for the remote pilot tests; stopped
# however this script ends.
step "test beds"
teardown() {
  scripts/testbeds/sge.sh down || true
  scripts/testbeds/slurm.sh down || true
  scripts/testbeds/netns.sh down || true
  scripts/testbeds/sshd.sh down || true
}
trap teardown EXIT
scripts/testbeds/sshd.sh up
scripts/testbeds/netns.sh up
scripts/testbeds/slurm.sh up
scripts/testbeds/sge.sh up >/dev/null

run_suite() { # preset [faults]
  local preset=$1 dir=build/$1
  step "configure and build ($preset)"
  cmake --preset "$preset" >/dev/null
  cmake --build "$dir" -j "$jobs"
  step "unit tests ($preset)"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --timeout 300
  step "integration tests ($preset)"
  SORTIE_BIN="$PWD/$dir/apps/sortie" timeout 1800 "$PY" -m pytest tests/integration \
    -q -p no:cacheprovider --timeout 300 -n "$jobs"
  if [ "${2:-}" = faults ]; then
    step "fault catalogue ($preset)"
    SORTIE_BIN="$PWD/$dir/apps/sortie" timeout 1200 "$PY" -m pytest tests/faults \
      -q -p no:cacheprovider --timeout 300 -n "$jobs"
  fi
}

# The fault catalogue (tests/faults) runs once, on the optimised build: it measures memory and
# timing-dependent recovery, which the sanitizers' overhead would only blur.
run_suite ci faults
# Each libFuzzer target briefly (scripts/fuzz.sh runs them long).
step "fuzzing (20 s per target)"
scripts/fuzz.sh 20
if [ $fast = 0 ]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  run_suite sanitize
fi
step "all checks passed"
