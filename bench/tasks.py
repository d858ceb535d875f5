#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Function-task benchmarks (bench/README.md), sortie against its peers in the same run:
concurrent.futures.ProcessPoolExecutor(2), dask.distributed LocalCluster (2 workers, 1 thread
each) and ipyparallel (2 engines). Medians over --runs runs.

(e) map + gather of --tasks no-op tasks over 2 workers: tasks/s.
(f) 1,000 sequential submit(f, i).result(): round trip p50 (and p99).
(g) apply on every worker of a view of 2 (sortie view.apply, ipyparallel DirectView.apply_sync):
    round trip p50 and p99.
(h) --queued tasks submitted in one map with no engine to run them: the hub's RSS per queued
    task and the submission rate (calls/s until the durable acknowledgement).

Usage: bench/tasks.py [--runs 3] [--tasks 100000] [--only efgh] [--peers ppe,dask,ipp]
       [--build build/release]. Runs with Debian's /usr/bin/python3.
"""
import argparse
import concurrent.futures
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def noop(x):
    return x


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------------------------------
# sortie

class Sortie:
    """A hub in a throw-away SORTIE_HOME with a 2-slot local pilot and 2 engines."""

    def __init__(self, build, engines=2, config=""):
        self.tmp = tempfile.TemporaryDirectory(prefix="sortie-bench-")
        home = Path(self.tmp.name)
        (home / "default").mkdir()
        (home / "default" / "config.toml").write_text(config)
        os.environ["SORTIE_HOME"] = str(home)
        os.environ["SORTIE_EXE"] = str(build / "apps" / "sortie")
        self.bin = os.environ["SORTIE_EXE"]
        import sortie
        self.sortie = sortie
        self.client = sortie.Client()
        self.view = None
        if engines:
            self.client.add_pilot(resource="local", slots_per_node=engines)
            self.client.wait_for_pilots(timeout=60)
            self.view = self.client.start_engines(engines, timeout=60)

    def hub_pid(self):
        return self.client.status()["pid"]

    def close(self):
        self.client.close()
        subprocess.run([self.bin, "hub", "stop"], capture_output=True, timeout=120)
        self.tmp.cleanup()


def cpu_seconds(pid):
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_pids(home):
    """The agents of a throw-away SORTIE_HOME (not their keepers)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            comm = Path(f"/proc/{d}/comm").read_text().strip()
        except OSError:
            continue
        if f"SORTIE_HOME={home}".encode() in env and b"agent" in cmd and comm != "sortie-keeper":
            found.append(int(d))
    return found


def sortie_map(s, n, where=None):
    """Tasks/s of map + gather; with `where` (a dict), the CPU each part used per task (us)."""
    if where is not None:
        hub = s.hub_pid()
        agents = agent_pids(os.environ["SORTIE_HOME"])
        engines = s.view.apply(os.getpid)
        before = {"hub": cpu_seconds(hub), "agent": sum(map(cpu_seconds, agents)),
                  "engines": sum(map(cpu_seconds, engines)), "client": time.process_time()}
    t = time.perf_counter()
    results = s.client.gather(s.client.map(noop, range(n)))
    dt = time.perf_counter() - t
    assert results == list(range(n))
    if where is not None:
        after = {"hub": cpu_seconds(hub), "agent": sum(map(cpu_seconds, agents)),
                 "engines": sum(map(cpu_seconds, engines)), "client": time.process_time()}
        for k in before:
            where.setdefault(k, []).append((after[k] - before[k]) / n * 1e6)
    return n / dt


def sortie_roundtrips(s, n=1000):
    lat = []
    for i in range(n):
        t = time.perf_counter()
        assert s.client.submit(noop, i).result() == i
        lat.append(time.perf_counter() - t)
    return lat


def sortie_apply(s, n=1000):
    lat = []
    for i in range(n):
        t = time.perf_counter()
        s.view.apply(noop, i)
        lat.append(time.perf_counter() - t)
    return lat


# ---------------------------------------------------------------------------------------------
# Peers

