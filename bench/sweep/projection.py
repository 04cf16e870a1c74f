"""How long a grid will take on this device, from throughputs measured here (bench/sweep/rates.py).

Why: the protocol gives every cell at least 500 optimiser steps and a search, so the same grid is
minutes on a GPU and days on a laptop. A user should know which before anything trains: every sweep
prints its projection at the start (`sweep --dry-run` stops there), and warns in one line, with a
cheaper alternative, when it is far beyond what was likely meant. The same per-item estimates seed
the live ETA (bench/sweep/status.py `eta`), which then scales them by what the finished items took.

Rates come from the suite's own loop (`fit`: the cell's optimiser, groups, augmentation, BatchNorm
policy, precision and compile setting) and evaluation batch on this device. Every work item of the
grid is added up:
- a trial or final run that trains B: S steps x batch images at the training rate, plus its
  validation reports (trials) or the test set (final runs), plus the probe's features; a pooled
  trial (protocol v3) does this once per pooled seed, a k-fold trial once per fold;
- a frozen row: its images once through the backbone (features), plus evaluation; the head's steps
  on cached features and the probe's L-BFGS solve are counted as negligible (the probe: seconds at
  1% of CIFAR-10 with Lite0, about 20 s at 10%).

It is a projection, printed as such: the upper bound assumes no trial is pruned; the lower bound
that every trial the pruner may stop stops at the earliest step it may. Load moves both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.budget import REPORTS
from bench.data import label_split, labelled_count
from bench.models.hparams import HParams
from bench.models.kinds import METHODS
from bench.sweep.experiment import Cell, Experiment
from bench.sweep.rates import RateCache, Rates, cache_path, rates_for, speed_settings

TEST_IMAGES = 10_000
DAY = 86_400.0


@dataclass(frozen=True)
class ItemCost:
    """Projected seconds of one final run and of one search trial of a cell, on this device."""

    final: float
    trial: float


@dataclass(frozen=True)
class Projection:
    rates: tuple[Rates, ...]
    upper_seconds: float  # no trial pruned
    lower_seconds: float  # every prunable trial stopped at its earliest
    trials: int
    finals: int
    measure_seconds: float
    costs: dict[Cell, ItemCost]  # per cell: what the live ETA starts from

    @property
    def cached(self) -> bool:
        """Whether every rate came from the cache (nothing measured now)."""
        return all(r.cached for r in self.rates)


def project(exp: Experiment, sweep: Any, device: torch.device, cache: RateCache | None = None) -> Projection:
    """Rates of the grid's (backbone, resolution, batch, precision) combinations (cached or measured now),
    then every work item added up.

    `sweep`: a read-only `bench.sweep.worker.Sweep` of the experiment (its `config` resolves every cell's step
    budget, resolution and batch size exactly as the real runs will)."""
    t_measure = time.perf_counter()
    cache = cache if cache is not None else RateCache(cache_path())
    rates: dict[tuple, Rates] = {}
    upper = lower = 0.0
    n_trials = n_finals = 0
    costs: dict[Cell, ItemCost] = {}
    data = sweep.data
    for cell in exp.cells():
        cfg = sweep.config(cell, exp.seeds[0], dict(exp.fixed_hparams(cell.method)), "final")
        spec = METHODS.get(cell.method)
        key = (cell.backbone, cfg.resolution, cfg.precision, *speed_settings(cfg.hp, spec.trains_backbone, exp.compile))
        if key not in rates:
            kw = dict(compile=exp.compile, train=spec.trains_backbone)
            rates[key] = rates_for(cell.backbone, cfg.resolution, cfg.hp, device, cfg.precision, cache, **kw)
        r = rates[key]
        n = labelled_count(data.train_y, cell.fraction)
        n_val = len(label_split(data.train_y, cell.fraction, exp.seeds[0], exp.val_fraction).val)
        folds = exp.cv_folds * max(1, len(exp.pool_seeds))
        cost = _item_seconds(cfg.hp, spec.trains_backbone, spec.probe_init, n, n_val, folds, r)
        costs[cell] = cost
        finals = len(exp.seeds)
        searches = len(exp.searches(cell))
        trials = exp.trials * searches
        n_trials += trials
        n_finals += finals
        upper += finals * cost.final + trials * cost.trial
        # the pruner may stop trials after its start-up trials, at pruner_warmup of their budget at the earliest
        prunable = 0 if exp.search.pruner == "none" else max(0, exp.trials - exp.pruner_startup_trials()) * searches
        prunable = min(prunable, trials) if spec.trains_backbone else 0
        lower += finals * cost.final + (trials - prunable) * cost.trial + prunable * cost.trial * exp.search.pruner_warmup
    return Projection(tuple(rates.values()), upper, lower, n_trials, n_finals, time.perf_counter() - t_measure, costs)


def _item_seconds(hp: HParams, trains: bool, probe: bool, n: int, n_val: int, folds: int, r: Rates) -> ItemCost:
    """Seconds of one final run and of one search trial of a cell."""
    n_train = n - n_val
    if trains:
        steps_s = hp.steps * hp.batch_size / r.train
        final = steps_s + (TEST_IMAGES + (n if probe else 0)) / r.forward
        trial = folds * (steps_s + (REPORTS * n_val + (n_train if probe else 0)) / r.forward)
    else:
        final = (n + TEST_IMAGES) / r.forward
        trial = folds * (n_train + n_val) / r.forward
    return ItemCost(final, trial)


def hours(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} days"


def advice(exp: Experiment, p: Projection, device: torch.device, cuda_devices: int) -> str | None:
    """One line when the projection is far beyond what a user likely meant (more than a day), naming the
    nearest cheaper ways to an answer; None below a day."""
    if p.lower_seconds <= DAY:
        return None
    ways = []
    if device.type != "cuda":
        gpu = "on a CUDA GPU (--device cuda; docs/gpu.md)" if cuda_devices else "on a machine with a CUDA GPU (docs/gpu.md)"
        ways.append(gpu)
    elif cuda_devices > 1:
        ways.append(f"--parallel {cuda_devices} (one worker per GPU)")
    if len(exp.fractions) > 1 and max(exp.fractions) >= 0.5:
        smaller = ",".join(f"{f:g}" for f in exp.fractions if f < 0.5)
        if smaller:
            ways.append(f"--fractions {smaller} (the full-label column is most of the cost)")
    if exp.name != "quick":
        ways.append("--experiment quick (1% of the labels: 18.7 min measured on a 2-core CPU)")
    ways.append("several machines on one storage (Slurm: docs/operations.md)")
    return f"this grid projects to {hours(p.lower_seconds)} or more on {device}; to get an answer sooner: " + "; ".join(ways)
