# SPDX-License-Identifier: Apache-2.0
"""MPI jobs with Debian's OpenMPI: `sortie submit --mpi N` starts mpiexec over a hostfile of the
slots the job was given."""
import os
import signal
import socket
import subprocess

import pytest

from conftest import ROOT, alive, wait_for
# The ssh test beds' fixtures (sshd on loopback, the network-namespace hosts) and helpers.
from test_resources import (add_ssh_resource, batch_job_state, label, netns, pilot,  # noqa: F401
                            processes_where, processes_with_arg, run_pilot, slurm, sshd)


@pytest.fixture(scope="session")
def mpi_hello(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / "mpi_hello"
    subprocess.run(["mpicxx", "-std=c++20", "-O1", "-o", str(out),
                    str(ROOT / "tests" / "integration" / "data" / "mpi_hello.cpp")],
                   check=True, timeout=120)
    return out


def test_a_four_rank_job_reports_ranks_0_to_3_and_their_host(sortie, mpi_hello):
    sortie.start()
    sortie.add_pilot("--slots", "4")
    job = sortie.submit(str(mpi_hello), opts=["--mpi", "4"])
    sortie.run("job", "wait", job, timeout=120)
    lines = sortie.run("job", "logs", job).stdout.splitlines()
    host = socket.gethostname()
    assert sorted(line for line in lines if line.startswith("rank")) == \
        [f"rank {r} of 4 on {host}" for r in range(4)]
    assert "sum of ranks 6" in lines
    shown = sortie.job(job)
    assert shown["state"] == "succeeded" and shown["spec"]["mpi_ranks"] == 4


def test_the_job_sees_its_rank_layout(sortie):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    job = sortie.submit("sh", "-c", 'echo "$SORTIE_MPI_RANKS $SORTIE_MPI_LAYOUT"; '
                        'cat "$SORTIE_MPI_HOSTFILE"; echo "file $SORTIE_MPI_HOSTFILE"',
                        opts=["--mpi", "2"])
    sortie.run("job", "wait", job, timeout=60)
    out = sortie.run("job", "logs", job).stdout.splitlines()
    host = socket.gethostname()
    # mpiexec runs the command once per rank.
    assert out.count(f"2 {host}:2") == 2 and out.count(f"{host} slots=2") == 2
    # The hostfile it ran with is gone with it.
    hostfile = next(line for line in out if line.startswith("file ")).split(" ", 1)[1]
    assert hostfile.startswith("/tmp/sortie-mpi-") and not os.path.exists(hostfile)


def test_mpi_jobs_hold_a_slot_per_rank(sortie, mpi_hello):
    sortie.start()
    sortie.add_pilot("--slots", "2")
    # Four ranks do not fit a 2-slot node: the job waits (and here times out).
    job = sortie.submit(str(mpi_hello), opts=["--mpi", "4", "--queue-timeout", "1s"])
    sortie.run("job", "wait", job, check=False)
    assert sortie.job(job)["state"] == "timed_out"
    r = sortie.run("submit", "--ranks-per-node", "2", "--", str(mpi_hello), check=False)
    assert r.returncode == 2 and "give the number of ranks with --mpi N" in r.stderr
    r = sortie.run("submit", "--mpi", "4", "--ranks-per-node", "2", "--memory", "1G", "--",
                   str(mpi_hello), check=False)
    assert r.returncode == 2 and "cannot ask for memory, GPUs or a max per node" in r.stderr


# ---------------------------------------------------------------------------------------------
# Across nodes: the two network-namespace hosts of scripts/testbeds/netns.sh, each with its own
# host name. sx-login reaches sx-compute on 10.201.0.128/25 (this machine reaches only sx-login).

def cluster_pilot(sortie, netns, label, *extra):
    """An ssh pilot with one 2-slot node on each host, named by the addresses they reach each
    other at (mpiexec on one starts the ranks on the other over ssh)."""
    add_ssh_resource(sortie, "login", "root@10.201.0.11", netns)
    add_ssh_resource(sortie, "cluster", "root@10.201.0.129,root@10.201.0.130", netns,
                     "--gateway", "login")
    pid = run_pilot(sortie, "cluster", "--slots-per-node", "2", "--label", label, *extra)
    return pid


def mpi_opts(netns, label, *extra):
    # mpiexec's own ssh to the other node takes the resource's ssh options (the test beds' keys,
    # -F FILE) from the pilot: nothing to repeat here. sx-login has two networks and sx-compute
    # reaches only one: OpenMPI is told which (without it, ranks on sx-compute wait for ever on
    # the other address).
    net = "10.201.0.128/25"
    return ["--label", label, "--env", f"OMPI_MCA_btl_tcp_if_include={net}",
            "--env", f"OMPI_MCA_oob_tcp_if_include={net}", *extra]


def test_an_mpi_job_across_two_hosts_reports_ranks_0_to_3_on_both(sortie, netns, label,
                                                                    mpi_hello):
    sortie.start()
    pid = cluster_pilot(sortie, netns, label)
    job = sortie.submit(str(mpi_hello), opts=mpi_opts(netns, label, "--mpi", "4",
                                                       "--ranks-per-node", "2"))
    sortie.run("job", "wait", job, timeout=120)
    lines = sortie.run("job", "logs", job).stdout.splitlines()
    ranks = sorted(line for line in lines if line.startswith("rank"))
    assert [r.split(" on ")[0] for r in ranks] == [f"rank {r} of 4" for r in range(4)], lines
    hosts = [r.split(" on ")[1] for r in ranks]
    # Two ranks on each host: the first two on the node that ran mpiexec.
    assert hosts[0] == hosts[1] and hosts[2] == hosts[3]
    assert set(hosts) == {"sx-login", "sx-compute"}
    assert "sum of ranks 6" in lines
    shown = sortie.job(job)
    assert shown["state"] == "succeeded"
    assert shown["node"] == {"sx-login": "10.201.0.129", "sx-compute": "10.201.0.130"}[hosts[0]]
    # The rank layout reaches the ranks on the other host too.
    job = sortie.submit("sh", "-c", 'echo "$SORTIE_MPI_RANKS $SORTIE_MPI_LAYOUT $(hostname)"',
                        opts=mpi_opts(netns, label, "--mpi", "4", "--ranks-per-node", "2"))
    sortie.run("job", "wait", job, timeout=120)
    out = sortie.run("job", "logs", job).stdout.splitlines()
    assert len(out) == 4 and {line.split()[2] for line in out} == {"sx-login", "sx-compute"}
    layouts = {line.split()[1] for line in out}
    assert layouts in ({"10.201.0.129:2,10.201.0.130:2"}, {"10.201.0.130:2,10.201.0.129:2"})
    assert {line.split()[0] for line in out} == {"4"}
    sortie.run("pilot", "cancel", pid)


def test_an_mpi_job_across_nodes_waits_for_both_and_holds_them(sortie, netns, label, mpi_hello):
    sortie.start()
    pid = cluster_pilot(sortie, netns, label)
    # One slot taken on one node: the 2-per-node job cannot start, and the free slot is held for
    # it (a small job submitted after it does not take it).
    blocker = sortie.submit("sleep", "600", opts=["--label", label])
    sortie.wait_state(blocker, "running", timeout=60)
    mpi = sortie.submit(str(mpi_hello), opts=mpi_opts(netns, label, "--mpi", "4",
                                                       "--ranks-per-node", "2"))
    small = sortie.submit("true", opts=["--label", label])
    wait_for(lambda: sortie.job(mpi)["state"] == "queued" and
             sortie.job(small)["state"] == "queued", 10, "both to wait")
    sortie.run("job", "cancel", blocker)
    sortie.run("job", "wait", mpi, timeout=120)
    assert sortie.job(mpi)["state"] == "succeeded"
    sortie.run("job", "wait", small, timeout=60)
    sortie.run("pilot", "cancel", pid)


def test_losing_one_node_of_an_mpi_job_kills_it_and_runs_it_again(sortie, netns, label,
                                                                  tmp_path):
    sortie.start()
    pid = cluster_pilot(sortie, netns, label)
    marker = tmp_path / "started"
    # The first attempt waits; the second (after the loss) finishes at once.
    script = (f'if [ "$SORTIE_ATTEMPT" = 1 ]; then touch {marker}; sleep 600; fi; echo done')
    job = sortie.submit("sh", "-c", script,
                        opts=mpi_opts(netns, label, "--mpi", "2", "--ranks-per-node", "1"))
    wait_for(marker.exists, 60, "the first attempt to start")
    shown = sortie.job(job)
    leader = shown["node"]
    other = next(n for n in ("10.201.0.129", "10.201.0.130") if n != leader)
    assert shown["nodes"] == [leader, other]  # the node that runs mpiexec first
    # Cut the other node's ssh link: its agent is gone for the hub.
    
    ssh = [p for p in processes_where(lambda args: args[0] == b"ssh" and
                                      f"root@{other}".encode() in args and
                                      label.encode() in args[-2])]
    assert len(ssh) == 1
    os.kill(ssh[0], signal.SIGKILL)
    wait_for(lambda: any(h["state"] == "lost" for h in sortie.job(job)["history"]), 60,
             "the job to be lost")
    shown = sortie.job(job)
    assert shown["state"] == "queued", shown
    assert f"node {other} of this MPI job was lost" in shown["reason"], shown
    # Its ranks on both hosts were killed.
    wait_for(lambda: not processes_with_arg(script), 30, "the first attempt's ranks to end")
    # It waits for two nodes of one pilot again, and runs on a new pilot's.
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: pilot(sortie, pid)["state"] == "cancelled", 30, "the pilot to end")
    pid = int(sortie.run("pilot", "add", "--resource", "cluster", "--slots-per-node", "2",
                         "--label", label).stdout)
    sortie.run("job", "wait", job, timeout=120)
    assert sortie.job(job)["state"] == "succeeded"
    assert sortie.run("job", "logs", job).stdout.split() == ["done", "done"]
    sortie.run("pilot", "cancel", pid)


