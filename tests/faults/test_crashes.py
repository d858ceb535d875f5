# SPDX-License-Identifier: Apache-2.0
"""kill -9 at random moments, and malformed frames on every transport: nothing acknowledged is
lost, every job has one state, and a bad frame closes only its own connection."""
import os
import random
import select
import signal
import socket
import subprocess
import threading
import time

from conftest import alive, processes_with_env, wait_for


def test_kill_9_of_the_hub_during_a_submission_storm(sortie):
    sortie.start()
    acked = []
    stop = threading.Event()

    def storm():
        while not stop.is_set():
            p = subprocess.run([sortie.bin, "submit", "--array", "1-3", "--", "true"],
                               env=sortie.env, capture_output=True, text=True, timeout=60)
            if p.returncode == 0:  # acknowledged: FIRST-LAST
                first, last = map(int, p.stdout.strip().split("-"))
                acked.extend(range(first, last + 1))

    threads = [threading.Thread(target=storm) for _ in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(20261129)
    try:
        for _ in range(20):
            time.sleep(rng.uniform(0.02, 0.3))  # a random moment of the storm
            hub = sortie.hub_pid()
            os.kill(hub, signal.SIGKILL)
            wait_for(lambda: not alive(hub), 10, "the hub to die")
            # The storm's own submissions may have started it again already (submit starts the
            # hub when none runs): either way one hub runs after this.
            p = sortie.run("hub", "start", check=False)
            assert p.returncode == 0 or "already running" in p.stderr, p.stderr
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert len(acked) > 0
    ids = [j["id"] for j in sortie.jobs()]
    assert len(ids) == len(set(ids)), "a job id was given twice"
    missing = sorted(set(acked) - set(ids))
    assert not missing, f"acknowledged jobs lost: {missing[:20]}"
    assert all(j["state"] == "queued" for j in sortie.jobs())
    sortie.run("hub", "stop")
    r = sortie.run("hub", "check")
    assert "intact" in r.stdout


def test_bad_frames_on_the_unix_socket_close_that_connection_only(sortie):
    sortie.start()
    path = sortie.hub_file()["socket"]
    cases = [b"\x00\x00\x00\x05hello",                 # not a protobuf
             b"\x7f\xff\xff\xff" + b"x" * 100,          # oversized
             b"\x00\x00\x10",                           # truncated header
             b"\x00\x00\x00\x20" + b"\x0a" * 10]        # truncated body
    for garbage in cases:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(path)
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass  # until the hub closes it
        assert sortie.run("hub", "status", timeout=10).returncode == 0


def test_a_slow_frame_is_dropped_at_the_handshake_deadline(sortie):
    sortie.start()
    with sortie.tls_connect(timeout=60) as s:
        s.sendall(b"\x00\x00\x00\x40")  # a header, then the body never comes
        t0 = time.monotonic()
        while s.recv(4096):
            pass
        took = time.monotonic() - t0
    assert took < 30, f"the hub kept a silent half-frame for {took:.0f} s"
    assert sortie.run("hub", "status").returncode == 0


def test_kill_9_of_a_job_leader_ends_its_children_and_fails_the_job(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "1")
    job = sortie.submit("sh", "-c", 'sleep 300 & sleep 300 & echo $$ > "$1/pid"; wait', "j",
                        str(tmp_path))
    sortie.wait_state(job, "running")
    wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
             10, "the job to start")
    leader = int((tmp_path / "pid").read_text())
    os.kill(leader, signal.SIGKILL)
    shown = sortie.wait_state(job, "failed")
    assert "SIGKILL" in shown["reason"], shown
    tag = f"SORTIE_JOB_ID={job}".encode()
    ours = set(processes_with_env(f"SORTIE_HOME={sortie.home}".encode()))
    wait_for(lambda: not [p for p in processes_with_env(tag) if p in ours], 10,
             "the job's children to be killed")


def test_a_hub_whose_log_reader_has_gone_keeps_running(sortie):
    """`sortie hub start --foreground 2>&1 | head -1`: the hub's log goes to a pipe whose reader
    has gone, so each write to it fails. The hub runs on (a SIGPIPE would end it, as a write to
    the pipe of a dead ssh once did); its agents and jobs too."""
    hub = subprocess.Popen([sortie.bin, "hub", "start", "--foreground"], env=sortie.env,
                           cwd=str(sortie.home), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([hub.stderr], [], [], 60)
        assert ready, "the hub logged nothing within 60 s"
        assert b"listening on" in hub.stderr.readline()
        hub.stderr.close()  # the reader goes
        # Each of these logs a line ("pilot 1: started agent ...", "agent 1 registered ...").
        sortie.add_pilot("--resource", "local", "--slots", "1")
        job = sortie.submit("true")
        sortie.wait_state(job, "succeeded")
        assert hub.poll() is None, f"the hub exited with {hub.returncode}"
        assert sortie.json("hub", "status")["pid"] == hub.pid
    finally:
        sortie.run("hub", "stop", check=False)
        try:
            hub.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
