"""What `perf` measures and for how long: the cases (backbone at a resolution) and the settings of
every measurement, checked before minutes of measuring."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bench.budget import REPORTS
from bench.models.backbones import get_backbone
from bench.registry import UserError
from bench.run_config import PRECISIONS

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
# The article's example (../shared/seed): batch 100, SGD lr 0.001 momentum 0.9, two workers.
ARTICLE_BATCH = 100
ARTICLE_WORKERS = 2
FORWARD_BATCHES = (128, 256, 512, 1024)  # batches tried for the forward-only ceiling


@dataclass(frozen=True)
class PerfCase:
    """A backbone at an input resolution: what one block of measurements is about."""

    backbone: str
    resolution: int

    @property
    def name(self) -> str:
        """ "backbone@pixels", as --cases spells it and perf.csv's `case` column holds it."""
        return f"{self.backbone}@{self.resolution}"


DEFAULT_CASES = (PerfCase("resnet18", 32), PerfCase("efficientnet_lite0", 32), PerfCase("efficientnet_lite0", 64))


def parse_cases(text: str) -> list[PerfCase]:
    """'resnet18@32,efficientnet_lite0@64' -> cases; the backbone names are checked now."""
    cases = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, res = item.partition("@")
        if not res.isdigit() or not 8 <= int(res) <= 1024:
            raise UserError(f"case '{item}' is not BACKBONE@PIXELS (e.g. resnet18@32, pixels in 8..1024)")
        get_backbone(name)  # UserError with suggestions for an unknown name
        cases.append(PerfCase(name, int(res)))
    if not cases:
        raise UserError("no case given; e.g. --cases resnet18@32,efficientnet_lite0@64")
    return cases


@dataclass
class PerfSettings:
    """How long each measurement runs. `quick` is a smoke run: the ratios are rough."""

    batch_size: int = 256
    steps: int = 12  # timed training steps at most, per ceiling configuration
    warmup: int = 3
    max_seconds: float = 12.0  # per timed measurement, after warm-up (at least 2 steps)
    interval_steps: int = 4  # (b): steps per history interval (one pass over batch_size x interval_steps images)
    intervals: int = 3  # (b): timed intervals, after one warm-up interval
    article_steps: int = 20
    frozen_fraction: float = 0.01
    # (d): steps of a frozen trial (and of sft-mlp-frozen's probe): what 5 epochs of the 1% cell
    # were at batch 128, so short enough to measure; the protocol's trials are S >= 500 steps,
    # where the cache saves more (its cold cost is one feature pass, whatever S)
    frozen_steps: int = 20
    eval_images: int | None = None  # None: the whole test set
    precision: str = "auto"  # the suite's precision for (b), (d), (e); auto = the run default
    compile: bool | str = False
    workers: int = ARTICLE_WORKERS
    ceiling_precisions: tuple[str, ...] = PRECISIONS
    ceiling_formats: tuple[str, ...] = tuple(FORMATS)
    rounds: int = 5  # alternating rounds of each compared pair (interleave.py); 0: sequential figures only
    per_sync: int = 4  # (a): steps between two device syncs (a pipelined ceiling; 1: a sync after every step)

    def __post_init__(self) -> None:
        if self.batch_size < 2 or self.steps < 2 or self.warmup < 1 or self.article_steps < 2:
            raise UserError("perf needs --batch-size >= 2, --steps >= 2 (warm-up >= 1)")
        if not 0 < self.frozen_fraction <= 1 or self.frozen_steps < 1:
            raise UserError("frozen-trial fraction must be in (0, 1] and steps >= 1")
        if self.interval_steps < 1 or not 1 <= self.intervals < REPORTS:
            # the engine writes REPORTS history rows per fit; one is the warm-up
            raise UserError(f"the suite's loop needs interval steps >= 1 and 1..{REPORTS - 1} timed intervals")
        if self.per_sync < 1:
            raise UserError(f"steps per sync must be >= 1, got {self.per_sync}")
        if self.rounds < 0:
            raise UserError(f"--rounds must be >= 0, got {self.rounds}")
        if not (isinstance(self.max_seconds, int | float) and math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise UserError(f"--max-seconds must be a positive number of seconds, got {self.max_seconds}")

    @classmethod
    def quick(cls, **kw: Any) -> PerfSettings:
        """A smoke run's settings (`--quick`), with any of them overridden by `kw`."""
        quick = dict(
            steps=3,
            warmup=1,
            max_seconds=3.0,
            interval_steps=2,
            intervals=2,
            article_steps=3,
            eval_images=4096,
            rounds=3,
            per_sync=2,
        )
        return cls(**{**quick, **kw})
