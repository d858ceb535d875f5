# shellcheck shell=bash
# SPDX-License-Identifier: Apache-2.0
# Helpers for the test beds: real daemons (sshd, Slurm, ...) started by hand with pidfiles, since
# these machines have no systemd. Source it: . "$(dirname "$0")/lib.sh"
set -euo pipefail
TB_ETC=/etc/sortie-testbeds
TB_RUN=/run/sortie-testbeds

tb_say() { printf '[testbeds %s] %s\n' "$(date +%T)" "$*" >&2; }

# tb_wait_for SECONDS CMD... : retry CMD until it succeeds or SECONDS pass.
tb_wait_for() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then tb_say "timed out waiting for: $*"; return 1; fi
    sleep 0.2
  done
}

# tb_alive PID : running and not a zombie (PID 1 here reaps orphans only every few seconds, so
# `kill -0` is not enough).
tb_alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
tb_alive_pidfile() { [ -s "$1" ] && tb_alive "$(cat "$1")"; }

# tb_stop_pidfile FILE : TERM the process, wait up to 10 s, then KILL.
tb_stop_pidfile() {
  local f=$1 pid i
  [ -s "$f" ] || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  if tb_alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 50); do tb_alive "$pid" || break; sleep 0.2; done
    tb_alive "$pid" && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
