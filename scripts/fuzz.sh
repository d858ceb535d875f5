#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the libFuzzer targets (fuzz/, clang with AddressSanitizer and UBSan) and runs each for
# SECONDS (default 600) from the seed corpus in fuzz/corpus/; what it learns goes to build/fuzz/
# corpus, never into the tree. Prints each target's executions; exits non-zero on a finding
# (the crashing input is left in build/fuzz/findings/).
#   scripts/fuzz.sh            10 minutes per target
#   scripts/fuzz.sh 20         20 seconds each (what scripts/check.sh runs)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
targets=(frame mapfile jobfile config machinefile)
cmake --preset fuzz >/dev/null
cmake --build build/fuzz -j "$(nproc)" --target "${targets[@]/#/fuzz_}"
mkdir -p build/fuzz/findings
status=0
for t in "${targets[@]}"; do
  work=build/fuzz/corpus/$t
  mkdir -p "$work"
  log=build/fuzz/$t.log
  if ! build/fuzz/fuzz/fuzz_"$t" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix=build/fuzz/findings/"$t"- -max_len=65536 "$work" fuzz/corpus/"$t" \
      >"$log" 2>&1; then
    echo "fuzz_$t: FINDING (see $log and build/fuzz/findings/)"
    tail -n 30 "$log"
    status=1
    continue
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz_$t: $runs executions in ${seconds}s, no finding"
done
exit $status