def test_a_hub_restart_runs_an_mpi_job_across_nodes_again(sortie, tmp_path):
    """The store does not keep which other nodes an MPI job held, so a restarted hub runs it
    again, but only once the first attempt is killed (when its node reconnects). (Two local
    agents on one host: their hostfile line adds up their ranks.)"""
    sortie.start()
    sortie.add_pilot("--nodes", "2", "--slots-per-node", "2")
    marker = tmp_path / "attempts"
    pids, overlap = tmp_path / "pids", tmp_path / "overlap"
    # Attempt 1's ranks note their pids and sleep; attempt 2's ranks note any of them still alive.
    script = f'echo "$SORTIE_ATTEMPT $SORTIE_MPI_LAYOUT" >> {marker}; ' \
             f'if [ "$SORTIE_ATTEMPT" = 1 ]; then echo $$ >> {pids}; exec sleep 600; fi; ' \
             f'for p in $(cat {pids}); do kill -0 $p 2>/dev/null && echo $p >> {overlap}; done; true'
    job = sortie.submit("sh", "-c", script, opts=["--mpi", "4", "--ranks-per-node", "2"])
    wait_for(lambda: marker.exists() and len(marker.read_text().splitlines()) == 4, 60,
             "the first attempt's four ranks")
    host = socket.gethostname()
    assert set(marker.read_text().splitlines()) == {f"1 {host}:4"}
    pid = sortie.hub_pid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the hub to die")
    sortie.start()
    sortie.run("job", "wait", job, timeout=120)
    shown = sortie.job(job)
    assert shown["state"] == "succeeded" and shown["attempt"] == 2
    lost = [h for h in shown["history"] if h["state"] == "lost"]
    assert len(lost) == 1
    assert marker.read_text().splitlines().count(f"2 {host}:4") == 4
    # Never two live copies: attempt 2 started after every rank of attempt 1 had ended.
    assert not overlap.exists(), overlap.read_text()
    wait_for(lambda: not processes_with_arg(script), 30, "the first attempt's ranks to end")


