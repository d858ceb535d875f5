#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The epyc workflow on sortie (docs/python.md, "epyc"), part 1: a lab of engines on ssh hosts
runs an experiment at many parameter points, submitted asynchronously; the script then exits.

epyc starts an ipyparallel cluster from a host -> engine count map, submits its experiments to a
ClusterLab and records the pending results in a lab notebook; later, possibly from another
machine with a "shadow profile" (a copy of the cluster's connection file), it collects them.
Here the notebook is a JSON file of task ids, and examples/epyc_collect.py collects.

    ./examples/epyc_lab.py --engines alice@ws1=4 alice@ws2=2 --notebook lab.json
        [--ssh-option=-i ~/.ssh/lab]
"""
import argparse
import json
import sys

import sortie


def experiment(params):
    """One experiment: pi estimated from `samples` random points with this seed, and where it
    ran (epyc's results dict: parameters, results, metadata)."""
    import random
    import socket
    rng = random.Random(params["seed"])
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(params["samples"]))
    return {"parameters": params, "results": {"pi": 4.0 * inside / params["samples"]},
            "metadata": {"host": socket.gethostname()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", nargs="+", required=True, metavar="HOST=N",
                        help="how many engines on each ssh host (epyc's engines map)")
    parser.add_argument("--ssh-option", action="append", default=[], dest="ssh_options")
    parser.add_argument("--notebook", required=True, help="where the pending results go")
    parser.add_argument("--points", type=int, default=200)
    args = parser.parse_args()
    engines = {host: int(n) for host, n in (item.rsplit("=", 1) for item in args.engines)}

    client = sortie.Client()
    for i, (host, n) in enumerate(engines.items()):
        client.add_resource(f"lab{i}", type="ssh", location=host, ssh_options=args.ssh_options,
                            replace=True)
        client.add_pilot(resource=f"lab{i}", slots_per_node=n, label="lab")
    client.wait_for_pilots(timeout=300)
    view = client.start_engines(sum(engines.values()), label="lab", timeout=300)
    print(f"{len(view)} engines on {len(engines)} hosts")

    points = [{"seed": seed, "samples": 20_000} for seed in range(args.points)]
    futures = client.map(experiment, points, label="lab")  # returns at once: nothing waits
    with open(args.notebook, "w") as f:
        json.dump({"pending": [fut.id for fut in futures], "points": points}, f)
    print(f"{len(futures)} experiments submitted; their ids are in {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
