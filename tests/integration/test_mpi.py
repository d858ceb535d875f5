# SPDX-License-Identifier: Apache-2.0
"""MPI jobs with Debian's OpenMPI: `sortie submit --mpi N` starts mpiexec over a hostfile of the
slots the job was given."""
import os
import socket
import subprocess

import pytest

from conftest import ROOT


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
    r = sortie.run("submit", "--mpi", "4", "--ranks-per-node", "2", "--", str(mpi_hello),
                   check=False)
    assert r.returncode == 2 and "MPI jobs across nodes are not supported yet" in r.stderr
