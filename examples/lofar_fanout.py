#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The LOFAR workflow on sortie (docs/python.md, "LOFAR"): one job per data file, on the host
that holds it, as the LOFAR pipeline's ssh fan-out does from a map file.

The pipeline reads a map file (which node holds which measurement set), runs one step per file
on its node, at most --max-per-node at a time there, sends every job's output to one logger,
and raises its error flag when a job fails. Here the step is a small Python program that reads
its file; a file that is not there fails its job.

    ./examples/lofar_fanout.py data.map --label lofar [--max-per-node 2]

data.map, in the seed's format (each node, then its files):
    locus001 = [/data/L123_SB000.MS, /data/L123_SB001.MS]
    locus002 = [/data/L123_SB002.MS]
"""
import argparse
import collections
import logging
import sys

import sortie

# The step each job runs on its file ("{}" is the file): what NDPPP is in the real pipeline.
STEP = ["/usr/bin/python3", "-c",
        "import socket, sys, time\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "time.sleep(0.3)  # the work\n"
        "print(f'{socket.gethostname()}: {sys.argv[1]}: {len(data)} bytes calibrated')\n",
        "{}"]


def most_at_once(jobs):
    """The most jobs that ran at the same time on each node, from their start and end times."""
    events = collections.defaultdict(list)
    for j in jobs:
        events[j["node"]] += [(j["start_ms"], 1), (j["end_ms"], -1)]
    peak = {}
    for node, evs in events.items():
        running = peak[node] = 0
        for _, step in sorted(evs, key=lambda e: (e[0], e[1])):
            running += step
            peak[node] = max(peak[node], running)
    return peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mapfile")
    parser.add_argument("--label", help="the pilot whose nodes hold the data")
    parser.add_argument("--max-per-node", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        level=logging.INFO, stream=sys.stdout)
    log = logging.getLogger("lofar.pipeline")

    client = sortie.Client()
    jobs = client.submit_map(STEP, args.mapfile, group="calibrate", label=args.label,
                             max_per_node=args.max_per_node)
    log.info("%d jobs submitted from %s", len(jobs), args.mapfile)
    error = False
    for job in jobs:
        job.wait()
        info = job.info()
        state = info["state"]
        for line in job.stdout().splitlines():
            log.info("job %d on %s: %s", job.id, info["node"], line)
        if state != "succeeded":
            error = True  # the pipeline's error flag
            log.error("job %d on %s %s: %s", job.id, info["node"], state, info["reason"])
            for line in job.stderr().splitlines()[-3:]:
                log.error("job %d: %s", job.id, line)
    for node, peak in sorted(most_at_once([j.info() for j in jobs]).items()):
        log.info("node %s ran at most %d jobs at once", node, peak)
    log.info("error flag: %s", error)
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
