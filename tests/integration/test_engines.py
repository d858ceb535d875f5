# SPDX-License-Identifier: Apache-2.0
"""Engines as jobs and the promises of docs/engines.md that need more than one process: the CLI's
engine and task commands, a hub killed with -9 while thousands of tasks are queued or running
(none lost, none run twice), engines that restart with their setup, a memory cap, and engines on
the ssh and Slurm test beds."""
import json
import os
import signal
import subprocess

import pytest

from conftest import alive, wait_for
from test_python import BUILD, PYTHON, run_script
from test_resources import (add_ssh_resource, label, netns, run_pilot, slurm,  # noqa: F401
                            sshd)


def python_env(sortie):
    return dict(sortie.env, PYTHONPATH=str(BUILD / "python"), SORTIE_EXE=sortie.bin)


@pytest.mark.timeout(120)
def test_engine_commands_start_list_and_stop_engines(sortie, tmp_path):
    sortie.start()
    sortie.run("pilot", "add", "--slots", "3", "--label", "cpu")
    jobs = sortie.run("engine", "start", "--count", "2", "--label", "cpu").stdout.strip()
    first, last = map(int, jobs.split("-"))
    assert last == first + 1
    engines = wait_for(lambda: len(e := sortie.json("engine", "list")) == 2 and e, 60,
                       "two engines to come up")
    assert sorted(e["job"] for e in engines) == [first, last]
    assert {e["label"] for e in engines} == {"cpu"} and {e["state"] for e in engines} == {"idle"}
    # A local pilot's engines talk to the hub on links of their own (05-tasks.md §5.9).
    assert {e["link"] for e in engines} == {"direct"}
    # Engines are jobs: `job list` shows them running.
    listed = {j["id"]: j for j in sortie.jobs()}
    assert listed[first]["state"] == "running" and listed[last]["state"] == "running"
    table = sortie.run("engine", "list").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "JOB", "NODE"]

    out = run_script(sortie, tmp_path, """
        futs = client.map(lambda x: x + 1, range(20), label="cpu")
        assert client.gather(futs) == list(range(1, 21))
        print("IDS", futs[0].id, futs[-1].id)
    """, prelude="import sortie\nclient = sortie.Client()\n")
    lo, hi = map(int, out.split("IDS ")[1].split()[:2])
    tasks = sortie.json("task", "list")
    done = [t for t in tasks if lo <= t["id"] <= hi]
    assert len(done) == 20 and {t["state"] for t in done} == {"done"}
    assert sum(e["tasks_done"] for e in sortie.json("engine", "list")) == 20
    shown = sortie.json("task", "show", lo)
    assert shown["state"] == "done" and shown["engine"] in {e["id"] for e in engines}
    r = sortie.run("task", "show", "999999", check=False)
    assert r.returncode == 1 and "task 999999 does not exist" in r.stderr

    r = sortie.run("engine", "stop", "424242", check=False)
    assert r.returncode == 1 and "engine 424242 does not exist" in r.stderr
    sortie.run("engine", "stop", engines[0]["id"])
    wait_for(lambda: len(sortie.json("engine", "list")) == 1, 30, "one engine to stop")
    assert sortie.job(engines[0]["job"])["state"] == "cancelled"
    sortie.run("engine", "stop", "--all")
    wait_for(lambda: not sortie.json("engine", "list"), 30, "every engine to stop")
    r = sortie.run("engine", "start", "--count", "0", check=False)
    assert r.returncode == 2 and "--count: between 1 and 10000" in r.stderr


