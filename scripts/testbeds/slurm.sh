#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A Slurm cluster on this machine (slurmctld + slurmd + munge, Debian 12's slurm-wlm 22.05) for
# the Slurm pilot tests: two nodes n1 and n2, both this host (a slurmd each, `slurmd -N`, on
# ports 6821/6822), 8 declared CPUs each, partition `debug`, finished jobs visible for 5
# minutes, a scheduler that looks every second. Jobs on n2 see SLURMD_NODENAME=n2.
#   slurm.sh up | down
# Idempotent; run as root (scripts/setup.sh --test installs munge and slurm-wlm).
. "$(dirname "$0")/lib.sh"
HOST=$(hostname -s)
NODES="n1 n2"

# Also the single slurmd of this script's earlier version.
stop_slurmds() { for f in /run/slurm/slurmd.pid /run/slurm/slurmd-*.pid; do [ -e "$f" ] && tb_stop_pidfile "$f"; done; true; }

up() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  tb_alive_pidfile /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  tb_wait_for 20 bash -c 'munge -n | unmunge'

  install -d -o slurm -g slurm -m 0755 /var/lib/slurm/slurmctld /var/log/slurm /run/slurm
  for n in $NODES; do install -d -m 0755 "/var/lib/slurm/slurmd-$n"; done
  cat >/etc/slurm/slurm.conf.new <<CONF
# written by scripts/testbeds/slurm.sh (sortie's tests)
ClusterName=sortie-test
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd-%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=2
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0,sched_min_interval=0
NodeName=n[1-2] NodeHostname=${HOST} NodeAddr=127.0.0.1 Port=[6821-6822] CPUs=8 RealMemory=8192 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
  if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf 2>/dev/null; then
    mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
    stop_slurmds
    tb_stop_pidfile /run/slurm/slurmctld.pid
  else
    rm -f /etc/slurm/slurm.conf.new
  fi
  tb_alive_pidfile /run/slurm/slurmctld.pid || /usr/sbin/slurmctld
  tb_wait_for 30 scontrol ping
  for n in $NODES; do tb_alive_pidfile "/run/slurm/slurmd-$n.pid" || /usr/sbin/slurmd -N "$n"; done
  tb_wait_for 60 bash -c "[ \$(sinfo -h -N -o '%t' | grep -Ec '^(idle|mix|alloc)') -ge 2 ]"
  tb_say "slurm up: $(sinfo -h -o '%P %D %C')"
}

down() {
  # Jobs of the tests first, so nothing of theirs outlives the daemons.
  scancel --user=root >/dev/null 2>&1 || true
  stop_slurmds
  tb_stop_pidfile /run/slurm/slurmctld.pid
  tb_stop_pidfile /run/munge/munged.pid
  tb_say "slurm down"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
