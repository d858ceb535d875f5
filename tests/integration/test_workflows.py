# SPDX-License-Identifier: Apache-2.0
"""The five workflows sortie replaces, as the examples in examples/ run them (docs/python.md links
each from its workflow): each example is run as a user runs it, against the real test beds, and
its output checked. Also the MPI engines the Bodo workflow stands on."""
import os
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


def run_example(sortie, name, *args, timeout=200, cwd=None):
    """Runs examples/NAME as a user would (Debian's python3, the build's package); its stdout."""
    env = dict(sortie.env, PYTHONPATH=str(BUILD / "python"), SORTIE_EXE=sortie.bin)
    p = subprocess.run([PYTHON, str(EXAMPLES / name), *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert p.returncode == 0, f"{name} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
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
