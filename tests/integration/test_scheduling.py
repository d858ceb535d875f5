# SPDX-License-Identifier: Apache-2.0
"""Scheduling with real agents: map files and max-per-node, memory, GPUs, hosts, priorities,
timeouts, retries and dependencies."""
import os
import signal
from pathlib import Path

import pytest

from conftest import alive, wait_for


def max_concurrency(intervals):
    """Largest number of [start, end) intervals open at once."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def test_map_file_runs_each_file_on_its_host_with_max_per_node(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "4", "--node-names", "n1,n2,n3")
    mapfile = tmp_path / "map.txt"
    files = {h: [f"{h}-part{i}.dat" for i in range(6)] for h in ("n1", "n2", "n3")}
    lines = ["# three hosts, six files each, lists over several lines"]
    for h, fs in files.items():
        lines.append(f"{h} = [ {fs[0]}, {fs[1]},\n        {', '.join(fs[2:])} ]")
    mapfile.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    group = int(sortie.run("map", "--mapfile", mapfile, "--max-per-node", "2", "--",
                           "sh", "-c", 'sleep 0.3; echo "$SORTIE_NODE" > "$1/$(basename "$0")"',
                           "{}", str(out)).stdout)
    sortie.run("job", "wait", "--group", group, timeout=300)
    jobs = sortie.jobs("--group", group)
    assert len(jobs) == 18
    for h, fs in files.items():
        for f in fs:
            assert (out / f).read_text() == f"{h}\n", f"{f} ran on the wrong host"
    for h in files:
        spans = [(j["start_ms"], j["end_ms"]) for j in jobs if j["node"] == h]
        assert len(spans) == 6
        assert max_concurrency(spans) <= 2, f"more than 2 jobs of the map ran on {h} at once"
    # The cap was the binding limit (4 slots would have allowed 4): 2 ran together somewhere.
    assert any(max_concurrency([(j["start_ms"], j["end_ms"]) for j in jobs if j["node"] == h]) == 2
               for h in files)


def test_each_line_and_array_fan_out(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    lines = tmp_path / "inputs.txt"
    lines.write_text("alpha\nbeta gamma\n\ndelta\n")
    group = sortie.run("map", "--each-line", lines, "--", "echo", "item:{}").stdout.strip()
    sortie.run("job", "wait", "--group", group)
    outs = sorted(sortie.run("job", "logs", j["id"]).stdout for j in sortie.jobs("--group", group))
    assert outs == ["item:alpha\n", "item:beta gamma\n", "item:delta\n"]  # one argv element each
    group = sortie.run("map", "--array", "3-9:3", "--", "echo").stdout.strip()
    sortie.run("job", "wait", "--group", group)
    outs = sorted(sortie.run("job", "logs", j["id"]).stdout for j in sortie.jobs("--group", group))
    assert outs == ["3\n", "6\n", "9\n"]  # no {}: the item is the last argument


def test_wait_for_a_group_names_the_failures(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    group = sortie.run("map", "--array", "1-4", "--group", "step1", "--",
                       "sh", "-c", 'test "$0" != 3').stdout.strip()
    p = sortie.run("job", "wait", "--group", "step1", check=False)
    assert p.returncode == 1
    failed = [j["id"] for j in sortie.jobs("--group", group) if j["state"] == "failed"]
    assert len(failed) == 1
    assert f"1 of 4 jobs did not succeed" in p.stderr and str(failed[0]) in p.stderr


def test_a_memory_hog_is_killed_and_reported(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    hog = ("import time\nb = []\n"
           "for i in range(100):\n    b.append(bytearray(10 << 20)); time.sleep(0.01)\n"
           "print('survived')\n")
    job = sortie.submit("/usr/bin/python3", "-c", hog, opts=["--memory", "100M"])
    sortie.run("job", "wait", job, check=False)
    shown = sortie.job(job)
    assert shown["state"] == "failed"
    assert shown["limits"] in ("cgroup v1", "cgroup v2", "rlimit")
    if shown["limits"].startswith("cgroup"):
        assert shown["signal"] == 9
        assert "more than its 100 MiB of memory" in shown["reason"]
        assert shown["limits"] in shown["reason"]
    assert sortie.run("job", "logs", job).stdout == ""
    # Within its limit the same program is fine.
    ok = sortie.submit("/usr/bin/python3", "-c", "b = bytearray(20 << 20); print('fine')",
                       opts=["--memory", "100M"])
    sortie.run("job", "wait", ok)


def test_memory_is_limited_by_rlimit_without_cgroups(sortie):
    sortie.env["SORTIE_AGENT_MEMORY_LIMITS"] = "rlimit"  # as on a node without cgroups
    sortie.start()
    sortie.add_pilot("--slots", "1")
    job = sortie.submit("/usr/bin/python3", "-c", "b = bytearray(400 << 20)",
                        opts=["--memory", "200M"])
    sortie.run("job", "wait", job, check=False)
    shown = sortie.job(job)
    assert shown["state"] == "failed" and shown["limits"] == "rlimit"
    assert "RLIMIT_AS" in shown["reason"] and "MemoryError" in sortie.run(
        "job", "logs", "--stderr", job).stdout


def test_jobs_wait_for_memory_that_is_reserved(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "4", "--memory-per-node", "1G")
    a = sortie.submit("sleep", "1", opts=["--memory", "700M"])
    b = sortie.submit("true", opts=["--memory", "700M"])
    sortie.run("job", "wait", a, b)
    ja, jb = sortie.job(a), sortie.job(b)
    assert jb["start_ms"] >= ja["end_ms"], "700M + 700M do not fit in 1G at once"
    big = sortie.submit("true", opts=["--memory", "2G", "--queue-timeout", "1s"])
    sortie.run("job", "wait", big, check=False)
    assert sortie.job(big)["state"] == "timed_out"  # fits nowhere: stays queued, then times out


def test_gpus_are_given_distinct_devices(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "4", "--gpus-per-node", "2")
    gate = tmp_path / "gate"
    jobs = [sortie.submit("sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; '
                          'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate),
                          opts=["--gpus", "1"]) for _ in range(3)]
    plain = sortie.submit("sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"')
    sortie.run("job", "wait", plain)
    assert sortie.run("job", "logs", plain).stdout == "[]\n"  # GPUs it was not given are hidden
    wait_for(lambda: sum(sortie.job(j)["state"] == "running" for j in jobs) == 2, 30, "2 GPU jobs")
    running = [j for j in jobs if sortie.job(j)["state"] == "running"]
    devices = sorted(sortie.run("job", "logs", j).stdout.strip() for j in running)
    assert devices == ["0", "1"]
    assert sortie.job([j for j in jobs if j not in running][0])["state"] in ("queued", "assigned")
    gate.touch()
    sortie.run("job", "wait", *jobs)


def test_a_job_in_its_nodes_launch_queue_says_why_it_has_not_started(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "1", "--node-names", "n1")
    gate = tmp_path / "gate"
    busy = sortie.submit("sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.05; done')
    sortie.wait_state(busy, "running")
    behind = sortie.submit("true")
    shown = sortie.wait_state(behind, "assigned")  # handed to n1 ahead: its launch queue
    assert shown["reason"] == "waiting in node n1's launch queue: it starts when 1 of its 1 " \
                              "slots is free", shown
    gate.touch()
    sortie.run("job", "wait", busy, behind)
    assert sortie.job(behind)["reason"] == ""


def test_hosts_and_preferred_hosts(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2", "--node-names", "a,b")
    pinned = sortie.submit("true", opts=["--host", "b"])
    preferred = sortie.submit("true", opts=["--prefer-host", "a"])
    nowhere = sortie.submit("true", opts=["--host", "zz", "--queue-timeout", "1s"])
    sortie.run("job", "wait", pinned, preferred)
    assert sortie.job(pinned)["node"] == "b"
    assert sortie.job(preferred)["node"] == "a"
    sortie.run("job", "wait", nowhere, check=False)
    shown = sortie.job(nowhere)
    assert shown["state"] == "timed_out" and "queue timeout of 1s" in shown["reason"]


def test_priority_then_fifo(sortie, tmp_path):
    sortie.start()
    gate = tmp_path / "gate"
    blocker = sortie.submit("sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate))
    low = [sortie.submit("true") for _ in range(2)]
    high = [sortie.submit("true", opts=["--priority", "10"]) for _ in range(2)]
    sortie.run("pilot", "add", "--slots", "1")
    sortie.wait_state(blocker, "running")
    gate.touch()
    sortie.run("job", "wait", *low, *high)
    order = sorted(low + high, key=lambda j: sortie.job(j)["start_ms"])
    assert order == high + low


def test_run_timeout_kills_the_job_and_its_children(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "1")
    pids = tmp_path / "pids"
    job = sortie.submit("sh", "-c", 'sleep 300 & echo $! >> "$0"; (setsid sleep 300 &); '
                        'echo $$ >> "$0"; sleep 300', str(pids), opts=["--run-timeout", "2s"])
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 30, "pids")
    recorded = [int(p) for p in pids.read_text().split()]
    sortie.run("job", "wait", job, check=False, timeout=60)
    shown = sortie.job(job)
    assert shown["state"] == "timed_out"
    assert "run timeout of 2s" in shown["reason"]
    wait_for(lambda: not any(alive(p) for p in recorded), 10, "the job's processes to die")


def test_time_request_needs_walltime_left(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2", "--time", "10m")
    too_long = sortie.submit("true", opts=["--time-request", "1h", "--queue-timeout", "2s"])
    fits = sortie.submit("true", opts=["--time-request", "5m"])
    sortie.run("job", "wait", fits)
    sortie.run("job", "wait", too_long, check=False)
    assert sortie.job(too_long)["state"] == "timed_out"
    pilot = sortie.json("pilot", "list")[0]
    assert pilot["end_ms"] and pilot["end_ms"] - pilot["created_ms"] == 600_000


def test_retries_on_failure_keep_every_attempts_output(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "1")
    marker = tmp_path / "tried"
    job = sortie.submit("sh", "-c", 'echo "attempt $SORTIE_ATTEMPT"; '
                        'if [ ! -e "$0" ]; then touch "$0"; exit 1; fi', str(marker),
                        opts=["--retries", "2", "--retry-on-failure"])
    sortie.run("job", "wait", job)
    shown = sortie.job(job)
    assert shown["state"] == "succeeded" and shown["attempt"] == 2
    assert [h["state"] for h in shown["history"]] == [
        "queued", "assigned", "running", "failed", "queued", "assigned", "running", "succeeded"]
    assert sortie.run("job", "logs", "--attempt", "1", job).stdout == "attempt 1\n"
    assert sortie.run("job", "logs", "--attempt", "2", job).stdout == "attempt 2\n"
    # Without --retry-on-failure a failure is final.
    once = sortie.submit("false", opts=["--retries", "3"])
    sortie.run("job", "wait", once, check=False)
    assert sortie.job(once)["attempt"] == 1 and sortie.job(once)["state"] == "failed"


def test_retries_on_a_killed_agent(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2", "--node-names", "a")
    retried = sortie.submit("sh", "-c", 'if [ "$SORTIE_NODE" = a ]; then sleep 300; fi',
                            opts=["--retries", "1"])
    final = sortie.submit("sh", "-c", "sleep 300", opts=["--retries", "0"])
    sortie.wait_state(retried, "running")
    sortie.wait_state(final, "running")
    os.kill(sortie.agent_pids(node="a")[0], signal.SIGKILL)
    wait_for(lambda: sortie.job(final)["state"] == "lost", 15, "the job without retries to be lost")
    assert sortie.job(retried)["state"] == "queued"
    sortie.add_pilot("--slots", "1", "--node-names", "b")
    sortie.run("job", "wait", retried)
    shown = sortie.job(retried)
    assert shown["node"] == "b" and shown["attempt"] == 2
    assert "lost" in [h["state"] for h in shown["history"]]


def test_after_chains(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "4")
    log = tmp_path / "order"
    a = sortie.submit("sh", "-c", 'sleep 0.5; echo a >> "$0"', str(log))
    b = sortie.submit("sh", "-c", 'echo b >> "$0"', str(log), opts=["--after", str(a)])
    c = sortie.submit("sh", "-c", 'echo c >> "$0"', str(log), opts=["--after", f"{a},{b}"])
    sortie.run("job", "wait", a, b, c)
    assert log.read_text() == "a\nb\nc\n"
    # A failure cancels what depends on it, transitively, with the reason.
    bad = sortie.submit("false")
    d = sortie.submit("true", opts=["--after", str(bad)])
    e = sortie.submit("true", opts=["--after", str(d)])
    sortie.run("job", "wait", bad, d, e, check=False)
    assert sortie.job(d)["state"] == "cancelled" and f"dependency {bad} failed" in sortie.job(d)["reason"]
    assert sortie.job(e)["state"] == "cancelled" and f"dependency {d} cancelled" in sortie.job(e)["reason"]
    p = sortie.run("submit", "--after", "999", "--", "true", check=False)
    assert p.returncode != 0 and "there is no job 999" in p.stderr


def test_malformed_map_and_job_files_name_the_line(sortie, tmp_path):
    sortie.start()
    bad_map = tmp_path / "map.txt"
    bad_map.write_text("a = [x.dat, y.dat]\nb = [z.dat\n# never closed\n")
    p = sortie.run("map", "--mapfile", bad_map, "--", "echo", "{}", check=False)
    assert p.returncode == 2 and f"{bad_map}:2:5: the list of files of 'b' opened on line 2 has no ']'" in p.stderr
    bad_map.write_text("a = [x.dat]\nb [y.dat]\n")
    p = sortie.run("map", "--mapfile", bad_map, "--", "echo", "{}", check=False)
    assert f"{bad_map}:2:3: expected '=' after the host name 'b'" in p.stderr
    # A forgotten ']' and '=[': the next line is not taken for files of the first host.
    bad_map.write_text("lce001=[ /a, /b\nlce002 /c ]\n")
    p = sortie.run("map", "--mapfile", bad_map, "--", "echo", "{}", check=False)
    assert p.returncode == 2 and f"{bad_map}:2:1: expected ',' or ']' after '/b'" in p.stderr
    assert sortie.jobs() == []
    job = tmp_path / "job.toml"
    job.write_text('command = ["true"]\n\nrun_timeout = "forever"\n')
    p = sortie.run("submit", "--file", job, check=False)
    assert p.returncode == 2 and f"{job}:3:" in p.stderr and "run_timeout" in p.stderr
    job.write_text('command = ["true"]\nslots = 2\n[[job]]\nname = "x"\ncolour = "blue"\n')
    p = sortie.run("submit", "--file", job, check=False)
    assert f"{job}:5:" in p.stderr and "colour: unknown key" in p.stderr
    job.write_text('command = ["true"\n')
    p = sortie.run("submit", "--file", job, check=False)
    assert f"{job}:" in p.stderr
    assert sortie.jobs() == []  # nothing was submitted


def test_job_file_with_defaults_and_overrides(sortie, tmp_path):
    sortie.start()
    sortie.add_pilot("--slots", "4")
    job = tmp_path / "job.toml"
    job.write_text('group = "sims"\ncommand = ["sh", "-c", "echo $SEED $OMP_NUM_THREADS"]\n'
                   'slots = 2\n\n[[job]]\nenv = { SEED = "1" }\n\n[[job]]\nenv = { SEED = "2" }\n'
                   'slots = 1\n')
    first, last = map(int, sortie.run("submit", "--file", job).stdout.strip().split("-"))
    sortie.run("job", "wait", "--group", "sims")
    assert sortie.run("job", "logs", first).stdout == "1 2\n"
    assert sortie.run("job", "logs", last).stdout == "2 1\n"
    # Command-line options override the file, as sbatch's do over #SBATCH lines.
    one = int(sortie.run("submit", "--file", job, "--slots", "3").stdout.split("-")[0])
    sortie.run("job", "wait", one)
    assert sortie.run("job", "logs", one).stdout == "1 3\n"
