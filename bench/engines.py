#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Engine benchmarks (bench/README.md), medians over --runs runs, peers measured in the same run:

(i) view.apply on the 4 ranks of an MPI engine job (one local node), round trip p50 and p99,
    against ipyparallel's DirectView over 4 MPI engines started the seed's way
    (`mpiexec -n 4 python3 -m ipyparallel.engine --mpi`, ipyparallel's engines="mpi").
(j) a compiled engine's call round trip (Client::call, bench_call) p50 and p99, against the
    loopback TCP round trip of 8 bytes measured by the same program. Goal: p50 <= 2x TCP + 50 us.

Usage: bench/engines.py [--runs 3] [--only ij] [--calls 2000] [--build build/release]
"""
import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from tasks import Sortie, percentile  # noqa: E402

def noop(x):  # defined here (in __main__) so that it travels by value
    return x


# ipyparallel runs mpiexec -n 4 on a 2-core machine: it must be allowed to oversubscribe (as
# sortie's hostfile allows, with slots=4).
ROOT_MPI = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def round_trips(apply, n):
    """Seconds per `apply(noop, i)` on 4 engines, n times after 50 to warm up."""
    for i in range(50):
        apply(noop, i)
    lat = []
    for i in range(n):
        t = time.perf_counter()
        assert apply(noop, i) == [i] * 4
        lat.append(time.perf_counter() - t)
    return lat


def sortie_mpi_apply(build, n):
    s = Sortie(build, engines=0)
    try:
        s.client.add_pilot(resource="local", slots_per_node=4)
        s.client.wait_for_pilots(timeout=60)
        view = s.client.start_engines(4, mpi=True, timeout=120)
        return round_trips(view.apply, n)
    finally:
        s.close()


def ipp_mpi_apply(n):
    import ipyparallel as ipp
    os.environ.update(ROOT_MPI)
    cluster = ipp.Cluster(n=4, engine_launcher_class="mpi", log_level=logging.ERROR)
    rc = cluster.start_and_connect_sync()
    try:
        rc.wait_for_engines(4, timeout=120)
        return round_trips(rc[:].apply_sync, n)
    finally:
        rc.close()
        cluster.stop_cluster_sync()


def compiled_call(build, n):
    s = Sortie(build, engines=0)
    try:
        s.client.add_pilot(resource="local", slots_per_node=1)
        s.client.wait_for_pilots(timeout=60)
        s.client.start_engines(1, program=[str(build / "bench" / "bench_call"), "--serve"],
                               timeout=60)
        out = subprocess.run([str(build / "bench" / "bench_call"), str(n)], capture_output=True,
                             text=True, check=True, timeout=600).stdout.split()
        return [float(x) for x in out]
    finally:
        s.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="ij")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--build", default=str(ROOT / "build" / "release"))
    args = parser.parse_args()
    build = Path(args.build).resolve()
    print(f"# bench/engines.py on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"medians of {args.runs} runs")
    if "i" in args.only:
        runs = {"sortie": [], "ipp": []}
        for _ in range(args.runs):
            runs["sortie"].append(sortie_mpi_apply(build, 1000))
            runs["ipp"].append(ipp_mpi_apply(1000))
        print("(i) view.apply on 4 MPI ranks, round trip (us):")
        for k, label in (("sortie", "sortie"), ("ipp", "ipyparallel --mpi")):
            p50 = statistics.median(percentile(r, 0.5) for r in runs[k]) * 1e6
            p99 = statistics.median(percentile(r, 0.99) for r in runs[k]) * 1e6
            print(f"    {label:18s} p50 {p50:8.0f}  p99 {p99:8.0f}")
    if "j" in args.only:
        rows = [compiled_call(build, args.calls) for _ in range(args.runs)]
        tcp50, tcp99, call50, call99 = (statistics.median(r[i] for r in rows) for i in range(4))
        print(f"(j) compiled engine call round trip: p50 {call50:.0f} us, p99 {call99:.0f} us; "
              f"loopback TCP p50 {tcp50:.0f} us (goal: p50 <= 2x TCP + 50 = "
              f"{2 * tcp50 + 50:.0f} us: {'met' if call50 <= 2 * tcp50 + 50 else 'not met'})")


if __name__ == "__main__":
    main()
