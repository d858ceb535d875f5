# SPDX-License-Identifier: Apache-2.0
"""The core with real hub and agent processes: arrays, exit codes, output, cancel, crashes,
authentication and bad input."""
import hashlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import alive, frame, pb_bytes, processes_with_env, read_frame, wait_for


def test_array_of_1000_jobs_each_writes_its_index(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--resource", "local", "--slots", "4", "--label", "cpu")
    out = tmp_path / "out"
    out.mkdir()
    first, last = sortie.submit("sh", "-c", 'echo "$SORTIE_ARRAY_INDEX" > "$0/$SORTIE_ARRAY_INDEX"',
                                str(out), opts=["--array", "1-1000"])
    assert last - first == 999
    sortie.run("job", "wait", "--all", timeout=600)
    for i in range(1, 1001):
        assert (out / str(i)).read_text() == f"{i}\n"
    jobs = sortie.jobs()
    assert len(jobs) == 1000
    assert {j["state"] for j in jobs} == {"succeeded"}
    assert sorted(j["array_index"] for j in jobs) == list(range(1, 1001))
    assert all(j["exit_code"] == 0 and j["node"] for j in jobs)


def test_exit_codes_and_signals_are_reported(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    ok = sortie.submit("true")
    three = sortie.submit("sh", "-c", "exit 3")
    killed = sortie.submit("sh", "-c", "kill -9 $$")
    missing = sortie.submit("/no/such/program")
    p = sortie.run("job", "wait", ok, three, killed, missing, check=False)
    assert p.returncode == 1
    assert "3 of 4 jobs did not succeed" in p.stderr
    by_id = {j["id"]: j for j in sortie.jobs()}
    assert by_id[ok]["state"] == "succeeded" and by_id[ok]["exit_code"] == 0
    assert by_id[three]["state"] == "failed" and by_id[three]["exit_code"] == 3
    assert by_id[killed]["state"] == "failed" and by_id[killed]["signal"] == 9
    assert by_id[killed]["exit_code"] is None
    assert by_id[missing]["state"] == "failed" and by_id[missing]["exit_code"] == 127
    assert "cannot execute '/no/such/program'" in by_id[missing]["reason"]
    shown = sortie.job(three)
    assert [h["state"] for h in shown["history"]] == ["queued", "assigned", "running", "failed"]
    assert shown["spec"]["argv"] == ["sh", "-c", "exit 3"]
    assert "usage" in shown


def test_environment_and_slots(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "4")
    job = sortie.submit("sh", "-c", 'echo "$SORTIE_JOB_ID $OMP_NUM_THREADS $GREETING $(pwd)"',
                        opts=["--slots", "3", "--env", "GREETING=hi", "--cwd", str(tmp_path)])
    sortie.run("job", "wait", job)
    assert sortie.run("job", "logs", job).stdout == f"{job} 3 hi {tmp_path}\n"


def test_ten_megabytes_of_output_arrive_whole(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "1")
    # 10 MiB of numbered lines on stdout, a little on stderr.
    script = ("import sys\n"
              "w = sys.stdout.write\n"
              "n = 0\n"
              "while n < 10 * 1024 * 1024:\n"
              "    line = '%09d %s\\n' % (n, 'x' * 53)\n"
              "    w(line); n += len(line)\n"
              "sys.stderr.write('done\\n')\n")
    job = sortie.submit("/usr/bin/python3", "-c", script)
    follow = subprocess.Popen([sortie.bin, "job", "logs", "-f", str(job)], env=sortie.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sortie.run("job", "wait", job, timeout=300)
    followed, err = follow.communicate(timeout=120)
    assert follow.returncode == 0, err
    expected = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True).stdout
    assert len(expected) >= 10 * 1024 * 1024
    stored = subprocess.run([sortie.bin, "job", "logs", str(job)], env=sortie.env,
                            capture_output=True, timeout=120).stdout
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert hashlib.sha256(followed).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert sortie.run("job", "logs", "--stderr", job).stdout == "done\n"


def test_cancel_kills_the_whole_process_tree(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "1")
    pids = tmp_path / "pids"
    # Children in the job's group, one that ignores SIGTERM, and one that left the session.
    script = ('sleep 300 & echo $! >> "$0"; '
              '(trap "" TERM; sleep 300) & echo $! >> "$0"; '
              '(setsid sh -c \'echo $$ >> "$0"; sleep 300\' "$0" &); '
              'echo $$ >> "$0"; sleep 300')
    job = sortie.submit("sh", "-c", script, str(pids))
    sortie.wait_state(job, "running")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 4, 30, "4 pids")
    recorded = [int(p) for p in pids.read_text().split()]
    assert all(alive(p) for p in recorded)
    out = sortie.run("job", "cancel", job).stdout
    assert "1 cancelled" in out
    p = sortie.run("job", "wait", job, check=False)
    assert p.returncode == 1
    assert sortie.job(job)["state"] == "cancelled"
    wait_for(lambda: not any(alive(p) for p in recorded), 10, "the job's processes to die")


def test_kill_9_of_the_hub_loses_nothing_and_runs_each_job_once(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "4", "--nodes", "2")
    record = tmp_path / "ran"
    first, last = sortie.submit("sh", "-c", 'sleep 0.05; echo "$SORTIE_ARRAY_INDEX" >> "$0"',
                                str(record), opts=["--array", "1-500"])
    wait_for(lambda: record.exists() and len(record.read_text().split()) >= 20, 60,
             "some jobs to finish")
    os.kill(sortie.hub_pid(), signal.SIGKILL)
    sortie.run("hub", "start")
    sortie.run("job", "wait", "--all", timeout=600)
    jobs = sortie.jobs()
    assert len(jobs) == 500
    assert {j["state"] for j in jobs} == {"succeeded"}
    ran = [int(x) for x in record.read_text().split()]
    assert sorted(ran) == list(range(1, 501)), "every job ran exactly once"


def test_acknowledged_submissions_survive_kill_9(sortie):
    sortie.start()
    first, last = sortie.submit("true", opts=["--array", "1-2000"])
    os.kill(sortie.hub_pid(), signal.SIGKILL)
    wait_for(lambda: not alive(sortie.hub_pid()), 10, "the hub to die")
    sortie.run("hub", "start")
    jobs = sortie.jobs()
    assert [j["id"] for j in jobs] == list(range(first, last + 1))
    assert {j["state"] for j in jobs} == {"queued"}


def test_kill_9_of_an_agent_requeues_its_jobs_and_kills_their_children(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "1", "--node-names", "a")
    pids = tmp_path / "pids"
    job = sortie.submit("sh", "-c", 'sleep 300 & echo $! >> "$0"; echo $$ >> "$0"; '
                        'if [ "$SORTIE_NODE" = a ]; then wait; else echo second run; fi',
                        str(pids))
    sortie.wait_state(job, "running")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 30, "pids")
    children = [int(p) for p in pids.read_text().split()]
    agent = sortie.agent_pids(node="a")
    assert len(agent) == 1, agent
    os.kill(agent[0], signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in children), 15, "the job's processes to die")
    wait_for(lambda: any(h["state"] == "lost" for h in sortie.job(job)["history"]), 15,
             "the job to be lost")
    assert sortie.job(job)["state"] == "queued"
    sortie.add_pilot("--slots", "1", "--node-names", "b")
    sortie.run("job", "wait", job, timeout=60)
    shown = sortie.job(job)
    assert shown["state"] == "succeeded" and shown["node"] == "b" and shown["attempt"] == 2
    states = [h["state"] for h in shown["history"]]
    assert states == ["queued", "assigned", "running", "lost", "queued", "assigned", "running",
                      "succeeded"]
    assert sortie.run("job", "logs", job).stdout == "second run\n"