def test_an_mpi_job_across_the_nodes_of_a_slurm_pilot(sortie, slurm, mpi_hello):
    """mpiexec on the first node starts the ranks on the other through srun. The test bed's two
    Slurm nodes are one host: OpenMPI, taking them for two, would put shared memory between
    ranks on "different" hosts, so the test keeps it to TCP (not needed on a real cluster)."""
    sortie.start()
    sortie.run("resource", "add", "cluster", "--type", "slurm")
    pid = run_pilot(sortie, "cluster", "--nodes", "2", "--slots-per-node", "2", timeout="90s")
    opts = ["--mpi", "4", "--ranks-per-node", "2", "--env", "OMPI_MCA_btl=self,tcp"]
    job = sortie.submit(str(mpi_hello), opts=opts)
    sortie.run("job", "wait", job, timeout=120)
    lines = sortie.run("job", "logs", job).stdout.splitlines()
    assert sorted(line.split(" on ")[0] for line in lines if line.startswith("rank")) == \
        [f"rank {r} of 4" for r in range(4)]
    assert "sum of ranks 6" in lines
    job = sortie.submit("sh", "-c", 'echo "$SORTIE_MPI_LAYOUT $SLURMD_NODENAME"', opts=opts)
    sortie.run("job", "wait", job, timeout=120)
    out = sortie.run("job", "logs", job).stdout.splitlines()
    assert {line.split()[0] for line in out} <= {"n1:2,n2:2", "n2:2,n1:2"}
    assert sorted(line.split()[1] for line in out) == ["n1", "n1", "n2", "n2"]
    batch_id = pilot(sortie, pid)["batch_id"]
    sortie.run("pilot", "cancel", pid)
    wait_for(lambda: batch_job_state("slurm", batch_id) == "", 60, "the batch job to end")
