#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The AMUSE workflow on sortie (docs/python.md, "AMUSE"): compiled codes as remote workers.

Distributed AMUSE defines resources (the laptop, a cluster behind its login node), starts pilots
on them with labels, waits for the pilots, and then starts its workers (Hermite on a CPU node,
Bonsai on a GPU node) by label and talks to them as if they were local. Here the workers are
sortie's compiled engines: examples/cpp/nbody_engine.cpp, a small N-body integrator with
set_state, evolve, get_state and energy handlers, started twice with different time steps.

    ./examples/amuse_workers.py                       # both pilots on this machine
    ./examples/amuse_workers.py --login alice@login.lisa --cluster alice@gpu12 \\
        [--ssh-option=-i ~/.ssh/lisa] [--engine /opt/sortie/bin/sortie-example-nbody]
"""
import argparse
import math
import os
import random
import struct
import sys

import sortie


def planets(n=8):
    """A star and `n` planets on circular orbits: (mass, x, y, z, vx, vy, vz) for each."""
    rng = random.Random(7)
    bodies = [(1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)]
    for i in range(n):
        r, phase = 1.0 + 0.25 * i, rng.uniform(0, 2 * math.pi)
        v = math.sqrt(1.0 / r)
        bodies.append((1e-4, r * math.cos(phase), r * math.sin(phase), 0.0,
                       -v * math.sin(phase), v * math.cos(phase), 0.0))
    return bodies


def pack(*values):
    return struct.pack(f"<{len(values)}d", *values)


def unpack(data):
    return struct.unpack(f"<{len(data) // 8}d", data)


def show_pilots(client):
    for p in client.pilots():
        print(f"pilot {p.id} on {p.resource} label {p.label}: {p.state}, nodes {p.nodes_up}/"
              f"{p.nodes}, slots used {p.slots_used}/{p.slots_total}")


def show_workers(client, names):
    for e in client.engine_info():
        print(f"worker {names.get(e.id, e.id)} (engine {e.id}, job {e.job}) on {e.node} label "
              f"{e.label}: {e.state}, {e.tasks_done} calls done")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--login", help="the cluster's login node (user@host), its gateway")
    parser.add_argument("--cluster", help="the GPU node behind it (default: this machine)")
    parser.add_argument("--ssh-option", action="append", default=[], dest="ssh_options")
    parser.add_argument("--engine", help="the N-body engine program (default: "
                        "sortie-example-nbody beside the sortie program)")
    args = parser.parse_args()
    engine = args.engine or os.path.join(os.path.dirname(os.environ["SORTIE_EXE"]),
                                         "sortie-example-nbody")

    client = sortie.Client()
    gpu_resource = "local"
    if args.cluster:  # the GPU node, reached through the login node as AMUSE's ssh gateway
        gateway = None
        if args.login:
            client.add_resource("login", type="ssh", location=args.login,
                                ssh_options=args.ssh_options, replace=True)
            gateway = "login"
        client.add_resource("gpu-cluster", type="ssh", location=args.cluster, gateway=gateway,
                            ssh_options=args.ssh_options, replace=True)
        gpu_resource = "gpu-cluster"
    client.add_pilot(resource="local", slots_per_node=1, label="CPU")
    client.add_pilot(resource=gpu_resource, slots_per_node=1, gpus_per_node=1, label="GPU")
    client.wait_for_pilots(timeout=300)
    show_pilots(client)

    # Workers land by label, like AMUSE's Hermite(..., label="CPU") and Bonsai(..., label="GPU").
    hermite = client.start_engines(1, label="CPU", program=[engine, "--dt", "0.001"],
                                   timeout=120)[0]
    bonsai = client.start_engines(1, label="GPU", gpus=1, program=[engine, "--dt", "0.01"],
                                  timeout=120)[0]
    names = {hermite.ids[0]: "hermite", bonsai.ids[0]: "bonsai"}
    show_workers(client, names)

    # The CPU pilot's one slot is taken: a third worker there cannot start, and says why after
    # its queue timeout (AMUSE's worker_queue_timeout).
    try:
        client.start_engines(1, label="CPU", program=[engine], queue_timeout="2s", timeout=120)
    except sortie.SortieError as e:
        print(f"a second CPU worker: {e}")

    state = pack(*[x for body in planets() for x in body])
    workers = {"hermite": hermite, "bonsai": bonsai}
    start = {}
    for name, view in workers.items():
        view.call("set_state", state)
        start[name] = unpack(view.call("energy"))[0]
    # Both evolve at once: the calls run on their own workers.
    running = {name: view.call_async("evolve", pack(1.0)) for name, view in workers.items()}
    for name, view in workers.items():
        (t,) = unpack(running[name].get())
        energy = unpack(view.call("energy"))[0]
        print(f"{name}: t = {t:.2f}, relative energy error {abs(energy / start[name] - 1):.1e}")
    show_workers(client, names)
    show_pilots(client)
    for view in workers.values():
        view.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
