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
        # A real client gets in while they sit there (over the unix socket, which the limit on
        # connections in their handshake does not count: it is the user's own, mode 0600).
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


def test_many_authenticated_connections_are_never_closed_to_admit_new_ones(sortie, tmp_path):
    # More live clients than the handshake limit (64): only unauthenticated connections may be
    # closed to make room, never these.
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    done = tmp_path / "done"
    job = sortie.submit("sh", "-c", 'echo started; while [ ! -e "$1" ]; do sleep 0.05; done',
                        "job", str(done))
    sortie.wait_state(job, "running")
    followers = [subprocess.Popen([sortie.bin, "job", "logs", "-f", str(job)], env=sortie.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(80)]
    try:
        for f in followers:  # each has its first line: connected and authenticated
            assert f.stdout.readline() == b"started\n"
        port = sortie.hub_file()["port"]
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(70)]
        assert sortie.run("hub", "status", timeout=30).returncode == 0
        for c in idle:
            c.close()
        done.write_text("")
        for f in followers:
            assert f.wait(timeout=60) == 0, f.stderr.read()
    finally:
        for f in followers:
            f.kill()
            f.wait()
