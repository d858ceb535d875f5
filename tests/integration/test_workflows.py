# SPDX-License-Identifier: Apache-2.0
"""The five workflows sortie replaces, as the examples in examples/ run them (docs/python.md links
each from its workflow): each example is run as a user runs it, against the real test beds, and
its output checked. Also the MPI engines the Bodo workflow stands on."""
import json
import os
import shutil
import signal
import socket
import subprocess

import pytest

from conftest import ROOT, wait_for
from test_python import BUILD, PYTHON, run_script
from test_resources import (add_ssh_resource, label, netns, pilot, processes_where,  # noqa: F401
                            run_pilot, slurm, sshd)

EXAMPLES = ROOT / "examples"
# The network-namespace hosts reach each other on this network only (sx-login has another):
# OpenMPI is told which, as a user tells it on a cluster with several networks.
NETNS_MPI = ["OMPI_MCA_btl_tcp_if_include=10.201.0.128/25",
             "OMPI_MCA_oob_tcp_if_include=10.201.0.128/25"]
# The Slurm test bed's two nodes are one host: ranks on "different" nodes must not use shared
# memory between them (not needed on a real cluster).
SLURM_MPI = ["OMPI_MCA_btl=self,tcp"]


def run_example(sortie, name, *args, timeout=200, env=None, status=0):
    """Runs examples/NAME as a user would (Debian's python3, the build's package), with `env`
    added to the test's environment; its stdout (it must exit with `status`)."""
    env = dict(sortie.env, PYTHONPATH=str(BUILD / "python"), SORTIE_EXE=sortie.bin, **(env or {}))
    p = subprocess.run([PYTHON, str(EXAMPLES / name), *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == status, f"{name} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def cluster_pilot(sortie, netns, label, slots=2):
    """The 2-node ssh pilot in the network namespaces (through the login host)."""
    add_ssh_resource(sortie, "login", "root@10.201.0.11", netns)
    add_ssh_resource(sortie, "cluster", "root@10.201.0.129,root@10.201.0.130", netns,
                     "--gateway", "login")
    return run_pilot(sortie, "cluster", "--slots-per-node", str(slots), "--label", label)


def check_bodo_output(out, hosts):
    """The seed's check, exactly: ranks 0-3 in order, two per host, then pi."""
    lines = out.splitlines()
    assert len(lines) == 5, out
    a, b = hosts
    assert lines[:4] == [f"Hello World from rank {r} on host {h}. total ranks=4"
                         for r, h in enumerate([a, a, b, b])], out
    assert lines[4] == "pi = 3.141593", out


# ---------------------------------------------------------------------------------------------
# Bodo: MPI engines

@pytest.mark.timeout(240)
def test_bodo_on_a_two_node_ssh_pilot(sortie, netns, label):
    sortie.start()
    pid = cluster_pilot(sortie, netns, label)
    out = run_example(sortie, "bodo_mpi.py", "--label", label, "--ranks", 4,
                      "--ranks-per-node", 2, *[f"--env={e}" for e in NETNS_MPI])
    first = out.split(" on host ")[1].split(".")[0]
    check_bodo_output(out, [first, {"sx-login": "sx-compute", "sx-compute": "sx-login"}[first]])
    sortie.run("pilot", "cancel", pid)


@pytest.mark.timeout(240)
def test_bodo_on_a_two_node_slurm_pilot(sortie, slurm, label):
    sortie.start()
    sortie.run("resource", "add", "cluster", "--type", "slurm")
    pid = run_pilot(sortie, "cluster", "--nodes", "2", "--slots-per-node", "2", "--label", label,
                    timeout="90s")
    out = run_example(sortie, "bodo_mpi.py", "--label", label, "--ranks", 4,
                      "--ranks-per-node", 2, *[f"--env={e}" for e in SLURM_MPI])
    host = socket.gethostname()  # the test bed's two nodes are this host
    check_bodo_output(out, [host, host])
    sortie.run("pilot", "cancel", pid)


@pytest.mark.timeout(120)
def test_bodo_on_a_local_pilot_as_the_example_starts_it(sortie):
    out = run_example(sortie, "bodo_mpi.py")
    check_bodo_output(out, [socket.gethostname()] * 2)


@pytest.mark.timeout(120)
def test_mpi_engines_know_their_rank_and_answer_in_rank_order(sortie, tmp_path):
    run_script(sortie, tmp_path, """
        view = client.start_engines(3, mpi=True, label="cpu", timeout=60)
        assert len(view) == 3
        ranks = view.apply(lambda: (sortie.engine.rank, sortie.engine.size,
                                    __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_rank()))
        assert ranks == [(0, 3, 0), (1, 3, 1), (2, 3, 2)], ranks
        jobs = {e["job"] for e in client._hub_call("engines", "")}
        assert len(jobs) == 1  # one MPI job
        # On one node of a local pilot, every rank talks to the hub on the job's direct socket.
        assert [e.link for e in client.engine_info()] == ["direct"] * 3
        assert [v.apply(lambda: sortie.engine.rank) for v in view] == [0, 1, 2]
        # Collectives across the ranks, from calls on each.
        def total():
            from mpi4py import MPI
            return MPI.COMM_WORLD.allreduce(sortie.engine.rank + 1)
        assert view.apply(total) == [6, 6, 6]
        try:
            client.start_engines(2, ranks_per_node=1)
        except ValueError as e:
            assert "ranks_per_node is for MPI engines" in str(e), e
        else:
            raise AssertionError("ranks_per_node without mpi")
        assert view.stop() == 1
    """)


@pytest.mark.timeout(120)
def test_engine_start_mpi_from_the_command_line(sortie):
    sortie.start()
    sortie.run("pilot", "add", "--slots", "4", "--label", "cpu")
    job = int(sortie.run("engine", "start", "--count", "4", "--mpi", "--label", "cpu").stdout)
    engines = wait_for(lambda: len(e := sortie.json("engine", "list")) == 4 and e, 60,
                       "four ranks to come up")
    assert sorted(e["rank"] for e in engines) == [0, 1, 2, 3]
    assert {e["job"] for e in engines} == {job}
    r = sortie.run("engine", "start", "--count", "2", "--ranks-per-node", "1", check=False)
    assert r.returncode == 2 and "--ranks-per-node is for MPI engines: add --mpi" in r.stderr
    r = sortie.run("engine", "start", "--count", "2", "--mpi", "--ranks-per-node", "3",
                   check=False)
    assert r.returncode == 2 and "more than the 2 ranks" in r.stderr
    sortie.run("engine", "stop", "--all")
    wait_for(lambda: not sortie.json("engine", "list"), 30, "the ranks to stop")
    # A compiled engine program after --: its handlers answer calls.
    nbody = os.path.join(os.path.dirname(sortie.bin), "sortie-example-nbody")
    sortie.run("engine", "start", "--count", "1", "--label", "cpu", "--", nbody, "--dt", "0.01")
    [engine] = wait_for(lambda: sortie.json("engine", "list"), 60, "the compiled engine")
    assert engine["kind"] == "cpp" and engine["label"] == "cpu", engine
    sortie.run("engine", "stop", "--all")


@pytest.mark.timeout(300)
def test_losing_a_node_ends_the_mpi_engines_and_restart_brings_them_back(sortie, netns, label,
                                                                         tmp_path):
    sortie.start()
    pid = cluster_pilot(sortie, netns, label, slots=1)
    script = tmp_path / "lose.py"
    script.write_text(f"""
import os, sys, time
import sortie
client = sortie.Client(start=False)
view = client.start_engines(2, mpi=True, ranks_per_node=1, label={label!r}, restart=True,
                            env=dict(e.split("=", 1) for e in {NETNS_MPI!r}), timeout=120)
print("HOSTS", *view.apply(lambda: __import__("socket").gethostname()), flush=True)
print("LINKS", *[e.link for e in client.engine_info()], flush=True)

def wait_for_ever():
    while True:
        time.sleep(0.05)

for f in view.apply_async(wait_for_ever).futures:
    try:
        f.result(timeout=120)
    except sortie.EngineLost as e:
        print("LOST", e, flush=True)
while True:  # until the job is back, whole, with new engines
    try:
        print("BACK", view.apply(lambda: sortie.engine.rank), flush=True)
        break
    except sortie.SortieError as e:
        assert "not running" in str(e), e
        time.sleep(0.1)
""")
    env = dict(sortie.env, PYTHONPATH=str(BUILD / "python"), SORTIE_EXE=sortie.bin)
    p = subprocess.Popen([PYTHON, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("HOSTS "), line
        address = {"sx-login": "10.201.0.129", "sx-compute": "10.201.0.130"}
        head, other = [address[h] for h in line.split()[1:]]
        assert head != other
        # Ranks across nodes reach the hub through their agents (05-tasks.md §5.9).
        assert p.stdout.readline() == "LINKS agent agent\n"
        # Cut the other node's ssh link while both ranks run a task: the node is lost.
        ssh = processes_where(lambda args: args[0] == b"ssh" and
                              f"root@{other}".encode() in args and label.encode() in args[-2])
        assert len(ssh) == 1
        os.kill(ssh[0], signal.SIGKILL)
        lost = [p.stdout.readline() for _ in range(2)]
        assert all(x.startswith("LOST ") and "EngineLost" in x for x in lost), lost
        # The job waits for two nodes again: a new pilot has them, and the ranks come back.
        sortie.run("pilot", "cancel", pid)
        wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to end")
        pid = run_pilot(sortie, "cluster", "--slots-per-node", "1", "--label", label)
        assert p.stdout.readline() == "BACK [0, 1]\n"
        assert p.wait(timeout=60) == 0
    finally:
        p.kill()
        p.wait()
    sortie.run("engine", "stop", "--all")
    sortie.run("pilot", "cancel", pid)


# ---------------------------------------------------------------------------------------------
# AMUSE: compiled workers by label, behind a gateway

@pytest.mark.timeout(240)
def test_amuse_workers_land_by_label_behind_a_gateway(sortie, netns):
    sortie.start()
    out = run_example(sortie, "amuse_workers.py", "--login", "root@10.201.0.11", "--cluster",
                      "root@10.201.0.130", *[f"--ssh-option={o}" for o in netns])
    lines = out.splitlines()
    assert "pilot 1 on local label CPU: running, nodes 1/1, slots used 0/1" in lines, out
    assert "pilot 2 on gpu-cluster label GPU: running, nodes 1/1, slots used 0/1" in lines, out
    # Hermite on this machine's CPU pilot, Bonsai on the GPU node behind the login node.
    assert "worker hermite (engine 1, job 1) on local-1-1 label CPU: idle, 0 calls done" in lines
    assert "worker bonsai (engine 2, job 2) on 10.201.0.130 label GPU: idle, 0 calls done" in lines
    [late] = [line for line in lines if line.startswith("a second CPU worker: ")]
    assert "timed_out" in late and "queue timeout of 2s" in late and "label 'CPU'" in late and \
        "the most free slots on one now is 0 (of 1)" in late, late
    errors = {line.split(":")[0]: float(line.rsplit(" ", 1)[1]) for line in lines
              if "relative energy error" in line}
    assert set(errors) == {"hermite", "bonsai"} and all(e < 1e-6 for e in errors.values()), out
    assert "hermite: t = 1.00," in out and "bonsai: t = 1.00," in out
    assert "worker hermite (engine 1, job 1) on local-1-1 label CPU: idle, 4 calls done" in lines
    assert "pilot 2 on gpu-cluster label GPU: running, nodes 1/1, slots used 1/1" in lines
    # The workers were stopped; their jobs ended cancelled.
    wait_for(lambda: not sortie.json("engine", "list"), 30, "the workers to stop")
    assert {sortie.job(j)["state"] for j in (1, 2)} == {"cancelled"}


# ---------------------------------------------------------------------------------------------
# epyc: submit, exit, collect from a shadow profile

@pytest.mark.timeout(240)
def test_epyc_lab_submits_and_exits_and_a_shadow_profile_collects(sortie, sshd, tmp_path):
    sortie.start()
    notebook = tmp_path / "lab.json"
    out = run_example(sortie, "epyc_lab.py", "--engines", "root@127.0.0.1:2222=2",
                      "root@127.0.0.1:2223=1", *[f"--ssh-option={o}" for o in sshd],
                      "--notebook", notebook)
    assert out.splitlines() == ["3 engines on 2 hosts",
                                f"200 experiments submitted; their ids are in {notebook}"]
    # One pilot per host, its slots the host's count, full of engines.
    assert sorted((p["slots_used"], p["slots_total"]) for p in sortie.json("pilot", "list")) == \
        [(1, 1), (2, 2)]
    # Another profile directory holding a copy of hub.json, as epyc's shadow profile.
    shadow = tmp_path / "elsewhere"
    (shadow / "lab").mkdir(parents=True)
    shutil.copy(sortie.home / "default" / "hub.json", shadow / "lab" / "hub.json")
    out = run_example(sortie, "epyc_collect.py", "--profile", "lab", "--notebook", notebook,
                      env={"SORTIE_HOME": str(shadow)})
    host = socket.gethostname()  # both test sshds run on this host
    assert out.splitlines() == [f"collected 200 results from 1 hosts ({host}: 200)",
                                "pi = 3.14"], out
    done = json.loads(notebook.read_text())
    assert len(done["results"]) == 200 and done["pending"] == []
    sortie.run("engine", "stop", "--all")


# ---------------------------------------------------------------------------------------------
# LOFAR: a map file, one job per file on its host

@pytest.mark.timeout(240)
def test_lofar_fanout_runs_each_file_on_its_host_and_raises_the_error_flag(sortie, netns, label,
                                                                           tmp_path):
    sortie.start()
    pid = cluster_pilot(sortie, netns, label, slots=4)
    data = tmp_path / "data"
    data.mkdir()
    files = {"10.201.0.129": [data / f"L1_SB{i:03d}.MS" for i in range(5)],
             "10.201.0.130": [data / f"L1_SB{i:03d}.MS" for i in range(5, 10)]}
    for f in sum(files.values(), []):
        f.write_bytes(b"x" * 1000)
    missing = data / "L1_SB010.MS"  # on the map, not on the disk: its job fails
    mapfile = tmp_path / "data.map"
    mapfile.write_text("# node = [its files]\n" + "".join(
        f"{node} = [{', '.join(map(str, fs + ([missing] if node.endswith('130') else [])))}]\n"
        for node, fs in files.items()))
    # It exits 1: the pipeline's error flag.
    log = run_example(sortie, "lofar_fanout.py", mapfile, "--label", label, "--max-per-node", 2,
                      status=1)
    assert "lofar.pipeline INFO 11 jobs submitted" in log, log
    hostname = {"10.201.0.129": "sx-login", "10.201.0.130": "sx-compute"}
    for node, fs in files.items():
        for f in fs:
            assert f"on {node}: {hostname[node]}: {f}: 1000 bytes calibrated" in log, log
        assert f"node {node} ran at most 2 jobs at once" in log, log
    assert "lofar.pipeline ERROR job 11 on 10.201.0.130 failed: exit code 1" in log, log
    assert "FileNotFoundError" in log and "lofar.pipeline INFO error flag: True" in log, log
    sortie.run("pilot", "cancel", pid)


# ---------------------------------------------------------------------------------------------
# dask + ssh: a notebook session on a shared machine

@pytest.mark.timeout(180)
def test_notebook_session_connects_or_starts_and_keeps_engines_between_runs(sortie):
    first = run_example(sortie, "notebook_session.py").splitlines()
    assert first[0] == "2 engines: [1, 2]" and first[1] == "200 experiments, mean distance 25.3"
    assert first[2].startswith("timeout: TaskTimeout: ran longer than its timeout of 1s")
    assert first[3].startswith("memory cap: EngineLost: ") and "300 MiB of memory" in first[3]
    assert first[4] == "the other engines work on: simulate(7) = 22"
    # The second run finds the hub and the pilot, and the engines (one restarted after its cap).
    second = run_example(sortie, "notebook_session.py").splitlines()
    assert second[0].startswith("2 engines: ") and second[1:2] == first[1:2], second
    assert len(sortie.json("pilot", "list")) == 1
