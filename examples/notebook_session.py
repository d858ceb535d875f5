#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The dask + ssh workflow on sortie (docs/python.md, "dask"): a notebook session on a shared
machine, cell by cell.

A dask user starts a scheduler and workers in tmux on the shared machine, tunnels to them, and
runs map/gather from a notebook; a runaway task can take the machine from colleagues. Here the
first cell connects to the profile's hub or starts it, engines run with a memory cap (one that
goes over it is killed alone, and comes back), and calls take per-task timeouts. Run it twice:
the second run finds the hub and the engines of the first. (Reaching a remote machine's hub
from a laptop is the port-forwarding issue.)

    ./examples/notebook_session.py [--engines 2] [--memory 300M]
"""
import argparse
import sys
import time

import sortie


def simulate(seed):
    """An experiment: a small random walk, its final distance."""
    import random
    rng = random.Random(seed)
    x = 0
    for _ in range(1000):
        x += rng.choice((-1, 1))
    return abs(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=int, default=2)
    parser.add_argument("--memory", default="300M", help="each engine's memory cap")
    args = parser.parse_args()

    # In [1]: connect to the profile's hub, or start it (and a pilot on this machine).
    client = sortie.Client()
    if not [p for p in client.pilots() if p.label == "notebook" and p.state == "running"]:
        client.add_pilot(resource="local", slots_per_node=args.engines, label="notebook")
        client.wait_for_pilots(timeout=60)

    # In [2]: engines with a memory cap, kept between sessions (restart: they come back).
    view = client.engines(label="notebook")
    if len(view) < args.engines:
        view = client.start_engines(args.engines - len(view), label="notebook",
                                    memory=args.memory, restart=True, timeout=60)
        view = client.engines(label="notebook")
    print(f"{len(view)} engines: {view.ids}")

    # In [3]: map and gather, as with dask's client.
    futures = client.map(simulate, range(200), label="notebook")
    results = client.gather(futures)
    print(f"200 experiments, mean distance {sum(results) / len(results):.1f}")

    # In [4]: a call that runs too long fails alone, with its timeout.
    slow = client.submit(time.sleep, 30, label="notebook", timeout=1)
    try:
        slow.result()
    except sortie.TaskTimeout as e:
        print(f"timeout: {e.type_name}: {e.message}")  # e.traceback: where it was stopped

    # In [5]: a call that eats memory: its engine is killed at its cap, not the machine.
    def hog():
        block = bytearray(2 << 30)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return len(block)

    try:
        client.submit(hog, label="notebook").result()
    except sortie.EngineLost as e:
        print(f"memory cap: {e}")
    print(f"the other engines work on: simulate(7) = "
          f"{client.submit(simulate, 7, label='notebook').result()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
