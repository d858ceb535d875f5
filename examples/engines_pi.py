#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""sortie's Python quick start (the README's example, and the second part of scripts/demo.sh):
two engines on a local pilot estimate pi from 40 tasks."""
import random

import sortie


def estimate(samples):
    inside = sum(random.random() ** 2 + random.random() ** 2 <= 1 for _ in range(samples))
    return inside, samples


with sortie.Client() as client:                   # this profile's hub, started if none runs
    client.add_pilot(resource="local", slots_per_node=2, label="py")
    client.wait_for_pilots(timeout=120)
    view = client.start_engines(2, label="py")     # long-lived Python workers
    view.push({"greeting": "hello"})               # engine state lives between calls
    assert view.apply(lambda: greeting) == ["hello", "hello"]
    futures = client.map(estimate, [100_000] * 40, label="py")
    inside = total = 0
    for future in sortie.as_completed(futures):
        i, n = future.result()
        inside, total = inside + i, total + n
    print(f"pi is about {4 * inside / total:.4f} ({total} samples in 40 tasks on "
          f"{len(view)} engines)")
    view.stop()
