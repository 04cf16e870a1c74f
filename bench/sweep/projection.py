"""How long a grid will take on this device, from throughputs measured now (`sweep --dry-run`).

Why: protocol v2 gives every cell at least 500 optimiser steps and a search per seed, so
the same grid is minutes on a GPU and days on a laptop. A user should know which before
starting. The projection measures, for each (backbone, resolution, batch) and training settings of the
grid, a few training steps through the suite's own loop (`fit`: the cell's optimiser, groups,
augmentation, BatchNorm policy, precision and compile setting) and a few evaluation batches at
the suite's evaluation batch on this device, then adds up every work item of the grid:

- a trial or final run that trains B: S steps x batch images at the training rate, plus
  its validation reports (trials) or the test set (final runs), plus the probe's features;
  a pooled trial (protocol v3) does this once per pooled seed, a k-fold trial once per fold;
- a frozen row: its images once through the backbone (features), plus evaluation;
  the head's steps on cached features, and the probe's L-BFGS solve, are counted as negligible
  (the probe: seconds at 1% of CIFAR-10 with Lite0, about 20 s at 10%; docs/protocol.md).

It is a projection, printed as such: an upper bound assumes no trial is pruned; the lower
bound assumes every trial the pruner may stop stops at half its budget. Load on a shared
machine moves both.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from bench.budget import REPORTS
from bench.data import label_split, labelled_count
from bench.models.methods import METHODS, HParams
from bench.sweep.experiment import Cell, Experiment

TEST_IMAGES = 10_000


@dataclass(frozen=True)
class Rates:
    """Images per second on this device for one (backbone, resolution, batch) under a cell's settings."""

    backbone: str
    resolution: int
    batch_size: int
    train: float  # training images/s (the suite's step loop, end to end; nan: not measured, a frozen row)
    forward: float  # evaluation / feature images/s


@dataclass(frozen=True)
class Projection:
    rates: tuple[Rates, ...]
    upper_seconds: float  # no trial pruned
    lower_seconds: float  # every prunable trial stopped at half its budget
    trials: int
    finals: int
    measure_seconds: float


class _Measured(Exception):
    """Raised from `on_progress` once the timed intervals are in (the rest of the budget measures nothing new)."""


INTERVAL_STEPS = 2  # steps per history interval of the measurement
INTERVALS = 2  # timed intervals, after one that warms up (kernel selection, allocator)


