#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Two hosts in network namespaces for the gateway tests, in 10.201.0.0/24, a range that exists
# only on this machine:
#
#   root ns 10.201.0.1 -- veth -- sx-login 10.201.0.11  (the "login node": the gateway)
#                                 sx-login 10.201.0.129 -- veth -- sx-compute 10.201.0.130
#
# sx-compute is reachable only from sx-login (no route from the root namespace; sx-login does
# not forward). Each host runs the test sshd (scripts/testbeds/sshd.sh's keys and config) on :22
# in its own UTS namespace, so `hostname` there prints sx-login / sx-compute.
#   netns.sh up | down
# The guard route (unreachable 10.201.0.0/24) goes in first and comes out last, so no packet for
# these addresses can leave the machine by the default route.
. "$(dirname "$0")/lib.sh"
D=$TB_ETC/ssh
NET=10.201.0.0/24

ns_add() { ip netns list | grep -qw "^$1" || ip netns add "$1"; ip -n "$1" link set lo up; }

up() {
  "$(dirname "$0")/sshd.sh" up >/dev/null 2>&1 || "$(dirname "$0")/sshd.sh" up
  ip route replace unreachable "$NET" metric 1 # the guard, first
  ns_add sx-login
  ns_add sx-compute
  if ! ip link show sxv-login >/dev/null 2>&1; then
    ip -n sx-login link del eth0 2>/dev/null || true
    ip link add sxv-login type veth peer name eth0 netns sx-login
  fi
  ip addr replace 10.201.0.1/25 dev sxv-login
  ip link set sxv-login up
  ip -n sx-login addr replace 10.201.0.11/25 dev eth0
  ip -n sx-login link set eth0 up
  if ! ip -n sx-login link show eth1 >/dev/null 2>&1; then
    ip -n sx-compute link del eth0 2>/dev/null || true
    ip -n sx-login link add eth1 type veth peer name eth0 netns sx-compute
  fi
  ip -n sx-login addr replace 10.201.0.129/25 dev eth1
  ip -n sx-login link set eth1 up
  ip -n sx-compute addr replace 10.201.0.130/25 dev eth0
  ip -n sx-compute link set eth0 up
  for ns in sx-login sx-compute; do
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
    local pidf=$TB_RUN/sshd-$ns.pid
    tb_alive_pidfile "$pidf" && continue
    ip netns exec "$ns" unshare --uts sh -c \
      "hostname $ns; exec /usr/sbin/sshd -f $D/sshd_config.any -p 22 -o PidFile=$pidf"
    tb_wait_for 10 test -s "$pidf"
  done
  tb_wait_for 20 ssh -F "$D/ssh_config" -oBatchMode=yes root@10.201.0.11 true
  tb_say "netns up: sx-login 10.201.0.11, sx-compute 10.201.0.130 (only through sx-login)"
}

down() {
  for ns in sx-login sx-compute; do tb_stop_pidfile "$TB_RUN/sshd-$ns.pid"; done
  for ns in sx-login sx-compute; do
    if ip netns list | grep -qw "^$ns"; then
      for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  ip link del sxv-login 2>/dev/null || true
  ip route del unreachable "$NET" 2>/dev/null || true # the guard, last
  tb_say "netns down"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
