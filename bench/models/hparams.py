"""The hyperparameters of one run, and the article's recipe. Torch-free, so the typed records, the
experiment parser and the report read them without importing torch."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from bench.registry import UserError


class BnPolicy(StrEnum):
    """BatchNorm of a trained backbone (protocol v2, one policy for every method): FROZEN keeps the
    pretrained running statistics in training as in evaluation (the affine parameters still train);
    TRAIN uses and updates batch statistics. A str: records and runs.csv hold the same strings."""

    FROZEN = "frozen"
    TRAIN = "train"


BN_POLICIES = tuple(p.value for p in BnPolicy)  # plain strings: an Optuna categorical's choices
# Beyond these a value is a typo, not an experiment: the protocol's largest budget is 3,907 steps (100% of
# CIFAR-10 at batch 128) and a batch is never larger than the 50,000 training images; a run of 10^12 steps
# or a batch of 10^9 would only exhaust the machine (issue 19, audit item 1).
MAX_STEPS = 1_000_000
MAX_BATCH = 65_536


@dataclass(frozen=True)
class HParams:
    """Everything about training that can change a result (part of the run id)."""

    optimizer: str = "adamw"  # sgd | adamw
    lr: float = 1e-3  # 0 is allowed (no update: the BatchNorm tests use it)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    steps: int = 500  # optimiser steps: the cell's budget S (bench/budget.py), the same for every method
    warmup: float = 0.05  # linear warm-up over this fraction of the steps, then the schedule
    batch_size: int = 128
    schedule: str = "cosine"  # cosine | onecycle | constant (after the warm-up)
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    augment: bool = True  # crop + flip; only paths that train on images can (frozen rows: false)
    backbone_lr_mult: float = 1.0  # lr of the backbone relative to lr (methods that train it: > 0)
    bn: BnPolicy = BnPolicy.FROZEN  # BatchNorm of a trained backbone: frozen (pretrained statistics) | train (batch statistics)
    branch_width: int = 256  # sft-mlp's hidden units; sft-side's first convolution has max(8, branch_width // 8) channels

    def __post_init__(self) -> None:
        self._check_types()
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{f.name} must be a finite number, got {value}")
        if self.optimizer not in ("sgd", "adamw"):
            raise UserError(f"optimizer '{self.optimizer}' is not one of: sgd, adamw")
        if self.schedule not in ("cosine", "onecycle", "constant"):
            raise UserError(f"schedule '{self.schedule}' is not one of: cosine, onecycle, constant")
        if self.bn not in BN_POLICIES:
            raise UserError(f"bn '{self.bn}' is not one of: {', '.join(BN_POLICIES)}")
        object.__setattr__(self, "bn", BnPolicy(self.bn))
        for name, most in (("steps", MAX_STEPS), ("batch_size", MAX_BATCH)):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
            if getattr(self, name) > most:
                raise UserError(f"{name} must be at most {most:,}, got {getattr(self, name):,}")
        if self.lr < 0:
            raise UserError(f"lr must be >= 0, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise UserError(f"warmup must be a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.backbone_lr_mult < 0:
            raise UserError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        for name in ("branch_width",):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            raise UserError(f"momentum must be in [0, 1), got {self.momentum}")

    def _check_types(self) -> None:
        """Values from --set, TOML or JSON arrive untyped: "abc" for lr, 2.5 for epochs.

        Refuse them as bad input here (instead of a TypeError deep in training), and store
        ints given for float fields as floats, so `lr=1` and `lr=1.0` are one run id.
        """
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            kind = kind if kind in ("bool", "int", "float") else "str"  # a mode's StrEnum is given as its string
            if kind == "bool":
                ok = isinstance(value, bool)
            elif kind == "int":
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                if not ok and isinstance(value, float) and value.is_integer():
                    ok, value = True, int(value)
            elif kind == "float":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, str)
            if not ok:
                raise UserError(f"hyperparameter {f.name} must be of type {kind}, got {value!r}")
            if kind == "int":
                value = int(value)
            object.__setattr__(self, f.name, value)

    def update(self, **changes: Any) -> HParams:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise UserError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: {sorted(known)}")
        return replace(self, **changes)


def _l2_grid() -> tuple[float, ...]:
    """10^-4 ... 10^1, two values a decade: from almost no penalty to one that flattens the probe."""
    return tuple(float(f"{10 ** (-4 + i / 2):.6g}") for i in range(11))


@dataclass(frozen=True)
class ProbeSpec:
    """The linear probe of protocol v3 (bench/train/logreg.py): L2-regularised logistic regression
    on frozen features, solved by full-batch L-BFGS until the largest absolute gradient entry of the
    mean objective is at most `tol`, its strength chosen from `l2_grid` by stratified `folds`-fold
    cross-validation on the images it is fitted on. Deterministic for given features and labels, so
    it has no seed; part of the run id of every run that fits one (linear_probe, lp_ft, sft*)."""

    l2_grid: tuple[float, ...] = field(default_factory=_l2_grid)
    folds: int = 5
    tol: float = 1e-5
    max_iter: int = 500
    fallback_l2: float = 1e-3  # when a class has fewer than 2 images, cross-validation is impossible
    # Each feature is standardised by max(its std, std_floor x the median std of the non-constant features):
    # at 1, no feature is scaled up beyond the median one. Why a floor: the head on raw features divides each
    # weight by that std, and at 32 px EfficientNet-Lite0 has nearly-constant features (std 1e-4 against a
    # median of 0.02) that got raw weights up to 849; fine-tuning from such a head lost it within 50 steps and
    # diverged on one seed of two (results/probe_floor/, docs/protocol.md). 0: plain standardisation, the
    # probe of the 64 px study (experiments/study64.toml pins it).
    std_floor: float = 1.0

    def __post_init__(self) -> None:
        grid = tuple(float(v) for v in self.l2_grid)
        if not grid or any(not math.isfinite(v) or v <= 0 for v in grid) or len(set(grid)) != len(grid):
            raise UserError(f"probe l2_grid must be distinct positive numbers, got {list(self.l2_grid)}")
        object.__setattr__(self, "l2_grid", grid)
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise UserError(f"probe folds must be an integer >= 2, got {self.folds!r}")
        if not (isinstance(self.tol, int | float) and 0 < self.tol < 1):
            raise UserError(f"probe tol must be in (0, 1), got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise UserError(f"probe max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.fallback_l2, int | float) and self.fallback_l2 > 0):
            raise UserError(f"probe fallback_l2 must be positive, got {self.fallback_l2!r}")
        if not (isinstance(self.std_floor, int | float) and not isinstance(self.std_floor, bool) and 0 <= self.std_floor <= 1):
            raise UserError(f"probe std_floor must be in [0, 1] (a fraction of the median std), got {self.std_floor!r}")
        object.__setattr__(self, "tol", float(self.tol))
        object.__setattr__(self, "fallback_l2", float(self.fallback_l2))
        object.__setattr__(self, "std_floor", float(self.std_floor))

    def as_data(self) -> dict[str, Any]:
        """The settings as plain data, for run ids, cache keys and records. `std_floor` at 0 is left out, so
        every probe fitted before the floor existed keeps its run id and cache key (it is the same probe).
        So a record's `probe_hparams` without `std_floor` means 0, not today's default."""
        out = asdict(self)
        if out["std_floor"] == 0.0:
            del out["std_floor"]
        return out

    def update(self, **changes: Any) -> ProbeSpec:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise UserError(f"unknown probe setting(s) {sorted(unknown)}; valid: {sorted(known)}")
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeSpec:
        """From `as_data`'s output (a record's `probe_hparams`, a config): there a missing `std_floor` means 0,
        the probe before the floor existed. An experiment's [probe] table is settings instead: `from_table`."""
        return cls(**{"std_floor": 0.0, **d, "l2_grid": tuple(d.get("l2_grid", _l2_grid()))})

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ProbeSpec:
        """From an experiment's [probe] table: what it leaves out takes today's defaults."""
        return cls(**{**table, "l2_grid": tuple(table.get("l2_grid", _l2_grid()))})


# The article's example (../shared/seed/): batch 100, SGD lr 0.001 momentum 0.9,
# cross-entropy, 10 epochs (steps = 10 x ceil(n / 100), set per run by make_config),
# flip + crop(32, pad 4), constant learning rate without warm-up, and BatchNorm in
# train mode (the article never calls eval() while training).
ARTICLE_RECIPE = HParams(
    optimizer="sgd",
    lr=0.001,
    momentum=0.9,
    weight_decay=0.0,
    warmup=0.0,
    batch_size=100,
    schedule="constant",
    label_smoothing=0.0,
    grad_clip=0.0,
    augment=True,
    bn="train",
)
ARTICLE_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
