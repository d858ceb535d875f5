#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The epyc workflow on sortie (docs/python.md, "epyc"), part 2: collect the results that
examples/epyc_lab.py left pending, from any process, later, on any machine that has a copy of
the hub's connection file (epyc's "shadow profile"):

    mkdir -p ~/.sortie/lab && scp cluster:.sortie/default/hub.json ~/.sortie/lab/
    ./examples/epyc_collect.py --profile lab --notebook lab.json
"""
import argparse
import collections
import json
import statistics
import sys

import sortie


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None, help="the profile holding the hub.json copy")
    parser.add_argument("--notebook", required=True)
    args = parser.parse_args()
    with open(args.notebook) as f:
        notebook = json.load(f)

    client = sortie.Client(profile=args.profile, start=False)  # connect only: never a new hub
    results = client.gather(client.futures(notebook["pending"]))
    hosts = collections.Counter(r["metadata"]["host"] for r in results)
    assert [r["parameters"] for r in results] == notebook["points"]
    notebook["results"], notebook["pending"] = results, []
    with open(args.notebook, "w") as f:
        json.dump(notebook, f)
    pis = [r["results"]["pi"] for r in results]
    print(f"collected {len(results)} results from {len(hosts)} hosts "
          f"({', '.join(f'{h}: {n}' for h, n in sorted(hosts.items()))})")
    print(f"pi = {statistics.mean(pis):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
