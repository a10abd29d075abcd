"""Side-by-side latency on this machine: several models timed interleaved in one process.

Comparing precisions or INT8 flavours on a shared, noisy machine only means something when
the candidates take turns: each round runs every model a few times, in a rotating order, so
background load hits all of them alike. Medians of all rounds are compared.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from edgec.targets.base import LatencyStats, Runner


def interleaved_latency(
    runners: Mapping[str, Runner],
    feeds: dict[str, np.ndarray],
    seconds: float = 3.0,
    min_rounds: int = 5,
    warmup: int = 3,
) -> dict[str, LatencyStats]:
    """Time every runner on the same feeds, interleaved; ``measured-host`` stats per name.

    Args:
        runners: The models to compare, by name.
        feeds: One input feed used for all of them.
        seconds: Total time to spend after warm-up (at least ``min_rounds`` rounds run).
        min_rounds: Fewest rounds.
        warmup: Untimed runs of each runner first.
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name].run(feeds)
    # Size a round to ~1/20 of the budget so even slow models get several rounds.
    per_run = {}
    for name in names:
        t0 = time.perf_counter()
        runners[name].run(feeds)
        per_run[name] = time.perf_counter() - t0
    round_cost = max(sum(per_run.values()), 1e-6)
    repeats = int(max(1, min(50, (seconds / 20) / round_cost)))
    samples: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - started < seconds:
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for name in order:
            runner = runners[name]
            for _ in range(repeats):
                t0 = time.perf_counter()
                runner.run(feeds)
                samples[name].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
    return {
        name: LatencyStats.from_samples(np.asarray(values), "measured-host")
        for name, values in samples.items()
    }