@pytest.mark.timeout(120)
def test_task_output_command_follows_a_running_task(sortie, tmp_path):
    gate = tmp_path / "gate"
    out = run_script(sortie, tmp_path, """
        client.start_engines(1, label="cpu", timeout=60)

        def work(gate):
            import os, time
            print("started", flush=True)
            while not os.path.exists(gate):
                time.sleep(0.01)
            print("finished")
            return 1

        print("TASK", client.submit(work, sys.argv[1]).id)
    """, gate)
    task = int(out.split("TASK ")[1].split()[0])
    r = sortie.run("task", "output", task, check=False)
    assert r.returncode == 1 and f"task {task} is " in r.stderr and "--follow" in r.stderr
    follower = subprocess.Popen([sortie.bin, "task", "output", str(task), "--follow"],
                                env=sortie.env, stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline() == "started\n"  # while the task waits for the gate
        gate.touch()
        assert follower.stdout.read() == "finished\n"
        assert follower.wait(timeout=60) == 0
    finally:
        follower.kill()
        follower.wait()
    assert sortie.run("task", "output", task).stdout == "started\nfinished\n"
    r = sortie.run("task", "output", "999999", check=False)
    assert r.returncode == 1 and "task 999999 does not exist" in r.stderr


@pytest.mark.timeout(240)
def test_a_hub_killed_with_tasks_in_flight_loses_none_and_runs_none_twice(sortie, tmp_path):
    """10,000 tasks submitted; the submitting process exits; the hub is killed with -9 while they
    run; engines carry on through the restart (from their direct links to their agents'). Another process collects every result by id, and
    each task ran exactly once (the engines' own record of what they ran)."""
    log_dir = tmp_path / "ran"
    log_dir.mkdir()
    out = run_script(sortie, tmp_path, f"""
        view = client.start_engines(2, label="cpu", timeout=60)
        def work(i):
            import os, time
            with open(os.path.join({str(log_dir)!r}, str(os.getpid())), "a") as f:
                f.write(f"{{i}}\\n")
            time.sleep(0.0005)
            return i * 3
        futs = client.map(work, range(10000), label="cpu")
        assert {{e.link for e in client.engine_info()}} == {{"direct"}}
        print("IDS", futs[0].id, futs[-1].id)
    """, name="submit.py")
    lo, hi = map(int, out.split("IDS ")[1].split()[:2])
    assert hi - lo + 1 == 10000
    # Some have run, many have not: kill the hub in the middle.
    wait_for(lambda: sum(len(p.read_text().splitlines()) for p in log_dir.iterdir()) > 1000, 60,
             "a thousand tasks to have run")
    hub = sortie.hub_pid()
    os.kill(hub, signal.SIGKILL)
    wait_for(lambda: not alive(hub), 10, "the hub to die")
    engines_before = sortie.agent_pids()
    left = sorted(p.name for p in (sortie.home / "default").glob("engine-*.sock"))
    assert len(left) == 2, left  # the dead hub's direct sockets, one per engine
    sortie.start()
    # The next hub swept them: engines that outlived a hub go on through their agents.
    assert not list((sortie.home / "default").glob("engine-*.sock"))
    run_script(sortie, tmp_path, f"""
        futs = client.futures(range({lo}, {hi} + 1))
        results = client.gather(futs)
        assert results == [i * 3 for i in range(10000)], "wrong or missing results"
        # Their direct links ended with the old hub: they went on through their agents.
        assert {{e.link for e in client.engine_info()}} == {{"agent"}}
    """, prelude="import sortie\nclient = sortie.Client(start=False)\n", name="collect.py",
        timeout=200)
    ran = [int(line) for p in log_dir.iterdir() for line in p.read_text().splitlines()]
    assert len(ran) == 10000 and sorted(ran) == list(range(10000)), \
        f"{len(ran)} runs of {len(set(ran))} tasks"
    # The same agents (and engines) carried on through the restart.
    assert set(sortie.agent_pids()) == set(engines_before)


@pytest.mark.timeout(120)
def test_a_restarting_engine_comes_back_with_its_setup_run_again(sortie, tmp_path):
    marker = tmp_path / "setups"
    run_script(sortie, tmp_path, f"""
        def setup():
            global mode
            mode = "ready"
            with open({str(marker)!r}, "a") as f:
                f.write("setup\\n")
        view = client.start_engines(1, label="cpu", restart=True, setup=setup, timeout=60)
        [engine] = view.ids
        os.kill(view.apply(os.getpid)[0], signal.SIGKILL)
        # The engine job runs again, as a new engine with its setup run again, in the same view.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if view.ids != [engine]:
                    break
            except sortie.SortieError as e:  # meanwhile: it says it is not running, and why
                assert "not running" in str(e), str(e)
            time.sleep(0.05)
        else:
            raise AssertionError("the engine did not come back")
        assert view.apply(lambda: mode) == ["ready"]
        assert client.submit(lambda: 7, label="cpu").result(timeout=30) == 7
    """)
    assert marker.read_text().splitlines() == ["setup", "setup"]


@pytest.mark.timeout(120)
def test_an_engine_over_its_memory_is_killed_and_says_so(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        client.start_engines(1, label="cpu", memory="200M", timeout=60)
        def hog():
            block = bytearray(800 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            return len(block)
        try:
            client.submit(hog, label="cpu").result(timeout=60)
        except sortie.EngineLost as e:
            assert "memory" in str(e), str(e)
        else:
            raise AssertionError("an engine used 800 MB with a 200M cap")
    """)


def engines_on(sortie, tmp_path, label, hosts_expected):
    """Two engines on the pilot labelled `label`: their host names, their results."""
    run_script(sortie, tmp_path, f"""
        view = client.start_engines(2, label={label!r}, timeout=90)
        hosts = sorted(view.apply(lambda: __import__("socket").gethostname()))
        assert hosts == {sorted(hosts_expected)!r}, hosts
        view.push({{"k": 5}})
        assert view.apply(lambda x: k * x, 2) == [10, 10]
        assert {{e.link for e in client.engine_info({label!r})}} == {{"agent"}}
        assert client.gather(client.map(lambda x: -x, range(50), label={label!r})) == \\
            [-x for x in range(50)]
        view.stop()
    """, prelude="import sortie\nclient = sortie.Client(start=False)\n", timeout=150)


@pytest.mark.timeout(240)
def test_engines_on_a_two_node_ssh_pilot(sortie, tmp_path, netns, label):
    sortie.start()
    add_ssh_resource(sortie, "login", "root@10.201.0.11", netns)
    add_ssh_resource(sortie, "cluster", "root@10.201.0.129,root@10.201.0.130", netns,
                     "--gateway", "login")
    pid = run_pilot(sortie, "cluster", "--slots-per-node", "1", "--label", label)
    engines_on(sortie, tmp_path, label, ["sx-compute", "sx-login"])
    sortie.run("pilot", "cancel", pid)


@pytest.mark.timeout(240)
def test_engines_on_a_slurm_pilot(sortie, tmp_path, slurm, label):
    sortie.start()
    sortie.run("resource", "add", "cluster", "--type", "slurm")
    pid = run_pilot(sortie, "cluster", "--nodes", "2", "--slots-per-node", "1", "--label", label,
                    timeout="90s")
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    engines_on(sortie, tmp_path, label, [host, host])  # the test bed's two nodes are this host
    sortie.run("pilot", "cancel", pid)


@pytest.mark.timeout(120)
def test_with_a_prefetch_of_one_no_task_waits_behind_a_long_one(sortie, tmp_path):
    # engine_prefetch = engine_prefetch_max = 1 (docs/engines.md): a task goes to an engine only
    # once it is free, so the tasks submitted after a long one all run on the other engine.
    sortie.configure(engine_prefetch=1, engine_prefetch_max=1)
    run_script(sortie, tmp_path, """
        client.start_engines(2, label="cpu", timeout=60)
        gate = os.path.join(os.getcwd(), "gate")

        def long():
            while not os.path.exists(gate):
                time.sleep(0.01)
            return "long"

        first = client.submit(long, label="cpu")
        shorts = client.map(abs, range(-40, 0), label="cpu")
        assert client.gather(shorts) == list(range(40, 0, -1))
        assert len({f.engine for f in shorts}) == 1 and not first.done()
        open(gate, "w").close()
        assert first.result(timeout=30) == "long" and first.engine != shorts[0].engine
    """)


@pytest.mark.timeout(120)
def test_ended_tasks_are_forgotten_after_task_retention(sortie, tmp_path):
    """task_retention forgets ended tasks wherever they are: the latest in the hub's memory, the
    older ones in its store only (more than the hub holds in memory end here), and after a
    restart, which loads none of them."""
    from conftest import FAST
    sortie.configure(task_retention="3s", **FAST)
    out = run_script(sortie, tmp_path, """
        client.start_engines(1, label="cpu", timeout=60)
        futs = client.map(lambda i: i * 2, range(6000), label="cpu")
        assert client.gather(futs) == [i * 2 for i in range(6000)]
        # Kept: another look gets them, the oldest from the store.
        assert client.future(futs[0].id).result(timeout=30) == 0
        assert client.future(futs[-1].id).result(timeout=30) == 11998
        print("IDS", futs[0].id, futs[-1].id)
    """)
    first, last = map(int, out.split("IDS ")[1].split()[:2])
    sortie.run("hub", "stop")
    sortie.start()
    run_script(sortie, tmp_path, f"""
        deadline = time.monotonic() + 60
        for task in ({first}, {last}):
            while time.monotonic() < deadline:
                try:
                    client.future(task).result(timeout=30)
                except sortie.SortieError as e:
                    assert e.code == "not_found", e.code
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"task {{task}} outlived task_retention")
    """, prelude="import time\nimport sortie\nclient = sortie.Client(start=False)\n",
        name="after.py")
    assert sortie.json("task", "list", "--limit", "0") == []


@pytest.mark.timeout(300)
def test_ended_tasks_leave_the_hub_memory_and_are_read_back_from_its_store(sortie, tmp_path):
    """docs/engines.md, "Where results live": the hub holds the tasks that have not ended and a
    few thousand that just did; the others are read back from its store when asked for. Rounds
    of 30,000 tasks with 2 KB results leave the hub's memory where the second round left it
    (held in memory, the first four rounds' would add some 300 MB), and every result is still
    there by id, the oldest first: as a future, in `task list` and `task show`, and forgettable."""
    sortie.start()
    out = run_script(sortie, tmp_path, """
        def rss_kib(pid):
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

        hub = int(sys.argv[1])
        client.start_engines(2, label="cpu", timeout=60)
        rounds, first = [], []
        for r in range(5):
            futs = client.map(lambda i, r=r: (r, i, bytes(2000)), range(30000), label="cpu")
            got = client.gather(futs)
            assert got[12345] == (r, 12345, bytes(2000)) and len(got) == 30000
            first.append(futs[0].id)
            rounds.append(rss_kib(hub))
        print("RSS", rounds)
        grown = rounds[-1] - rounds[1]
        assert grown < 40_000, f"the hub grew by {grown} KiB over three rounds: {rounds}"
        # The oldest results, long out of memory, from the store; another client too.
        assert client.future(first[0]).result(timeout=30) == (0, 0, bytes(2000))
        other = sortie.Client(start=False)
        assert other.gather(other.futures(range(first[1], first[1] + 3))) == \
            [(1, i, bytes(2000)) for i in range(3)]
        print("FIRST", first[0])
    """, sortie.hub_pid(), timeout=280)
    oldest = int(out.split("FIRST ")[1].split()[0])
    listed = sortie.json("task", "list", "--limit", "5")
    assert [t["id"] for t in listed] == list(range(oldest + 149_995, oldest + 150_000))
    assert all(t["state"] == "done" for t in listed), listed
    p = sortie.run("task", "list", "--limit", "5")
    assert "showing the newest 5 of 150,000 tasks" in p.stderr, p.stderr
    shown = sortie.json("task", "show", str(oldest))
    assert shown["state"] == "done" and shown["result_bytes"] > 2000, shown
    run_script(sortie, tmp_path, f"""
        assert client.forget([{oldest}, {oldest} + 1, 10 ** 9]) == 2
        try:
            client.future({oldest}).result(timeout=30)
        except sortie.SortieError as e:
            assert e.code == "not_found", e
        else:
            raise AssertionError("a forgotten task has a result")
    """, prelude="import sortie\nclient = sortie.Client(start=False)\n", name="forget.py")
    assert "of 149,998 tasks" in sortie.run("task", "list", "--limit", "1").stderr


@pytest.mark.timeout(240)
def test_queued_arguments_beyond_64_mib_wait_in_the_store_not_in_the_hub_memory(sortie, tmp_path):
    """docs/engines.md, "Where results live": queued tasks' arguments beyond 64 MiB stay in the
    store and are read back when the tasks are sent. Three rounds of 160 tasks with 1 MiB
    arguments each, queued before any engine is up, leave the hub where the first round left it
    (held in memory, the next two would add 320 MiB); a hub killed with -9 and started again
    loads none of the 480 MiB; engines started then run every task with its own argument, and
    so do 160 more submitted while they run."""
    sortie.start()
    script = """
        def rss_kib(pid):
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        def arg(i):
            return i.to_bytes(4, "big") * (1 << 18)  # 1 MiB, its own
        def digest(b):
            return __import__("hashlib").sha256(b).hexdigest()
        hub = client.status()["pid"]
    """
    out = run_script(sortie, tmp_path, script + """
        rounds, ids = [], []
        for r in range(3):
            futs = client.map(digest, [arg(i) for i in range(160 * r, 160 * (r + 1))], label="cpu")
            ids += [f.id for f in futs]
            rounds.append(rss_kib(hub))
        print("RSS", rounds, "IDS", ids[0], ids[-1])
        grown = rounds[-1] - rounds[0]
        assert grown < 60_000, f"the hub grew by {grown} KiB over two rounds: {rounds}"
    """, timeout=200)
    lo, hi = map(int, out.split("IDS ")[1].split()[:2])
    assert hi - lo + 1 == 480
    hub = sortie.hub_pid()
    os.kill(hub, signal.SIGKILL)
    wait_for(lambda: not alive(hub), 10, "the hub to die")
    sortie.start()
    run_script(sortie, tmp_path, script + f"""
        loaded = rss_kib(hub)
        assert loaded < 160_000, f"a restarted hub with 480 MiB queued holds {{loaded}} KiB"
        client.start_engines(2, label="cpu", timeout=60)
        more = client.map(digest, [arg(i) for i in range(480, 640)], label="cpu")
        old = client.gather(client.futures(range({lo}, {hi} + 1)))
        assert old == [digest(arg(i)) for i in range(480)], "wrong or missing results"
        assert client.gather(more) == [digest(arg(i)) for i in range(480, 640)]
    """, name="run.py", timeout=200)


@pytest.mark.timeout(240)
def test_100_mb_in_and_out_arrive_intact_beside_small_tasks_with_the_hub_bounded(sortie, tmp_path):
    """A 100 MB argument and a 100 MB result travel in pieces, each stored before the next: the
    hub never holds a whole value (its RSS grows by far less than one), and small tasks go on
    meanwhile on the other engine."""
    out = run_script(sortie, tmp_path, """
        import hashlib
        view = client.start_engines(2, label="cpu", timeout=60)
        hub = client.status()["pid"]
        def rss():
            with open(f"/proc/{hub}/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
        before = rss()
        peak = [before]
        done = threading.Event()
        def watch():
            while not done.wait(0.02):
                peak[0] = max(peak[0], rss())
        threading.Thread(target=watch, daemon=True).start()

        big = os.urandom(100 << 20)
        digest = hashlib.sha256(big).hexdigest()
        fut_in = client.submit(lambda b: __import__("hashlib").sha256(b).hexdigest(), big)
        fut_out = client.submit(lambda n: bytes(range(256)) * (n // 256), 100 << 20)
        small = client.map(lambda x: x + 1, range(100))
        assert client.gather(small) == list(range(1, 101))
        assert fut_in.result(timeout=180) == digest
        assert fut_out.result(timeout=180) == bytes(range(256)) * ((100 << 20) // 256)
        # Collected again later, by id, from the store.
        assert client.future(fut_out.id).result(timeout=180)[-256:] == bytes(range(256))
        done.set()
        print("GROWTH", peak[0] - before)
        assert client.submit(lambda: "still here").result(timeout=60) == "still here"
    """, timeout=220)
    growth = int(out.split("GROWTH ")[1].split()[0])
    print(f"hub RSS growth passing 100 MB each way: {growth >> 20} MiB")
    assert growth < 40 << 20, f"the hub grew by {growth >> 20} MiB passing 100 MB values"


@pytest.mark.timeout(120)
def test_engines_for_a_label_no_pilot_has_wait_and_say_why(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        try:
            client.start_engines(1, label="gpu", queue_timeout="1s", timeout=60)
        except sortie.SortieError as e:
            assert "timed_out" in str(e) and "queue timeout" in str(e), str(e)
        else:
            raise AssertionError("an engine came up on a label no pilot has")
        try:
            client.start_engines(1, label="gpu", timeout=1)
        except TimeoutError as e:
            assert "queued" in str(e), str(e)
        else:
            raise AssertionError("an engine came up on a label no pilot has")
    """)
