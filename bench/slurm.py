#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""N short jobs (/bin/true) on one node (n1, 8 declared CPUs) of the Slurm test bed
(scripts/testbeds/slurm.sh), three ways, each with 8 jobs in flight:

  sortie         a Slurm pilot (one batch job, an agent with 8 slots) that is already running;
                 `sortie submit --array 1-N -- /bin/true` + `job wait`. Also reported: the same
                 including the pilot's start (sbatch to the agent registering).
  sbatch --wrap  N batch jobs, submitted one by one, until the last has left squeue.
  srun           inside one allocation of 8 CPUs: N `srun -n1 --exact /bin/true`, 8 at a time.

Medians over --runs runs; ratios are (peer time) / (sortie time). Brings the test bed up if it
is down (and takes it down again). Usage: bench/slurm.py [--runs 3] [--jobs 2000]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, Hub  # noqa: E402

SLURM = ROOT / "scripts" / "testbeds" / "slurm.sh"


def slurm_up():
    return subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode == 0


def squeue_count():
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                         check=True).stdout
    return len(out.split())


def wait_squeue_empty(timeout=3600):
    deadline = time.monotonic() + timeout
    while squeue_count() > 0:
        if time.monotonic() > deadline:
            raise RuntimeError("Slurm jobs did not finish")
        time.sleep(0.2)


def run_sortie(bin_dir, n):
    hub = Hub(bin_dir, '[hub]\nbatch_poll_interval = "500ms"\n')
    try:
        hub.run("resource", "add", "cluster", "--type", "slurm")
        t0 = time.perf_counter()
        pid = hub.run("pilot", "add", "--resource", "cluster", "--slots", 8).stdout.strip()
        hub.run("pilot", "wait", pid, "--timeout", "5m")
        start = time.perf_counter() - t0
        t1 = time.perf_counter()
        ids = hub.run("submit", "--array", f"1-{n}", "--", "/bin/true").stdout.strip()
        hub.run("job", "wait", ids, "--quiet")
        jobs = time.perf_counter() - t1
        states = json.loads(hub.run("hub", "status", "--json").stdout)["jobs_by_state"]
        assert set(states) == {"succeeded"}, states
        hub.run("pilot", "cancel", pid)
        wait_squeue_empty()
        return jobs, start + jobs
    finally:
        hub.close()


def run_sbatch(n):
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(["sbatch", "--parsable", "-n1", "-w", "n1", "-o", "/dev/null", "--wrap",
                        "/bin/true"],
                       check=True, capture_output=True)
    wait_squeue_empty()
    return time.perf_counter() - t0


def run_srun(n):
    t0 = time.perf_counter()
    script = f"seq {n} | xargs -P8 -I{{}} srun -n1 --exact -o /dev/null /bin/true"
    subprocess.run(["salloc", "-n8", "-w", "n1", "sh", "-c", script], check=True, capture_output=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--build", default=str(ROOT / "build" / "release"))
    args = ap.parse_args()
    started = False
    if not slurm_up():
        subprocess.run([str(SLURM), "up"], check=True)
        started = True
    try:
        times = {"sortie": [], "sortie_with_start": [], "sbatch": [], "srun": []}
        for _ in range(args.runs):
            jobs, with_start = run_sortie(Path(args.build), args.jobs)
            times["sortie"].append(jobs)
            times["sortie_with_start"].append(with_start)
            times["sbatch"].append(run_sbatch(args.jobs))
            times["srun"].append(run_srun(args.jobs))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(p / s for p, s in zip(v, times["sortie"]))
                 for k, v in times.items()}
        print(f"{args.jobs} x /bin/true on 1 Slurm node (8 CPUs declared, 2 cores), 8 in flight; "
              f"{args.runs} runs, medians; {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"    {'runner':<34}{'seconds':>9}{'jobs/s':>9}{'vs sortie':>11}")
        for name, label in [("sortie", "sortie (Slurm pilot running)"),
                            ("sortie_with_start", "sortie incl. pilot start"),
                            ("sbatch", "sbatch --wrap, one job each"),
                            ("srun", "srun in one allocation")]:
            t = med[name]
            print(f"    {label:<34}{t:>9.2f}{args.jobs / t:>9.0f}{ratio[name]:>10.1f}x")
        print("    (vs sortie: median over runs of that runner's time / sortie's time)")
    finally:
        if started:
            subprocess.run([str(SLURM), "down"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
