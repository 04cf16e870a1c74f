"""The search space, declared once: the shared hyperparameters with the same ranges for every method
that has them (methods.md: "shared hyperparameters share their search space"), and the branch width
of the methods with a supervision branch. Optuna's `trial.suggest_*` API only (a `SpaceTrial` of
bench/sweep/search.py answers the experiment's fixed values and [space] overrides).

Why here and not beside the models: the space is the search's choice, not the model's; the model
file (bench/models/methods.py) knows nothing of Optuna.
"""

from __future__ import annotations

from typing import Any

from bench.models.hparams import BN_POLICIES
from bench.models.kinds import MethodSpec

# A frozen-backbone row has no multiplier and no BatchNorm policy; every method that trains B gets
# both, with the same choices.
LR_RANGE = (1e-4, 3e-2)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
LABEL_SMOOTHING_CHOICES = [0.0, 0.1]
WARMUP_CHOICES = [0.0, 0.05, 0.1]
BACKBONE_LR_MULT_CHOICES = [0.01, 0.1, 1.0]
BRANCH_WIDTH_CHOICES = [64, 256, 1024]


def shared_space(trial: Any, trains_backbone: bool) -> dict[str, Any]:
    """The hyperparameters every method shares, in the order they are asked (the sampler's order)."""
    space = {
        "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adamw"]),
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True),
        "label_smoothing": trial.suggest_categorical("label_smoothing", LABEL_SMOOTHING_CHOICES),
        "warmup": trial.suggest_categorical("warmup", WARMUP_CHOICES),
    }
    if trains_backbone:
        space["backbone_lr_mult"] = trial.suggest_categorical("backbone_lr_mult", BACKBONE_LR_MULT_CHOICES)
        # The sweep answers "bn" with the experiment's fixed policy unless [search] bn = true.
        space["bn"] = trial.suggest_categorical("bn", list(BN_POLICIES))
    return space


def width_space(trial: Any) -> dict[str, Any]:
    """The width of a supervision branch (sft-mlp's hidden units, sft-side's `width // 8` channels)."""
    return {"branch_width": trial.suggest_categorical("branch_width", BRANCH_WIDTH_CHOICES)}


def method_space(trial: Any, spec: MethodSpec) -> dict[str, Any]:
    """One method's space: the shared one plus its branch width when it has a branch."""
    space = shared_space(trial, spec.trains_backbone)
    if spec.branch:
        space.update(width_space(trial))
    return space
