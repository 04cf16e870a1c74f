"""The hyperparameters of one run, and the article's recipe. Torch-free, so the typed records, the
experiment parser and the report read them without importing torch."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any

from bench.registry import UserError, renamed

BN_POLICIES = ("frozen", "train")


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
    bn: str = "frozen"  # BatchNorm of a trained backbone: frozen (pretrained statistics) | train (batch statistics)
    branch_width: int = 256  # sft-mlp hidden units, sft-side channels

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
        for name in ("steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
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

# The recipes a run can have: `tuned` (searched hyperparameters) and `article` (the article's
# fixed recipe above). The article's recipe was called `seed`, which also names the random
# seed: that name is still read (old commands, experiment files and runs.csv files) and means
# `article`, with a note.
RECIPES = ("tuned", "article")
RECIPE_ALIASES = {"seed": "article"}
METHOD_ALIASES = {"seed_sft": "article_sft"}  # the article's model, named after its recipe


def recipe_name(recipe: str) -> str:
    """The recipe's current name: `seed` -> `article` (with a FutureWarning saying so), others as given."""
    new = RECIPE_ALIASES.get(recipe)
    if new is None:
        return recipe
    renamed("recipe", recipe, new)
    return new
