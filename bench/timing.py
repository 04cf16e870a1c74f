"""The one timer of the suite's speed measurements: `perf` (bench/perf/measure.py) and the sweep's projection
(bench/sweep/rates.py) time work the same way, so a rate one reports means what the other's means.

Why here, at the top: both packages use it and neither may import the other's (perf reads the sweep's
experiments and storages already), and it needs nothing but the device's sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.train.device import sync


def timed(
    step: Callable[[], None], device: torch.device, warmup: int, steps: int, max_seconds: float, per_sync: int = 1
) -> list[tuple[int, float]]:
    """(calls, seconds) of each timed group: `warmup` untimed calls, then groups of `per_sync` calls with
    one device sync at the end of each, up to `steps` calls or `max_seconds`.

    Why groups: a sync after every call times the device's work plus the launch of the next call (the
    queue runs dry at every sync), which is not what a pipelined loop pays; k calls between two syncs
    let the host queue ahead as the training loop does (on a CPU the sync is a no-op: the same figures)."""
    for _ in range(warmup):
        step()
    sync(device)
    out: list[tuple[int, float]] = []
    done = 0
    while done < steps:
        k = min(per_sync, steps - done)
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        sync(device)
        out.append((k, time.perf_counter() - t0))
        done += k
        if len(out) >= 2 and sum(t for _, t in out) > max_seconds:
            break
    return out
