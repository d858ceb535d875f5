#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Single-host Grid Engine (Debian 12's gridengine 8.1.9) for the Grid Engine pilot tests:
# sge_qmaster + sge_execd on this host, queue all.q with 8 slots, parallel environment smp,
# a scheduler that looks every second, root may run jobs.
#   sge.sh up | down | env     (env: the variables Grid Engine's commands need)
# Idempotent; run as root (scripts/setup.sh --test installs the packages). Three fixes make it
# work on these machines (TESTBEDS.md §2): a host alias for 127.0.0.1's reverse name, min_uid 0,
# and the real binaries in /usr/lib/gridengine instead of Debian's slow wrappers.
. "$(dirname "$0")/lib.sh"
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default SGE_ARCH=lx-amd64
export PATH=/usr/lib/gridengine:$PATH
HOST=$(hostname)
SLOTS=8

env_vars() { echo "SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL SGE_ARCH=$SGE_ARCH PATH=/usr/lib/gridengine"; }

up() {
  [ -s "$SGE_ROOT/$SGE_CELL/common/act_qmaster" ] || {
    tb_say "Grid Engine's cell is not initialised: install gridengine-master (scripts/setup.sh --test)"
    exit 1
  }
  echo "$HOST" >"$SGE_ROOT/$SGE_CELL/common/act_qmaster"
  if [ "$(/usr/lib/gridengine/gethostbyaddr -name 127.0.0.1 2>/dev/null)" != "$HOST" ]; then
    echo "$HOST localhost" >"$SGE_ROOT/$SGE_CELL/common/host_aliases"
    chown sgeadmin:sgeadmin "$SGE_ROOT/$SGE_CELL/common/host_aliases"
  fi
  install -d -o sgeadmin -g sgeadmin -m 0755 /run/gridengine /var/spool/gridengine/execd
  local qpid=/var/spool/gridengine/qmaster/qmaster.pid
  tb_alive_pidfile $qpid || SGE_MASTER_PIDFILE=$qpid /usr/sbin/sge_qmaster
  tb_wait_for 60 qconf -sh
  local tmp
  tmp=$(mktemp -d /tmp/sortie-sge.XXXXXX)
  # qconf -m* edits with $EDITOR: a one-line script that applies a sed expression.
  edit() {
    printf '#!/bin/sh\nsed -i %s "$1"\n' "'$1'" >"$tmp/ed"
    chmod +x "$tmp/ed"
    EDITOR="$tmp/ed" qconf "${@:2}" >/dev/null
  }
  edit 's/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/; s/^load_report_time .*/load_report_time 00:00:05/' -mconf global
  edit 's/^schedule_interval .*/schedule_interval 0:0:1/; s/^flush_submit_sec .*/flush_submit_sec 1/; s/^flush_finish_sec .*/flush_finish_sec 1/' -msconf
  qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null
  qconf -sh 2>/dev/null | grep -qx "$HOST" || qconf -ah "$HOST" >/dev/null
  if ! qconf -sel 2>/dev/null | grep -qx "$HOST"; then
    printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$HOST" >"$tmp/host"
    qconf -Ae "$tmp/host" >/dev/null
  fi
  if ! qconf -spl 2>/dev/null | grep -qx smp; then
    printf 'pe_name smp\nslots 999\nuser_lists NONE\nxuser_lists NONE\nstart_proc_args NONE\nstop_proc_args NONE\nallocation_rule $pe_slots\ncontrol_slaves TRUE\njob_is_first_task TRUE\nurgency_slots min\naccounting_summary FALSE\nqsort_args NONE\n' >"$tmp/pe"
    qconf -Ap "$tmp/pe" >/dev/null
  fi
  {
    printf 'qname all.q\nhostlist %s\nseq_no 0\nload_thresholds NONE\nsuspend_thresholds NONE\n' "$HOST"
    printf 'nsuspend 1\nsuspend_interval 00:05:00\npriority 0\nmin_cpu_interval 00:05:00\n'
    printf 'processors UNDEFINED\nqtype BATCH INTERACTIVE\nckpt_list NONE\npe_list smp\nrerun FALSE\n'
    printf 'slots %s\ntmpdir /tmp\nshell /bin/sh\nprolog NONE\nepilog NONE\n' "$SLOTS"
    printf 'shell_start_mode unix_behavior\nstarter_method NONE\nsuspend_method NONE\n'
    printf 'resume_method NONE\nterminate_method NONE\nnotify 00:00:60\nowner_list NONE\n'
    printf 'user_lists NONE\nxuser_lists NONE\nsubordinate_list NONE\ncomplex_values NONE\n'
    printf 'projects NONE\nxprojects NONE\ncalendar NONE\ninitial_state default\n'
    for l in s_rt h_rt s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack s_core h_core \
             s_rss h_rss s_vmem h_vmem; do printf '%s INFINITY\n' "$l"; done
  } >"$tmp/all.q"
  if qconf -sql 2>/dev/null | grep -qx all.q; then qconf -Mq "$tmp/all.q" >/dev/null; else qconf -Aq "$tmp/all.q" >/dev/null; fi
  rm -rf "$tmp"
  local f alive=0
  for f in /var/spool/gridengine/execd/*/execd.pid; do tb_alive_pidfile "$f" && alive=1; done
  [ $alive = 1 ] || /usr/sbin/sge_execd
  # usable: the queue instance shows no u(nknown), a(larm) or E(rror) state
  tb_wait_for 90 bash -c "qstat -f -q all.q@$HOST | awk 'NR==3' | awk '{exit (\$6 ~ /[uaE]/)}'"
  tb_say "grid engine up: all.q@$HOST with $SLOTS slots"
}

down() {
  if qconf -sh >/dev/null 2>&1; then qdel -f -u '*' >/dev/null 2>&1 || true; fi
  local f
  for f in /var/spool/gridengine/execd/*/execd.pid; do [ -e "$f" ] && tb_stop_pidfile "$f"; done
  tb_stop_pidfile /var/spool/gridengine/qmaster/qmaster.pid
  tb_say "grid engine down"
}

case "${1:-up}" in
up) up ;;
down) down ;;
env) env_vars ;;
*) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
