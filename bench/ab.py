#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""A/B of benchmark (a) between two builds on one machine, alternated so that the machine's
drift falls on both: per round, for each build a fresh hub with a 2-slot local pilot and two
arrays of N /bin/true, each after its own posix_spawn floor run. Reports the median ratio to
the floor and the median CPU per job of sortie's own processes (hub, agent, keeper: utime +
stime from /proc; in all and per process), which the machine's noise moves far less than wall
time.

Usage: bench/ab.py OLD_BUILD_DIR NEW_BUILD_DIR [--rounds 4] [--jobs 2000]
(a build dir holds apps/sortie and bench/bench_spawn_floor, as build/release does)
"""
import argparse
import importlib.util
import os
import statistics
import subprocess
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
bench_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_run)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:  # gone (a short-lived CLI)
        return None


def cpu_between(before, pids):
    """CPU seconds used since `before` by the processes alive at both readings, by role."""
    now = {p: cpu_seconds(p) for p in pids}
    used = {}
    for p, who in pids.items():
        if now[p] is not None and before[p] is not None:
            used[who] = used.get(who, 0.0) + now[p] - before[p]
    return used


def role(pid):
    """hub, agent or keeper, from the process's arguments (the keeper is the agent's child)."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"hub" in args:
        return "hub"
    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    try:
        if b"agent" in Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0"):
            return "keeper"
    except OSError:
        pass
    return "agent"


def sortie_processes():
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().startswith("sortie"):
                    out[int(d.name)] = role(int(d.name))
            except OSError:
                pass
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2000)
    args = ap.parse_args()
    builds = {"old": Path(args.old), "new": Path(args.new)}
    ratio = {k: [] for k in builds}
    cpu = {k: [] for k in builds}
    split = {k: {} for k in builds}  # role -> CPU per job of each run
    for r in range(args.rounds):
        for name, build in builds.items():
            hub = bench_run.Hub(build)
            try:
                hub.add_pilot(2)
                pids = sortie_processes()  # the hub, the agent and its keeper
                for _ in range(2):
                    floor = float(subprocess.run(
                        [str(build / "bench" / "bench_spawn_floor"), str(args.jobs), "2",
                         "/bin/true"], check=True, capture_output=True, text=True).stdout)
                    c0 = {p: cpu_seconds(p) for p in pids}
                    t0 = time.perf_counter()
                    ids = hub.run("submit", "--array", f"1-{args.jobs}", "--", "/bin/true").stdout
                    hub.run("job", "wait", ids.strip(), "--quiet")
                    took = time.perf_counter() - t0
                    ratio[name].append(floor / took)
                    used = cpu_between(c0, pids)
                    cpu[name].append(sum(used.values()) / args.jobs * 1e6)
                    for who, sec in used.items():
                        split[name].setdefault(who, []).append(sec / args.jobs * 1e6)
            finally:
                hub.close()
        print(f"round {r + 1}: " + "  ".join(
            f"{k} {statistics.median(ratio[k][-2:]):.3f}x {statistics.median(cpu[k][-2:]):.0f} us/job"
            for k in builds), flush=True)
    for k in builds:
        print(f"{k}: {statistics.median(ratio[k]):.3f}x the floor (median), "
              f"{statistics.median(cpu[k]):.0f} us of sortie CPU per job (median: " +
              ", ".join(f"{r} {statistics.median(v):.0f}" for r, v in sorted(split[k].items())) +
              ")")


if __name__ == "__main__":
    main()
