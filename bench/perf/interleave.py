"""Ratios measured in alternation: the two sides of a comparison take turns in one process (A B,
B A, A B, ...), each turn a short measurement, and the ratio is the median of the per-round
ratios, reported with its range.

Why: these machines are shared. Measured minutes apart, a burst of load on one side decides the
ratio (the suite's loop came out at 3.95x and at 0.96x of the ceiling on the same machine, one
busy, one quiet). In alternation both sides see the same load and the same warm state, round by
round, and the spread of the per-round ratios says how much the weather still moved them: a
ratio whose range is wider than SPREAD_LIMIT of its median is flagged, not reported as a result.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

# One short measurement of one side: (images processed, seconds).
Sample = Callable[[], tuple[int, float]]

SPREAD_LIMIT = 0.25  # (max - min) / median of the per-round ratios beyond which a ratio is untrusted


@dataclass(frozen=True)
class Interleaved:
    """One comparison measured in alternation: `num`'s rate over `den`'s, round by round."""

    case: str
    metric: str
    ratios: tuple[float, ...]
    num: str  # what the numerator measured (a path, and how)
    den: str

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def low(self) -> float:
        return min(self.ratios)

    @property
    def high(self) -> float:
        return max(self.ratios)

    @property
    def spread(self) -> float:
        """The range of the per-round ratios relative to their median."""
        return (self.high - self.low) / self.median if self.median > 0 else float("inf")

    @property
    def trusted(self) -> bool:
        return len(self.ratios) >= 3 and self.spread <= SPREAD_LIMIT

    def describe(self) -> str:
        return (
            f"median of {len(self.ratios)} alternating rounds {self.median:.3f} "
            f"(range {self.low:.3f}-{self.high:.3f}, spread {100 * self.spread:.0f}%): {self.num} / {self.den}"
        )


def interleave(num: Sample, den: Sample, rounds: int, warmup: int = 1) -> tuple[float, ...]:
    """Per-round ratios of num's rate over den's. Every round runs both; the order flips each round
    (den num, num den, ...) so a drift in load or temperature during a round favours neither side.
    `warmup` untimed rounds first: both sides' kernels chosen, caches and allocators warm."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for _ in range(warmup):
        den()
        num()
    out = []
    for r in range(rounds):
        if r % 2 == 0:
            d, n = den(), num()
        else:
            n, d = num(), den()
        out.append(_rate(n) / _rate(d))
    return tuple(out)


def _rate(sample: tuple[int, float]) -> float:
    images, seconds = sample
    if seconds <= 0:
        raise ValueError(f"a measurement took {seconds} s")
    return images / seconds