class PPE:
    def __init__(self):
        self.ex = concurrent.futures.ProcessPoolExecutor(2)
        list(self.ex.map(noop, range(100)))  # workers up

    def map(self, n):
        t = time.perf_counter()
        assert list(self.ex.map(noop, range(n))) == list(range(n))
        return n / (time.perf_counter() - t)

    def roundtrips(self, n=1000):
        lat = []
        for i in range(n):
            t = time.perf_counter()
            self.ex.submit(noop, i).result()
            lat.append(time.perf_counter() - t)
        return lat

    def close(self):
        self.ex.shutdown()


class Dask:
    def __init__(self):
        from dask.distributed import Client, LocalCluster
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its retries are noisy
        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def map(self, n):
        t = time.perf_counter()
        futs = self.client.map(noop, range(n), pure=False)
        assert self.client.gather(futs) == list(range(n))
        return n / (time.perf_counter() - t)

    def roundtrips(self, n=1000):
        lat = []
        for i in range(n):
            t = time.perf_counter()
            self.client.submit(noop, i, pure=False).result()
            lat.append(time.perf_counter() - t)
        return lat

    def close(self):
        self.client.close()
        self.cluster.close()


class IPP:
    def __init__(self):
        import ipyparallel as ipp
        self.cluster = ipp.Cluster(n=2, log_level=logging.ERROR)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(2, timeout=120)
        self.lview = self.rc.load_balanced_view()
        self.dview = self.rc[:]

    def map(self, n):
        t = time.perf_counter()
        results = [r.get() for r in [self.lview.apply_async(noop, i) for i in range(n)]]
        assert results == list(range(n))
        return n / (time.perf_counter() - t)

    def roundtrips(self, n=1000):
        lat = []
        for i in range(n):
            t = time.perf_counter()
            self.lview.apply_sync(noop, i)
            lat.append(time.perf_counter() - t)
        return lat

    def apply(self, n=1000):
        lat = []
        for i in range(n):
            t = time.perf_counter()
            self.dview.apply_sync(noop, i)
            lat.append(time.perf_counter() - t)
        return lat

    def close(self):
        self.rc.close()
        self.cluster.stop_cluster_sync()


PEER_TASKS = {"dask": 20_000, "ipp": 10_000}
PEERS = {"ppe": ("ProcessPoolExecutor(2)", PPE), "dask": ("dask LocalCluster(2x1)", Dask),
         "ipp": ("ipyparallel (2 engines)", IPP)}


# ---------------------------------------------------------------------------------------------

