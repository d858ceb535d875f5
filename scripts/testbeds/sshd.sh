#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Two OpenSSH servers on 127.0.0.1 (ports 2222 and 2223) for the ssh pilot tests, with their own
# host key, client key, authorized_keys and known_hosts under /etc/sortie-testbeds/ssh. Nothing
# in /root or /etc/ssh changes: tests give ssh `-F /etc/sortie-testbeds/ssh/ssh_config`, which
# ssh also hands to the ssh it starts for each ProxyJump hop.
#   sshd.sh up | down | env      (env: prints the ssh options tests use)
# Idempotent; run as root (scripts/setup.sh --test installs openssh-server).
. "$(dirname "$0")/lib.sh"
D=$TB_ETC/ssh
PORTS=(2222 2223)

opts() { echo "-F $D/ssh_config"; }

up() {
  install -d -m 0755 "$TB_ETC" "$D" /run/sshd "$TB_RUN"
  [ -s "$D/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C sortie-testbed-host -f "$D/host_key"
  [ -s "$D/client_key" ] || ssh-keygen -q -t ed25519 -N '' -C sortie-testbed-client -f "$D/client_key"
  cp "$D/client_key.pub" "$D/authorized_keys"
  chmod 0644 "$D/authorized_keys"
  : >"$D/known_hosts.new"
  for p in "${PORTS[@]}"; do
    echo "[127.0.0.1]:$p $(cut -d' ' -f1,2 "$D/host_key.pub")" >>"$D/known_hosts.new"
  done
  echo "10.201.0.11,10.201.0.129,10.201.0.130 $(cut -d' ' -f1,2 "$D/host_key.pub")" >>"$D/known_hosts.new"
  mv "$D/known_hosts.new" "$D/known_hosts"
  chmod 0644 "$D/known_hosts"
  # sshd_config.any listens everywhere (inside the network namespaces of netns.sh);
  # sshd_config only on loopback.
  cat >"$D/sshd_config.any" <<CONF
# written by scripts/testbeds/sshd.sh
HostKey $D/host_key
AuthorizedKeysFile $D/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
MaxStartups 200:30:400
MaxSessions 200
CONF
  { echo "ListenAddress 127.0.0.1"; cat "$D/sshd_config.any"; } >"$D/sshd_config"
  cat >"$D/ssh_config" <<CONF
# written by scripts/testbeds/sshd.sh: the test beds' hosts only
Host 127.0.0.1 localhost 10.201.0.*
    User root
    IdentityFile $D/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $D/known_hosts
    StrictHostKeyChecking yes
    ConnectTimeout 5
    LogLevel ERROR
CONF
  chmod 0644 "$D/ssh_config"
  /usr/sbin/sshd -t -f "$D/sshd_config"
  for p in "${PORTS[@]}"; do
    local pidf=$TB_RUN/sshd-$p.pid
    tb_alive_pidfile "$pidf" && continue
    # sshd's own errors (a port in use) go to a log that is shown if it does not come up.
    local log=$TB_RUN/sshd-$p.log
    : >"$log"
    /usr/sbin/sshd -f "$D/sshd_config" -p "$p" -o PidFile="$pidf" -E "$log"
    if ! tb_wait_for 10 test -s "$pidf"; then
      tb_say "sshd on port $p did not start: $(tail -n 5 "$log")"
      return 1
    fi
  done
  # shellcheck disable=SC2046
  tb_wait_for 20 ssh $(opts) -oBatchMode=yes -p "${PORTS[0]}" root@127.0.0.1 true
  tb_say "sshd up on 127.0.0.1:${PORTS[*]}"
}

down() {
  for p in "${PORTS[@]}"; do tb_stop_pidfile "$TB_RUN/sshd-$p.pid"; done
  tb_say "sshd down"
}

case "${1:-up}" in
up) up ;;
down) down ;;
env) opts ;;
*) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
