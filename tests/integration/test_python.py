# SPDX-License-Identifier: Apache-2.0
"""The Python package with a real hub, agents and engines: each test runs a script with Debian's
/usr/bin/python3, which starts the profile's hub (`sortie.Client()`), adds a local pilot and
engines, checks with asserts and prints OK at the end (docs/python.md, docs/engines.md)."""
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import sortie_binary

PYTHON = "/usr/bin/python3"
BUILD = Path(sortie_binary()).parents[1]

# A tree built with the sanitizers has no Python module (Debian's python3 cannot load one built
# with them: CMakeLists.txt, SORTIE_PYTHON); CI runs these tests on its optimised build.
if "SORTIE_SANITIZE:BOOL=ON" in (BUILD / "CMakeCache.txt").read_text(errors="replace"):
    pytest.skip("the sanitizer build has no Python module", allow_module_level=True)

PRELUDE = """\
import concurrent.futures
import os
import signal
import sys
import threading
import time

import sortie

client = sortie.Client()
client.add_pilot(resource="local", slots_per_node=4, label="cpu")
client.wait_for_pilots(timeout=60)
"""


def run_script(sortie, tmp_path, body, *args, name="script.py", prelude=PRELUDE, timeout=100):
    """Runs `prelude` + `body` as a script in `tmp_path`; its stdout, which ends with OK."""
    path = tmp_path / name
    path.write_text(prelude + textwrap.dedent(body) + '\nprint("OK")\n')
    env = dict(sortie.env, PYTHONPATH=str(BUILD / "python"), SORTIE_EXE=sortie.bin)
    p = subprocess.run([PYTHON, str(path), *map(str, args)], env=env, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0 and p.stdout.endswith("OK\n"), \
        f"{name} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


@pytest.mark.timeout(120)
def test_connect_only_without_a_hub_is_a_clear_error(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        for profile in (None, "other"):
            try:
                sortie.Client(profile=profile, start=False)
            except sortie.SortieError as e:
                assert e.code == "unavailable", e.code
                assert "hub" in str(e), str(e)
            else:
                raise AssertionError("Client(start=False) connected to no hub")
    """, prelude="import sortie\n")
    assert not (sortie.profile / "hub.json").exists()
    assert not (sortie.home / "other" / "hub.json").exists()


@pytest.mark.timeout(120)
def test_a_hub_a_client_started_is_not_its_child_and_leaves_no_zombie(sortie, tmp_path):
    # A long-lived program (a notebook) that starts hubs must not collect them as zombies once
    # they stop: the hub runs in a grandchild of the start, which the library reaps.
    run_script(sortie, tmp_path, """
        import os
        import subprocess

        def children():
            found = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == os.getpid():
                    found.append((int(pid), stat[0]))
            return found

        client = sortie.Client()
        hub = client.status()["pid"]
        assert children() == [], children()
        client.close()
        subprocess.run([os.environ["SORTIE_EXE"], "hub", "stop"], check=True, timeout=60,
                       capture_output=True)
        assert children() == [], children()  # whoever reaps the hub, not this program
        client = sortie.Client()  # starts a new one
        assert client.status()["pid"] != hub and children() == [], children()
    """, prelude="import sortie\n")


@pytest.mark.timeout(120)
def test_command_jobs_pilots_and_resources(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        job = client.submit_job(["sh", "-c", "echo out; echo err >&2; exit 3"], label="cpu",
                                name="three")
        assert job.wait(timeout=60) is job
        assert job.state() == "failed" and job.exit_code == 3, job.info()
        assert job.stdout() == "out\\n" and job.stderr() == "err\\n"

        ok = client.submit_job([sys.executable, "-c", "print(6 * 7)"], memory="512M", slots=2)
        assert ok.wait(timeout=60).state() == "succeeded" and ok.exit_code == 0
        assert ok.stdout() == "42\\n"

        sleeper = client.submit_job(["sleep", "300"])
        try:
            sleeper.wait(timeout=0.5)
        except TimeoutError as e:
            assert str(sleeper.id) in str(e)
        else:
            raise AssertionError("a job of 300 s ended within 0.5 s")
        assert sleeper.exit_code is None
        assert sleeper.cancel()
        assert sleeper.wait(timeout=60).state() == "cancelled"

        [pilot] = client.pilots()
        assert pilot.label == "cpu" and pilot.state == "running" and pilot.slots_total == 4
        assert "local" in [r.name for r in client.resources()]

        hub_json = os.path.join(os.environ["SORTIE_HOME"], "default", "hub.json")
        with sortie.Client(connection_file=hub_json) as other:
            assert other.status()["pid"] == client.status()["pid"]
    """)


@pytest.mark.timeout(120)
def test_views_keep_engine_state_between_calls(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        def setup():
            global greeting
            greeting = "hello"

        view = client.start_engines(2, label="cpu", setup=setup, timeout=60)
        assert len(view) == 2 and len(set(view.ids)) == 2
        assert view.pull("greeting") == ["hello", "hello"]

        view.execute("import math\\ncounter = 0")
        view.push({"a": 10})
        assert view.pull("a") == [10, 10]
        assert view.apply(lambda x: a + x, 1) == [11, 11]   # `a` is the engine's

        def bump():
            global counter
            counter += 1
            return counter

        assert view.apply(bump) == [1, 1]
        assert view.apply(bump) == [2, 2]
        assert view.pull(["a", "counter"]) == [[10, 2], [10, 2]]

        # One engine: single values. `math` exists on the engines only (execute above).
        assert view[0].apply(lambda: math.pi) == 3.141592653589793
        assert view[1].pull("a") == 10
        assert view.apply(lambda: sortie.engine.id) == view.ids
        assert [one.apply(lambda: sortie.engine.id) for one in view] == view.ids
        assert set(view.apply(lambda: sortie.engine.label)) == {"cpu"}

        pids = view.apply_async(os.getpid).get(timeout=60)
        assert len(set(pids)) == 2 and os.getpid() not in pids
        assert view.map(lambda x: x * 2, range(10)) == [x * 2 for x in range(10)]
        printed = view.apply_async(print, "hi")
        printed.get(timeout=60)
        assert printed.stdout() == ["hi\\n", "hi\\n"]
        assert client.engines(label="cpu").ids == sorted(view.ids)

        # A function used again (map reuses its pickle: the engine binds it once) still sees
        # the engine's names first, and brings its own again when the engine dropped them.
        LIMIT = 3

        def plus_limit(x):
            return x + LIMIT

        assert client.gather(client.map(plus_limit, [1, 1], engine=view.ids[0])) == [4, 4]
        view.push({"LIMIT": 10})
        assert client.gather(client.map(plus_limit, [1], engine=view.ids[0])) == [11]
        view.execute("del LIMIT")
        assert client.gather(client.map(plus_limit, [1], engine=view.ids[0])) == [4]
    """)


@pytest.mark.timeout(120)
def test_futures_map_gather_as_completed_and_executor(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        view = client.start_engines(2, label="cpu", timeout=60)

        def square(x):
            return x * x

        fut = client.submit(lambda: print("hello from a task") or 7)
        assert isinstance(fut, concurrent.futures.Future) and isinstance(fut.id, int)
        assert fut.result(timeout=60) == 7
        assert fut.stdout() == "hello from a task\\n"
        assert fut.engine in view.ids
        assert client.submit(lambda x, *, scale: x * scale, 3, scale=5).result(timeout=60) == 15

        futs = client.map(square, range(200), label="cpu")
        assert len({f.id for f in futs}) == 200
        assert client.gather(futs) == [i * i for i in range(200)]

        futs = client.map(pow, range(20), [2] * 20)
        assert set(sortie.as_completed(futs, timeout=60)) == set(futs)
        assert [f.result() for f in futs] == [i ** 2 for i in range(20)]
        done, not_done = sortie.wait(futs, timeout=60)
        assert len(done) == 20 and not not_done

        with client.executor(label="cpu") as ex:
            assert list(ex.map(square, range(50), timeout=60)) == [i * i for i in range(50)]
            assert ex.submit(square, 9).result(timeout=60) == 81
    """)


@pytest.mark.timeout(120)
def test_each_call_carries_the_values_its_function_names_when_it_is_made(sortie, tmp_path):
    # A function's pickle is reused between calls (_calls.reusable) only while what it carries
    # is the same and cannot change in place; otherwise each call carries the values of then.
    run_script(sortie, tmp_path, """
        import math
        import pickle
        from sortie._calls import pack, reusable

        def carried(fn, name):
            f, args, kwargs = pickle.loads(pack(reusable(fn), (1,), {}))
            return f.__globals__.get(name) if name else f.__closure__[0].cell_contents

        N = 1
        def plus_n(x):
            return x + N
        assert reusable(plus_n) is reusable(plus_n)  # reused
        assert carried(plus_n, "N") == 1
        N = 2
        assert carried(plus_n, "N") == 2  # rebound: pickled again

        items = [1]
        def count():
            return len(items)
        assert reusable(count) is count  # a list changes in place: pickled with each call
        items.append(2)
        assert carried(count, "items") == [1, 2]
        add, data = items.append, bytearray(b"ab")
        def grow(x):
            add(x)
            return len(data)
        assert reusable(grow) is grow  # a bound method and a bytearray carry mutable state

        def helper():
            return 1
        def calls_helper():
            return helper()
        assert reusable(calls_helper) is calls_helper  # helper travels by value
        def root(x):
            return math.sqrt(x)
        assert reusable(root) is reusable(root)  # a module travels by reference

        def scaled(k):
            return lambda: k
        assert carried(scaled(3), None) == 3 and carried(scaled(4), None) == 4

        # On an engine: the engine's namespace wins for names it has (as in ipyparallel), and
        # a name it lacks comes from the call.
        view = client.start_engines(1, label="cpu", timeout=60)
        engine = view.ids[0]
        assert client.submit(plus_n, 1, engine=engine).result(timeout=60) == 3
        N = 40
        assert client.submit(plus_n, 1, engine=engine).result(timeout=60) == 3  # N=2 there
        view.execute("del N")
        assert client.submit(plus_n, 1, engine=engine).result(timeout=60) == 41
        assert view.apply(plus_n, 2) == [42]
    """)


@pytest.mark.timeout(120)
def test_futures_settle_whether_or_not_someone_waits_on_them(sortie, tmp_path):
    # A Future makes its Condition only when someone waits or adds a callback (_futures.py):
    # results arriving while threads wait, call back, or run as_completed, must each reach
    # every one of them, values and exceptions alike.
    run_script(sortie, tmp_path, """
        import concurrent.futures
        import pickle
        import random
        import threading
        from sortie._futures import Future

        def result(i):
            if i % 11 == 0:
                return {"id": i, "state": "failed", "value": b"", "error_type": "ValueError",
                        "error_message": f"bad {i}", "traceback": ""}
            return {"id": i, "state": "done", "value": pickle.dumps(i * 2)}

        def outcome(f):
            try:
                return f.result(timeout=30)
            except sortie.RemoteError as e:
                return e.message

        expected = {i: f"bad {i}" if i % 11 == 0 else 2 * i for i in range(2000)}
        for round in range(10):
            futs = [Future(i) for i in range(2000)]
            called = []
            for f in futs[::7]:
                f.add_done_callback(lambda f: called.append(f.id))
            got, completed = {}, []
            def waiter(part):
                for f in part:
                    got[f.id] = outcome(f)
            threads = [threading.Thread(target=waiter, args=(futs[k::3],)) for k in range(3)]
            threads.append(threading.Thread(
                target=lambda: completed.extend(sortie.as_completed(futs[1::5], timeout=30))))
            for t in threads:
                t.start()
            for i in random.sample(range(2000), 2000):
                futs[i].finish(result(i))
            for t in threads:
                t.join()
            assert got == expected
            assert {f.id: outcome(f) for f in futs} == expected
            assert sorted(called) == list(range(0, 2000, 7))
            assert set(completed) == set(futs[1::5])
            done, not_done = concurrent.futures.wait(futs, timeout=5)
            assert len(done) == 2000 and not not_done
            assert repr(futs[3]).endswith("returned int>"), repr(futs[3])
    """, prelude="import sortie\n")


@pytest.mark.timeout(120)
def test_remote_errors_carry_type_message_traceback_and_original(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        view = client.start_engines(2, label="cpu", timeout=60)

        class Boom(Exception):
            pass

        def fails(x):
            raise Boom(f"bad value {x}")

        try:
            client.submit(fails, 7).result(timeout=60)
        except sortie.RemoteError as e:
            assert e.type_name == "__main__.Boom" and e.message == "bad value 7", e
            assert "in fails" in e.traceback and "Boom: bad value 7" in e.traceback, e.traceback
            assert isinstance(e.original, Boom) and str(e.original) == "bad value 7"
            assert e.engine in view.ids
            assert "__main__.Boom" in str(e) and "bad value 7" in str(e) and "in fails" in str(e)
        else:
            raise AssertionError("no RemoteError")

        try:
            view.apply(lambda: 1 / 0)
        except sortie.RemoteError as e:
            assert e.type_name == "ZeroDivisionError" and isinstance(e.original, ZeroDivisionError)
        else:
            raise AssertionError("no RemoteError")

        class Unpicklable(Exception):
            def __init__(self):
                super().__init__("cannot travel")
                self.lock = threading.Lock()

        def raise_unpicklable():
            raise Unpicklable()

        try:
            client.submit(raise_unpicklable).result(timeout=60)
        except sortie.RemoteError as e:
            assert e.type_name == "__main__.Unpicklable" and e.message == "cannot travel"
            assert e.original is None
        else:
            raise AssertionError("no RemoteError")

        try:
            view[0].pull("never_defined")
        except sortie.RemoteError as e:
            assert e.type_name == "NameError" and "never_defined" in e.message
        else:
            raise AssertionError("no RemoteError")

        try:
            client.submit(time.sleep, 30, timeout=0.5).result(timeout=60)
        except sortie.TaskTimeout as e:
            assert isinstance(e, TimeoutError) and isinstance(e, sortie.RemoteError)
        else:
            raise AssertionError("no TaskTimeout")
    """)


@pytest.mark.timeout(120)
def test_another_process_collects_results_by_task_id(sortie, tmp_path):
    id_file = tmp_path / "task_id"
    run_script(sortie, tmp_path, """
        client.start_engines(1, label="cpu", timeout=60)

        def slow_square(x):
            print("working on", x)
            time.sleep(0.5)  # likely still running when this process exits
            return x * x

        fut = client.submit(slow_square, 12, label="cpu")
        with open(sys.argv[1], "w") as f:
            f.write(str(fut.id))
    """, id_file, name="submitter.py")
    run_script(sortie, tmp_path, """
        task = int(open(sys.argv[1]).read())
        client = sortie.Client()
        fut = client.future(task)
        assert fut.id == task
        assert fut.result(timeout=60) == 144
        assert fut.stdout() == "working on 12\\n"
        assert fut.engine > 0

        assert client.forget([fut]) == 1
        for gone in (task, 10 ** 9):
            try:
                client.future(gone).result(timeout=60)
            except sortie.SortieError as e:
                assert e.code == "not_found", e
            else:
                raise AssertionError(f"task {gone} has a result")
    """, id_file, name="collector.py", prelude="import sys\nimport sortie\n")


@pytest.mark.timeout(120)
def test_bad_input_is_refused_in_the_client(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        def expect(kind, words, fn, *args, **kwargs):
            try:
                fn(*args, **kwargs)
            except kind as e:
                for word in words:
                    assert word in str(e), f"{word!r} not in {e}"
                return e
            raise AssertionError(f"{fn} did not raise {kind.__name__}")

        empty = client.engines(label="nope")
        assert len(empty) == 0
        expect(ValueError, ["no engines", "nope"], empty.apply, os.getpid)

        view = client.start_engines(1, label="cpu", timeout=60)
        [live] = view.ids
        expect(ValueError, [str(live + 1000), str(live)], client.submit, os.getpid,
               engine=live + 1000)
        expect(TypeError, ["positional argument 1", "lock"], client.submit, len,
               threading.Lock())
        expect(TypeError, ["item 1", "lock"], client.map, len, [[1], threading.Lock()])
        expect(TypeError, ["not callable"], client.submit, 42)
        expect(SyntaxError, [], view.execute, "def (")
        expect(TypeError, ["list"], client.submit_job, "echo hi")
        expect(ValueError, ["duration"], client.add_pilot, time="soon")
        expect(ValueError, ["size"], client.submit_job, ["true"], memory="lots")

        big = b"x" * 100_000
        expect(ValueError, ["64 KiB"], client.start_engines, 1, setup=lambda: big)

        def broken_setup():
            raise RuntimeError("no model file")

        expect(sortie.SortieError, ["no model file"], client.start_engines, 1, label="cpu",
               setup=broken_setup, timeout=60)
        assert view.apply(lambda: 1 + 1) == [2]   # the engine that was up still works
    """)


@pytest.mark.timeout(120)
def test_an_engine_killed_mid_task_is_engine_lost_and_retries_run_elsewhere(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        view = client.start_engines(3, label="cpu", timeout=60)
        pids = view.apply(os.getpid)

        def hold(marker):
            # The first attempt says where it runs and waits to be killed; a retry returns.
            if os.path.exists(marker):
                return os.getpid()
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(marker + ".tmp", marker)
            time.sleep(300)

        def started(marker):
            deadline = time.monotonic() + 60
            while not os.path.exists(marker):
                assert time.monotonic() < deadline, f"the task of {marker} did not start"
                time.sleep(0.05)
            return int(open(marker).read())

        first = os.path.abspath("first")
        lost = client.submit(hold, first)
        killed = started(first)
        assert killed in pids
        os.kill(killed, signal.SIGKILL)
        try:
            lost.result(timeout=60)
        except sortie.EngineLost as e:
            assert isinstance(e, sortie.RemoteError) and e.message, e
        else:
            raise AssertionError("the task of a killed engine did not fail")

        second = os.path.abspath("second")
        retried = client.submit(hold, second, retries=1)
        killed_too = started(second)
        os.kill(killed_too, signal.SIGKILL)
        survivor = retried.result(timeout=60)
        assert survivor in pids and survivor not in (killed, killed_too)

        # The last engine: tasks sent to it ahead of their turn fail with the one it runs (the
        # hub cannot tell which of a batch had begun: none runs twice unasked).
        third = os.path.abspath("third")
        held = [client.submit(hold, third)] + client.map(abs, [-1, -2])
        assert started(third) == survivor
        os.kill(survivor, signal.SIGKILL)
        for fut in held:
            try:
                fut.result(timeout=60)
            except sortie.EngineLost:
                pass
            else:
                raise AssertionError("a task held by a killed engine did not fail")
    """)


@pytest.mark.timeout(120)
def test_labels_keep_engines_apart(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        client.add_pilot(resource="local", slots_per_node=2, label="gpu", gpus_per_node=1)
        client.wait_for_pilots(timeout=60)
        cpu = client.start_engines(2, label="cpu", timeout=60)
        gpu = client.start_engines(1, label="gpu", gpus=1, timeout=60)
        assert client.engines(label="gpu").ids == gpu.ids
        assert client.engines(label="cpu").ids == sorted(cpu.ids)

        node = lambda *_: os.environ["SORTIE_NODE"]
        cpu_nodes, gpu_nodes = set(cpu.apply(node)), set(gpu.apply(node))
        assert not cpu_nodes & gpu_nodes
        assert gpu[0].apply(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))

        where = lambda _: (sortie.engine.label, os.environ["SORTIE_NODE"])
        on_gpu = client.gather(client.map(where, range(20), label="gpu"))
        assert {w[0] for w in on_gpu} == {"gpu"} and {w[1] for w in on_gpu} <= gpu_nodes
        on_cpu = client.gather(client.map(where, range(20), label="cpu"))
        assert {w[0] for w in on_cpu} == {"cpu"} and {w[1] for w in on_cpu} <= cpu_nodes
    """)


@pytest.mark.timeout(120)
def test_task_output_is_followed_live(sortie, tmp_path):
    # The task cannot go on until the follower has seen its last line (it waits for a file the
    # follower writes), so each line must arrive while it runs.
    run_script(sortie, tmp_path, """
        client.start_engines(1, label="cpu", timeout=60)
        gate = os.path.join(os.getcwd(), "gate")

        def talk(lines, gate, big=0):
            import os, time
            if big:
                print("x" * big)
            for i in range(lines):
                print("line", i, flush=True)
                while not os.path.exists(f"{gate}{i}"):
                    time.sleep(0.01)
            return lines

        fut = client.submit(talk, 3, gate)
        seen = ""
        for piece in fut.follow(timeout=60):
            seen += piece
            if seen.endswith("\\n"):
                open(gate + seen.split()[-1], "w").close()
        assert seen == "line 0\\nline 1\\nline 2\\n" == fut.stdout(), seen
        assert fut.result() == 3

        # A follower that begins late gets what was printed before; one that begins after the
        # end gets the whole output at once.
        late = client.submit(talk, 2, gate + "late")
        pieces = late.follow(timeout=60)
        assert next(pieces) == "line 0\\n"
        open(gate + "late0", "w").close()
        again = sortie.Client().future(late.id).follow(timeout=60)
        first = next(again)
        assert first.startswith("line 0\\n"), first
        open(gate + "late1", "w").close()
        assert "".join(pieces) == "line 1\\n" and first + "".join(again) == "line 0\\nline 1\\n"
        assert "".join(late.follow()) == "line 0\\nline 1\\n"

        # More than the hub keeps for late followers (64 KiB): they are told what they missed.
        big = client.submit(talk, 1, gate + "big", 100_000)
        first = next(big.follow(timeout=60))
        if first.startswith("x"):  # the follower came before the engine sent anything
            first = next(big.follow(timeout=60))
        assert first.startswith("[sortie: ") and "bytes of output not shown here" in first, first
        open(gate + "big0", "w").close()
        assert big.result(timeout=60) == 1 and len(big.stdout()) == 100_008
    """)


@pytest.mark.timeout(120)
def test_a_timed_out_task_is_interrupted_and_its_engine_takes_the_next(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        view = client.start_engines(1, label="cpu", timeout=60)
        view.push({"kept": 41})

        def spin():  # its own `except Exception` does not keep it going
            while True:
                try:
                    time.sleep(0.01)
                except Exception:
                    pass

        def busy():
            while True:
                pass

        for fn in (spin, busy):
            try:
                client.submit(fn, timeout=0.5).result(timeout=60)
            except sortie.TaskTimeout as e:
                assert "timeout of 500ms" in str(e), str(e)
            else:
                raise AssertionError("no TaskTimeout")
            # The engine was freed at once, with its namespace: the next task runs there.
            assert client.submit(lambda: kept + 1).result(timeout=30) == 42
        assert view.pull("kept") == [41]
    """)


@pytest.mark.timeout(120)
def test_a_timed_out_task_that_cannot_be_interrupted_keeps_its_engine_busy(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        view = client.start_engines(2, label="cpu", timeout=60)
        gate = os.path.join(os.getcwd(), "gate")

        def wait(gate):
            # Ignoring the engine's timer signal makes this call what a long call into C code
            # is: something the engine cannot interrupt.
            interrupt = signal.signal(signal.SIGALRM, signal.SIG_IGN)
            try:
                while not os.path.exists(gate):
                    time.sleep(0.02)
            finally:
                signal.signal(signal.SIGALRM, interrupt)
            return "late"

        slow = client.submit(wait, gate, timeout=0.5)
        try:
            slow.result(timeout=60)
        except sortie.TaskTimeout as e:
            assert "ran longer than its timeout of 500ms" in str(e), str(e)
        else:
            raise AssertionError("no TaskTimeout")
        busy = slow.engine
        # Its engine still runs it: everything else goes to the other one meanwhile.
        quick = client.map(lambda x: x + 1, range(50))
        assert client.gather(quick) == list(range(1, 51))
        assert {f.engine for f in quick} == set(view.ids) - {busy}
        open(gate, "w").close()
        # Once the late call ended, that engine takes tasks again.
        assert client.submit(lambda: 5, engine=busy).result(timeout=60) == 5
    """)


@pytest.mark.timeout(120)
def test_a_client_made_in_a_function_exits_cleanly_with_results_pending(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        client.start_engines(1, label="cpu", timeout=60)

        def submit_and_return():
            inner = sortie.Client()
            return [f.id for f in inner.map(time.sleep, [0.01] * 100)]

        ids = submit_and_return()  # its client is collected here, its results still coming
        assert len(ids) == 100
    """)


@pytest.mark.timeout(120)
def test_one_task_at_a_time_costs_at_most_two_commits_and_a_lone_result_is_stored_alone(sortie,
                                                                                       tmp_path):
    # 05-tasks.md §5.1: a result's row joins the next submission's commit, or goes alone soon.
    run_script(sortie, tmp_path, """
        view = client.start_engines(1, label="cpu", timeout=60)
        [engine_pid] = view.apply(os.getpid)

        def square(x):
            return x * x

        def slowly(x):
            time.sleep(1)
            return x * x

        client.submit(square, 1).result(timeout=60)
        n = 40
        before = client.status()["store_commits"]
        for i in range(n):
            assert client.submit(square, i).result(timeout=60) == i * i
        commits = client.status()["store_commits"] - before
        # Each task's submission is a commit; its result's row joins the next submission's
        # when that comes within 2 ms (typically: one commit per task, which bench/tasks.py (f)
        # measures) or goes alone. Nothing else of a task makes a commit of its own (its running
        # row goes with its submission's), however slow this machine is at the moment.
        assert n <= commits <= 2 * n, f"{commits} commits for {n} tasks one at a time"

        lone = client.submit(slowly, 7)
        submitted = client.status()["store_commits"]  # the task still sleeps: nothing follows
        assert lone.result(timeout=60) == 49
        deadline = time.monotonic() + 30
        while client.status()["store_commits"] == submitted:  # its result's row, alone
            assert time.monotonic() < deadline, "the lone result's row was never committed"
            time.sleep(0.01)
        # Stored: with the hub and the engine both killed now, the next hub still has it.
        hub = client.status()["pid"]
        os.kill(hub, signal.SIGKILL)
        os.kill(engine_pid, signal.SIGKILL)
        for pid in (hub, engine_pid):
            while os.path.exists(f"/proc/{pid}") and \
                    open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.monotonic() < deadline, f"process {pid} outlived SIGKILL"
                time.sleep(0.01)
        client.close()
        again = sortie.Client()
        assert again.status()["pid"] != hub
        assert again.future(lone.id).result(timeout=60) == 49
    """)


@pytest.mark.timeout(120)
def test_every_future_settles_once_whether_its_result_comes_with_its_reply_or_later(sortie,
                                                                                   tmp_path):
    # 05-tasks.md §5.3: results that reach the client with their submission's reply are given
    # to the thread that submitted, the others to the results thread; every future settles once.
    run_script(sortie, tmp_path, """
        from sortie._futures import Future

        client.start_engines(2, label="cpu", timeout=60)
        settled = {}  # task id -> names of the threads that settled its future
        finish = Future.finish

        def recording(self, result):
            settled.setdefault(self.id, []).append(threading.current_thread().name)
            return finish(self, result)

        Future.finish = recording
        for round in range(6):
            # The 3.9 MB argument makes the submission's commit long: the short task's result may
            # reach the hub before the reply, and then comes with it. (Whether it does depends
            # on timing; tests/unit/client/client_test.cpp checks the C++ side of it.)
            short, long = client.map(len, [b"ab", b"x" * 3_900_000])
            assert short.result(timeout=60) == 2 and long.result(timeout=60) == 3_900_000
            assert len(settled[short.id]) == 1 and len(settled[long.id]) == 1, settled
        # One at a time: each settles once, on whichever thread its result reached.
        futs = [client.submit(len, "abc") for _ in range(50)]
        assert [f.result(timeout=60) for f in futs] == [3] * 50
        assert all(len(settled[f.id]) == 1 for f in futs), settled
    """)


@pytest.mark.timeout(120)
def test_compiled_engines_from_python_call_view_call_and_errors(sortie, tmp_path):
    nbody = Path(sortie.bin).parent / "sortie-example-nbody"
    run_script(sortie, tmp_path, f"""
        import struct
        view = client.start_engines(2, label="cpu", program=[{str(nbody)!r}], timeout=60)
        state = struct.pack("<14d", 0.5, -0.5, 0, 0, 0, -0.5, 0, 0.5, 0.5, 0, 0, 0, 0.5, 0)
        assert view.call("set_state", state) == [b"", b""]
        assert view[1].call("evolve", struct.pack("<d", 0.5)) == struct.pack("<d", 0.5)
        times = [struct.unpack("<d", s[:8])[0] for s in view.call("get_state")]
        assert times == [0.0, 0.5], times  # each engine keeps its own state
        fut = client.call_async("energy", engine=view.ids[0])
        assert isinstance(fut, concurrent.futures.Future) and len(fut.result(timeout=60)) == 8
        try:
            client.call("evolve", b"abc", engine=view.ids[0])
        except sortie.RemoteError as e:
            assert e.type_name == "sortie::Error(invalid argument)", e.type_name
            assert "expected little-endian doubles, got 3 bytes" in str(e), str(e)
        else:
            raise AssertionError("a bad payload was taken")
        try:
            view.call("nope")
        except sortie.RemoteError as e:
            assert "no handler 'nope'" in str(e), str(e)
        else:
            raise AssertionError("an unknown handler answered")
        for bad, why in (((lambda: view.call("evolve", "text")), "a handler's payload is bytes"),
                         ((lambda: client.call("")), "non-empty string"),
                         ((lambda: client.start_engines(1, program=["x"], setup=print)),
                          "setup is for Python engines")):
            try:
                bad()
            except (TypeError, ValueError) as e:
                assert why in str(e), str(e)
            else:
                raise AssertionError(why)
        # A Python function sent to a compiled engine is refused by it, with its handlers.
        try:
            client.submit(lambda: 1, engine=view.ids[0]).result(timeout=60)
        except sortie.RemoteError as e:
            assert "this is a compiled engine" in str(e) and "set_state" in str(e), str(e)
        else:
            raise AssertionError("a compiled engine ran a Python function")
    """)