def test_second_hub_start_is_a_clear_error(sortie):
    sortie.start()
    p = sortie.run("hub", "start", check=False)
    assert p.returncode == 1
    assert "a hub is already running for profile 'default'" in p.stderr
    assert str(sortie.hub_pid()) in p.stderr


def test_hub_start_waits_for_a_killed_hub_that_is_still_exiting(sortie):
    """A hub killed with -9 keeps its profile's lock until its last thread has finished (one can
    be in the middle of a large write while the first is already a zombie). `hub start` waits for
    it instead of calling it running. The killed hub is played by a process that takes the lock,
    names itself in hub.json, and ends its first thread while a second holds on until told: the
    kernel cannot be made to hold a real hub's write at will."""
    sortie.start()
    old = sortie.hub_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not alive(old), 30, "the hub to die")
    holder = subprocess.Popen([sys.executable, "-c", """
import ctypes, fcntl, json, os, sys, threading
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
hub = json.load(open(sys.argv[2]))
hub["pid"] = os.getpid()
fd = os.open(sys.argv[2] + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, json.dumps(hub).encode())
os.close(fd)
os.replace(sys.argv[2] + ".new", sys.argv[2])
threading.Thread(target=sys.stdin.read).start()
print("held", flush=True)
ctypes.CDLL(None).pthread_exit(None)
""", str(sortie.profile / "hub.lock"), str(sortie.profile / "hub.json")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        wait_for(lambda: open(f"/proc/{holder.pid}/stat").read().split(") ")[1][0] == "Z", 10,
                 "the holder's first thread to end")
        start = subprocess.Popen([sortie.bin, "hub", "start"], env=sortie.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = sortie.profile / "hub.log"
        wait_for(lambda: f"(pid {holder.pid}) to finish exiting" in log.read_text(), 30,
                 "hub start to wait for the exiting hub")
        assert start.poll() is None, start.communicate()
        holder.stdin.close()
        out, err = start.communicate(timeout=60)
        assert start.returncode == 0, err
        assert sortie.hub_pid() == int(out.split("pid ")[1].split(")")[0].split(",")[0])
    finally:
        holder.kill()
        holder.wait()
    assert sortie.run("job", "list").returncode == 0
    # A hub that is running (not exiting) is still reported at once.
    p = sortie.run("hub", "start", check=False)
    assert p.returncode == 1 and "a hub is already running" in p.stderr


def test_commands_without_a_hub_say_so(sortie):
    p = sortie.run("job", "list", check=False)
    assert p.returncode == 3
    assert "sortie hub start" in p.stderr
    p = sortie.run("hub", "status", check=False)
    assert p.returncode == 3


def test_hub_stop_and_restart_keeps_jobs(sortie):
    sortie.start()
    job = sortie.submit("true")
    sortie.run("hub", "stop")
    assert sortie.run("hub", "status", check=False).returncode == 3
    sortie.start()
    assert sortie.job(job)["state"] == "queued"
    sortie.add_pilot("--slots", "1")
    sortie.run("job", "wait", job)


def test_hub_files_are_private_and_hold_no_token_in_logs(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "1")
    sortie.run("job", "wait", sortie.submit("true"))
    assert (sortie.profile / "hub.json").stat().st_mode & 0o777 == 0o600
    token = sortie.hub_file()["token"]
    for log in list(sortie.profile.glob("*.log")) + list((sortie.profile / "logs").glob("*.log")):
        assert token not in log.read_text()
    for pid in processes_with_env(b"SORTIE_HOME=" + str(sortie.home).encode()):
        assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    listen = sortie.hub_file()["host"]
    assert listen == "127.0.0.1"


def test_a_client_with_the_wrong_token_is_refused_and_changes_nothing(sortie):
    sortie.start()
    sortie.submit("true")
    # Another profile whose hub.json points at this hub, with a wrong token.
    other = sortie.home / "other"
    other.mkdir()
    hf = sortie.hub_file()
    hf["token"] = secrets.token_hex(32)
    (other / "hub.json").write_text(__import__("json").dumps(hf))
    os.chmod(other / "hub.json", 0o600)
    p = sortie.run("submit", "--", "true", profile="other", check=False)
    assert p.returncode != 0
    assert "could not prove it knows this profile's token" in p.stderr
    assert len(sortie.jobs()) == 1


def test_the_hub_refuses_a_peer_that_fails_the_challenge(sortie):
    """Speaks the handshake by hand (protobuf encoded here) with a made-up proof."""
    sortie.start()
    with sortie.tls_connect() as s:
        hello = b"\x08\x01" + b"\x10\x01" + pb_bytes(3, secrets.token_bytes(32))  # version, role
        s.sendall(frame(pb_bytes(10, hello)))
        challenge = read_frame(s)
        assert challenge is not None and challenge[0] == (11 << 3 | 2)
        s.sendall(frame(pb_bytes(12, pb_bytes(1, secrets.token_bytes(32)))))
        reply = read_frame(s)
        assert reply is not None and reply[0] == (14 << 3 | 2)  # an ErrorReply
        assert b"authentication failed" in reply
        assert read_frame(s) is None  # then the link is closed
    assert sortie.run("hub", "status").returncode == 0


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                     b"\x00\x00\x00\x05hello",
                                     b"\xff" * 64,
                                     b"\x00\x00"])
@pytest.mark.parametrize("tls", [True, False], ids=["in-tls", "plain"])
def test_garbage_to_the_hub_port_closes_that_connection_only(sortie, garbage, tls):
    sortie.start()
    hf = sortie.hub_file()
    keep = sortie.tls_connect(timeout=30)
    with (sortie.tls_connect(timeout=30) if tls else
          socket.create_connection((hf["host"], hf["port"]), timeout=30)) as s:
        s.sendall(garbage)
        if len(garbage) < 4:
            s.shutdown(socket.SHUT_WR)  # a truncated frame, then end of stream
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break  # closed by the hub
            data += chunk
    keep.close()
    if not tls:  # a plain-text peer on the TCP port is told what is wrong
        assert b"did not start TLS" in data, data
    assert sortie.run("hub", "status").returncode == 0
    sortie.submit("true")
    log = (sortie.profile / "hub.log").read_text()
    assert "rejected" in log


def test_bad_cli_input_gets_a_usage_error(sortie):
    sortie.start()
    p = sortie.run("submit", "--array", "5-1", "--", "true", check=False)
    assert p.returncode == 2 and "FIRST-LAST" in p.stderr
    p = sortie.run("job", "show", "abc", check=False)
    assert p.returncode == 2 and "not a job id" in p.stderr
    p = sortie.run("submit", "--env", "NOVALUE", "--", "true", check=False)
    assert p.returncode == 2 and "NAME=VALUE" in p.stderr
    p = sortie.run("job", "wait", check=False)
    assert p.returncode == 2 and "--all" in p.stderr
    p = sortie.run("submit", check=False)
    assert p.returncode == 2 and "no command" in p.stderr
    p = sortie.run("job", "list", "--state", "bogus", check=False)
    assert p.returncode == 2 and "not a job state" in p.stderr


def test_bad_config_file_names_the_line(sortie):
    (sortie.profile / "config.toml").write_text('[hub]\nheartbeat_interval = "5 parsecs"\n')
    p = sortie.run("hub", "start", check=False)
    assert p.returncode == 1
    assert "config.toml:2" in p.stderr and "heartbeat_interval" in p.stderr
    (sortie.profile / "config.toml").write_text('[hub]\nlisten = "127.0.0.1:0"\nbogus = 1\n')
    p = sortie.run("hub", "start", check=False)
    assert "config.toml:3" in p.stderr and "unknown key hub.bogus" in p.stderr
    assert "engine_prefetch_max" in p.stderr  # the known keys are listed
    (sortie.profile / "config.toml").write_text('[hub]\nengine_prefetch_max = 0\n')
    p = sortie.run("hub", "start", check=False)
    assert p.returncode == 1 and "config.toml:2" in p.stderr and "engine_prefetch_max" in p.stderr


def test_wait_times_out_with_exit_4(sortie):
    sortie.start()
    job = sortie.submit("true")  # no pilot: it stays queued
    p = sortie.run("job", "wait", job, "--timeout", "500ms", check=False)
    assert p.returncode == 4
    assert "did not finish within" in p.stderr


def test_follow_streams_output_while_the_job_runs(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "1")
    gate = tmp_path / "gate"
    job = sortie.submit("sh", "-c", 'echo first; while [ ! -e "$0" ]; do sleep 0.05; done; '
                        'echo second >&2; echo third', str(gate))
    follow = subprocess.Popen([sortie.bin, "job", "logs", "-f", str(job)], env=sortie.env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout.readline() == "first\n"  # while the job still waits for the gate
        assert sortie.job(job)["state"] == "running"
        gate.touch()
        rest, _ = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert rest == "third\n"
    assert follow.returncode == 0
    assert sortie.run("job", "logs", "--stderr", job).stdout == "second\n"


def test_commands_that_create_work_start_the_hub_when_none_runs(sortie):
    # README, "Starting the hub": submit (and map, pilot add, resource add) start it.
    assert sortie.run("hub", "status", check=False).returncode == 3
    p = sortie.run("submit", "--", "true")
    assert "started the hub for profile 'default'" in p.stderr, p.stderr
    job = p.stdout.strip()
    assert sortie.json("hub", "status")["pid"] == sortie.hub_pid()
    assert sortie.job(job)["state"] == "queued"
    # A second command finds it running and starts nothing.
    p = sortie.run("pilot", "add", "--resource", "local", "--slots", "1")
    assert "started the hub" not in p.stderr
    sortie.run("job", "wait", job)


def test_each_command_that_creates_work_starts_the_hub(sortie, tmp_path):
    # README, "Starting the hub": map, pilot add and resource add too, each on its own.
    items = tmp_path / "items"
    items.write_text("a\nb\n")
    for cmd in (["map", "--each-line", items, "--", "true"],
                ["pilot", "add", "--resource", "local", "--slots", "1"],
                ["resource", "add", "cluster", "--type", "slurm"]):
        assert sortie.run("hub", "status", check=False).returncode == 3
        p = sortie.run(*cmd)
        assert "started the hub for profile 'default'" in p.stderr, (cmd, p.stderr)
        assert sortie.json("hub", "status")["pid"] == sortie.hub_pid()
        sortie.run("hub", "stop")
