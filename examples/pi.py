# SPDX-License-Identifier: Apache-2.0
"""A sample workload: one Monte Carlo estimate of pi per array index (the seed)."""
import os
import random

seed = int(os.environ.get("SORTIE_ARRAY_INDEX", "0"))
rng = random.Random(seed)
n = 200_000
inside = sum(1 for _ in range(n) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
print(f"{seed} {inside} {n}")
