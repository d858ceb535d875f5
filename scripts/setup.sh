#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything sortie needs to build and test from Debian 12's archive, idempotently:
# packages already present are skipped and apt-get runs only when something is missing.
#   scripts/setup.sh            build dependencies
#   scripts/setup.sh --test     build + test dependencies
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

build_pkgs=(g++ cmake ninja-build pkgconf libboost1.81-dev libprotobuf-dev protobuf-compiler
  libsqlite3-dev libspdlog-dev libfmt-dev libcli11-dev libtomlplusplus-dev libssl-dev
  nlohmann-json3-dev pybind11-dev python3-dev python3-cloudpickle libjemalloc-dev)
# clang and its runtime (libFuzzer, sanitizers) build the fuzz targets (scripts/fuzz.sh).
fuzz_pkgs=(clang libclang-rt-14-dev)
test_pkgs=(libgtest-dev libgmock-dev libbenchmark-dev python3-pytest python3-pytest-xdist
  python3-pytest-timeout parallel procps openssh-server openssh-client munge slurm-wlm iproute2
  gridengine-master gridengine-exec gridengine-client openmpi-bin libopenmpi-dev python3-numpy
  python3-mpi4py python3-distributed python3-ipyparallel)

want=("${build_pkgs[@]}")
if [ "${1:-}" = "--test" ]; then want+=("${test_pkgs[@]}" "${fuzz_pkgs[@]}"); fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
  exit 1
fi
apt_opts=(-o DPkg::Lock::Timeout=900 -q)
# Grid Engine's packages initialise a cell for this host only when told to.
if printf '%s\n' "${missing[@]}" | grep -q '^gridengine'; then
  debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $(hostname)
EOF
fi
# An update only when the package lists are missing or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
  apt-get "${apt_opts[@]}" update >/dev/null
fi
apt-get "${apt_opts[@]}" install -y --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
