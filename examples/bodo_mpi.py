#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The Bodo workflow on sortie (docs/python.md, "Bodo"): MPI engines, functions defined on every
rank, then applied with an MPI reduction across the ranks.

Bodo users start ipyparallel engines with `mpiexec ... python -m ipyparallel.engine --mpi` and
drive them from a notebook. Here one call starts the engines as the ranks of one MPI job (mpiexec
across the nodes of a pilot), and the view of them is in rank order.

    ./examples/bodo_mpi.py                     # a local pilot, 4 ranks on this machine
    ./examples/bodo_mpi.py --label cluster --ranks 4 --ranks-per-node 2   # an existing pilot
        [--env OMPI_MCA_btl_tcp_if_include=10.0.0.0/24]   # which network the ranks talk on
"""
import argparse
import sys

import sortie

# Defined on every rank with view.execute, as the seed does with its own source.
CALC_PI = '''
def calc_pi(n):
    """pi by the midpoint rule over n intervals, split across the MPI ranks."""
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    x = (np.arange(comm.Get_rank(), n, comm.Get_size()) + 0.5) / n
    return comm.allreduce(np.sum(4.0 / (1.0 + x * x)) / n)
'''


def hello():
    """The check users run first: every rank says where it is."""
    import socket
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    return (f"Hello World from rank {comm.Get_rank()} on host {socket.gethostname()}. "
            f"total ranks={comm.Get_size()}")


def wrapper(n):
    return calc_pi(n)  # noqa: F821 (defined on the engines by view.execute)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", help="an existing pilot's label (default: a local pilot)")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--ranks-per-node", type=int, default=None)
    parser.add_argument("--intervals", type=int, default=10_000_000)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="for the ranks' environment, e.g. OpenMPI's OMPI_MCA_* settings")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)

    client = sortie.Client()
    label = args.label
    if label is None:
        label = "bodo"
        client.add_pilot(resource="local", slots_per_node=args.ranks, label=label)
        client.wait_for_pilots(timeout=120)
    view = client.start_engines(args.ranks, mpi=True, ranks_per_node=args.ranks_per_node,
                                label=label, env=env, timeout=300)
    try:
        for line in view.apply(hello):
            print(line)
        view.execute("import numpy as np")
        view.execute(CALC_PI)
        pis = view.apply(wrapper, args.intervals)
        assert len(set(pis)) == 1, pis  # every rank has the reduced sum
        print(f"pi = {pis[0]:.6f}")
    finally:
        view.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
