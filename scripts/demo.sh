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
# `import sortie` for Debian's python3: a .pth file naming the build's package directory, in the
# system site directory as root (/usr/local/lib/python3.X/dist-packages), else the user's.
site=$(/usr/bin/python3 -c 'import os, site
print(site.getsitepackages()[0] if os.geteuid() == 0 else site.getusersitepackages())')
mkdir -p "$site"
printf '%s\n' "$PWD/build/release/python" > "$site/sortie.pth"

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
# The same from Python, with engines: long-lived workers that take function calls.
SORTIE_PROFILE=demo /usr/bin/python3 examples/engines_pi.py
sortie hub stop
echo "explore with: build/release/apps/sortie --help (the demo's profile is ~/.sortie/demo);"
echo "/usr/bin/python3 -c 'import sortie' works now ($site/sortie.pth)"
