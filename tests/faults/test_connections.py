# SPDX-License-Identifier: Apache-2.0
"""Thousands of idle connections, few descriptors: the hub neither spins nor floods its log, and
real clients still get in."""
import os
import resource
import socket
import subprocess
import time


def cpu_seconds(pid):
    stat = open(f"/proc/{pid}/stat").read()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_unauthenticated_connections_under_a_small_fd_limit(sortie):
    def small_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    subprocess.run([sortie.bin, "hub", "start"], env=sortie.env, check=True, timeout=60,
                   preexec_fn=small_fd_limit, capture_output=True)
    hub = sortie.hub_pid()
    port = sortie.hub_file()["port"]
    conns = []
    try:
        for _ in range(400):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            conns.append(c)
        cpu0, t0 = cpu_seconds(hub), time.monotonic()
        # A real client gets in while they sit there (over TCP too, not only the unix socket).
        r = sortie.run("job", "list", timeout=30)
        assert r.returncode == 0
        time.sleep(2)  # a window to measure the hub's CPU while the connections idle
        busy = (cpu_seconds(hub) - cpu0) / (time.monotonic() - t0)
        assert busy < 0.3, f"the hub used {busy:.0%} of a core with idle connections"
    finally:
        for c in conns:
            c.close()
    log = (sortie.profile / "hub.log").stat().st_size
    assert log < 200_000, f"hub.log grew to {log} bytes"
    assert sortie.run("hub", "status").returncode == 0