def measure_rates(
    backbone: str,
    resolution: int,
    hp: HParams,
    device: torch.device,
    precision: str,
    *,
    compile: bool | str = False,
    train: bool = True,
) -> Rates:
    """The cell's training rate through the suite's own loop (`fit`, end to end: the cell's optimiser,
    fused where torch has one, its learning-rate groups, augmentation, clipping, BatchNorm policy,
    precision and compile setting, on uint8 batches gathered on the device), timed over history
    intervals after a warm-up one (compiling is apart: bench/train/compiling.py); and the evaluation
    rate of `encode_all` at the suite's evaluation batch for the resolution. `train=False` (a frozen
    row, which trains only heads on cached features): the forward rate only."""
    from bench.train.engine import encode_all, eval_batch, fit
    from bench.train.run import RunConfig, build_model

    steps = REPORTS * INTERVAL_STEPS
    hp = hp.update(steps=steps, backbone_lr_mult=hp.backbone_lr_mult or 1.0)
    cfg = RunConfig(backbone, "finetune", 1.0, 0, hp=hp, resolution=resolution, pretrained=False, precision=precision)
    net = build_model(cfg, 10).to(device).to(memory_format=torch.channels_last)  # weights do not change the speed
    gen = torch.Generator(device=device).manual_seed(0)
    n = hp.batch_size * INTERVAL_STEPS
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)
    y = torch.randint(0, 10, (n,), generator=gen, device=device)
    rate = float("nan")
    if train:
        ends: list[float] = []

        def progress(row: dict) -> None:
            ends.append(time.perf_counter())  # the loop has synced the device by then
            if len(ends) > INTERVALS:
                raise _Measured

        try:
            fit(net, METHODS.get("finetune"), hp, x, y, seed=0, precision=precision, on_progress=progress, compile=compile)
        except _Measured:
            pass
        rate = n / statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))
    ev = eval_batch(device, resolution)
    xe = torch.randint(0, 256, (ev, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)

    def forward() -> float:
        t0 = time.perf_counter()
        encode_all(net, xe, precision)  # its last read syncs the device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    fwd = ev / statistics.median(_timed(forward))
    return Rates(backbone, resolution, hp.batch_size, rate, fwd)


def _timed(fn: object, warmup: int = 2, at_least: int = 3, seconds: float = 2.0) -> list[float]:
    for _ in range(warmup):
        fn()  # type: ignore[operator]
    times: list[float] = []
    t0 = time.perf_counter()
    while len(times) < at_least or (time.perf_counter() - t0 < seconds and len(times) < 20):
        times.append(fn())  # type: ignore[operator]
    return times


def project(exp: Experiment, sweep: object, device: torch.device) -> Projection:
    """Measure the grid's (backbone, resolution, batch) combinations, then add up its work items.

    `sweep`: a read-only `bench.sweep.Sweep` of the experiment (its `config` resolves every
    cell's step budget, resolution and batch size exactly as the real runs will)."""
    t_measure = time.perf_counter()
    rates: dict[tuple, Rates] = {}
    upper = lower = 0.0
    n_trials = n_finals = 0
    data = sweep.data  # type: ignore[attr-defined]
    for cell in exp.cells():
        cfg = sweep.config(cell, exp.seeds[0], dict(exp.fixed_hparams(cell.method)), "final")  # type: ignore[attr-defined]
        spec = METHODS.get(cell.method)
        hp = cfg.hp
        # what changes a step's speed: the loop's settings, not the method's head (a few small layers)
        key = (cell.backbone, cfg.resolution, hp.batch_size, cfg.precision, spec.trains_backbone)
        key += (hp.optimizer, hp.bn, hp.augment, hp.grad_clip > 0) if spec.trains_backbone else ()
        if key not in rates:
            kw = dict(compile=exp.compile, train=spec.trains_backbone)
            rates[key] = measure_rates(cell.backbone, cfg.resolution, hp, device, cfg.precision, **kw)
        r = rates[key]
        n = labelled_count(data.train_y, cell.fraction)
        n_val = len(label_split(data.train_y, cell.fraction, exp.seeds[0], exp.val_fraction).val)
        folds = exp.cv_folds * max(1, len(exp.pool_seeds))
        final, trial = _item_seconds(cell, cfg.hp, spec.trains_backbone, spec.probe_init, n, n_val, folds, r)
        finals = len(exp.seeds)
        searches = len(exp.searches(cell))
        trials = exp.trials * searches
        n_trials += trials
        n_finals += finals
        upper += finals * final + trials * trial
        # the pruner may stop trials after its start-up trials, at pruner_warmup of their budget at the earliest
        prunable = 0 if exp.search.pruner == "none" else max(0, exp.trials - exp.pruner_startup_trials()) * searches
        prunable = min(prunable, trials) if spec.trains_backbone else 0
        lower += finals * final + (trials - prunable) * trial + prunable * trial * exp.search.pruner_warmup
    return Projection(tuple(rates.values()), upper, lower, n_trials, n_finals, time.perf_counter() - t_measure)


def _item_seconds(
    cell: Cell, hp: HParams, trains: bool, probe: bool, n: int, n_val: int, folds: int, r: Rates
) -> tuple[float, float]:
    """(seconds of one final run, seconds of one search trial) of a cell."""
    n_train = n - n_val
    if trains:
        steps_s = hp.steps * hp.batch_size / r.train
        final = steps_s + (TEST_IMAGES + (n if probe else 0)) / r.forward
        trial = folds * (steps_s + (REPORTS * n_val + (n_train if probe else 0)) / r.forward)
    else:
        final = (n + TEST_IMAGES) / r.forward
        trial = folds * (n_train + n_val) / r.forward
    return final, trial


def hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
