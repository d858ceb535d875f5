#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets everything up and runs the main job on the embedded default: a local hub with a local
# pilot, running a sample workload (40 Monte Carlo estimates of pi as an array job), then
# combines their output. Uses the profile "demo" so it leaves your default profile alone.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake --preset release >/dev/null
cmake --build build/release -j "$(nproc)"
sortie() { build/release/apps/sortie --profile demo "$@"; }

sortie hub stop >/dev/null
sortie hub start
sortie pilot add --resource local --slots "$(nproc)" --label cpu >/dev/null
range=$(sortie submit --label cpu --array 1-40 --name pi -- /usr/bin/python3 "$PWD/examples/pi.py")
echo "submitted jobs $range"
sortie job wait "$range"
inside=0 total=0
for id in $(seq "${range%-*}" "${range#*-}"); do
  read -r _ in n < <(sortie job logs "$id")
  inside=$((inside + in)) total=$((total + n))
done
echo "pi is about $(/usr/bin/python3 -c "print(4 * $inside / $total)") ($total samples in 40 jobs)"
sortie job list --state succeeded | tail -n 3
sortie hub stop
echo "explore with: build/release/apps/sortie --help (the demo's profile is ~/.sortie/demo)"