def bench_queued(build, n):
    """Hub RSS growth per queued task and the submission rate, no engine to run them."""
    s = Sortie(build, engines=0)
    try:
        pid = s.hub_pid()
        before = rss_kib(pid)
        t = time.perf_counter()
        futs = s.client.map(noop, range(n))
        rate = n / (time.perf_counter() - t)
        assert len(futs) == n
        after = rss_kib(pid)
        payload = len(s.sortie._calls.pack(noop, (1,), {})) if hasattr(s.sortie, "_calls") else 0
        return {"rate": rate, "bytes_per_task": (after - before) * 1024 / n, "payload": payload}
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--queued", type=int, default=1_000_000)
    ap.add_argument("--only", default="efgh")
    ap.add_argument("--peers", default="ppe,dask,ipp")
    ap.add_argument("--build", default=str(ROOT / "build" / "release"))
    ap.add_argument("--sync", default="full", choices=["full", "normal"],
                    help="the hub's store_sync (default: full, the hub's default)")
    args = ap.parse_args()
    build = Path(args.build).resolve()
    sys.path.insert(0, str(build / "python"))
    peers = [p for p in args.peers.split(",") if p]
    print(f"# bench/tasks.py on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"store_sync={args.sync}, medians of {args.runs} runs")

    if set(args.only) & set("efg"):
        s = Sortie(build, config=f'[hub]\nstore_sync = "{args.sync}"\n')
        rows = {}
        try:
            where = {}
            if "e" in args.only:
                rows["e sortie"] = [sortie_map(s, args.tasks, where) for _ in range(args.runs)]
            if "f" in args.only:
                # The pool's round trip moves with the machine's hour by more than the goal's
                # margin: its runs alternate with sortie's, each pair minutes apart at most.
                pool = PPE() if "ppe" in peers else None
                try:
                    for _ in range(args.runs):
                        commits = s.client.status()["store_commits"]
                        lat = sortie_roundtrips(s)
                        rows.setdefault("f sortie", []).append(statistics.median(lat) * 1e6)
                        rows.setdefault("f commits", []).append(
                            (s.client.status()["store_commits"] - commits) / len(lat))
                        if pool:
                            rows.setdefault("f ppe", []).append(
                                statistics.median(pool.roundtrips()) * 1e6)
                finally:
                    if pool:
                        pool.close()
            if "g" in args.only:
                lats = [sortie_apply(s) for _ in range(args.runs)]
                rows["g sortie p50"] = [statistics.median(l) * 1e6 for l in lats]
                rows["g sortie p99"] = [percentile(l, 0.99) * 1e6 for l in lats]
        finally:
            s.close()
        for key in peers:
            name, cls = PEERS[key]
            try:
                peer = cls()
            except Exception as e:  # a peer that cannot start is reported, not fatal
                print(f"# {name}: cannot start ({e})")
                continue
            try:
                if "e" in args.only:
                    # dask (~600/s) and ipyparallel (~300/s) take minutes per 100,000, and dask's
                    # LocalCluster loses workers gathering that many here: they map fewer.
                    n = min(args.tasks, PEER_TASKS.get(key, args.tasks))
                    rows[f"e {key}"] = [peer.map(n) for _ in range(args.runs)]
                if "f" in args.only and f"f {key}" not in rows:
                    rows[f"f {key}"] = [statistics.median(peer.roundtrips()) * 1e6
                                        for _ in range(args.runs)]
                if "g" in args.only and key == "ipp":
                    lats = [peer.apply() for _ in range(args.runs)]
                    rows["g ipp p50"] = [statistics.median(l) * 1e6 for l in lats]
                    rows["g ipp p99"] = [percentile(l, 0.99) * 1e6 for l in lats]
            finally:
                peer.close()
        med = {k: statistics.median(v) for k, v in rows.items()}
        if "e" in args.only:
            print(f"(e) map+gather of {args.tasks} no-op tasks on 2 workers (tasks/s):")
            for k in ["sortie"] + peers:
                if f"e {k}" in med:
                    ratio = med["e sortie"] / med[f"e {k}"] if k != "sortie" else 1
                    print(f"    {k:8s} {med[f'e {k}']:10.0f}   sortie is {ratio:.2f}x")
        if "e" in args.only:
            # In order: the runs share one hub, so a hub that slows as tasks pile up shows here.
            print("    sortie's runs on one hub, in order (tasks/s): " +
                  ", ".join(f"{r:,.0f}" for r in rows["e sortie"]))
            print("    sortie's CPU per task (us): " + ", ".join(
                f"{k} {statistics.median(v):.0f}" for k, v in where.items()) +
                " (the hub includes its store thread; engines: both)")
        if "f" in args.only:
            print("(f) sequential submit(f, i).result() round trip p50 (us):")
            for k in ["sortie"] + peers:
                if f"f {k}" in med:
                    print(f"    {k:8s} {med[f'f {k}']:10.0f}   ({med[f'f {k}'] / med['f sortie']:.2f}x "
                          f"sortie's)")
            # A result's row joins the next submission's commit when that comes within 2 ms
            # (05-tasks.md §5.1): 1.0 when the client keeps up, up to 2.0 when it never does.
            print(f"    sortie's store commits per task: {med['f commits']:.2f}")
        if "g" in args.only:
            print("(g) apply on both engines of a view, round trip (us):")
            for k in ("sortie", "ipp"):
                if f"g {k} p50" in med:
                    print(f"    {k:8s} p50 {med[f'g {k} p50']:8.0f}  p99 {med[f'g {k} p99']:8.0f}")
    if "h" in args.only:
        h = [bench_queued(build, args.queued) for _ in range(max(1, args.runs // 3))]
        rate = statistics.median(x["rate"] for x in h)
        per = statistics.median(x["bytes_per_task"] for x in h)
        print(f"(h) {args.queued} tasks in one map, none running: submitted at {rate:.0f}/s; hub "
              f"RSS {per:.0f} bytes per queued task (arguments: {h[0]['payload']} bytes each)")


if __name__ == "__main__":
    main()
