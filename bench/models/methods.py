"""The compared methods (see ../shared/docs/methods.md), one registry entry each.

Every method builds the same `Net`: an input adapter (uint8 -> float, resize to the
run's resolution, the backbone's normalisation), the backbone's features, and a head
on top; `sft` adds the supervision branch g whose output is summed with the head's.
Each entry also declares its own Optuna search space, next to its definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.hparams import ARTICLE_NORMALISATION, ARTICLE_RECIPE, BN_POLICIES, METHOD_ALIASES, HParams  # noqa: F401 (re-exported)
from bench.registry import Registry, UserError


class InputAdapter(nn.Module):
    """uint8 [B,3,32,32] -> normalised float at the run's resolution, inside the model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: measured faster for these conv nets on CPU and CUDA (docs/speed.md).
        # Converting the uint8 batch first and normalising in place is the same arithmetic
        # as float -> resize -> normalise -> channels_last, with two fewer copies. (copy=True:
        # a float input of the caller is never modified.)
        x = x.to(dtype=torch.float32, memory_format=torch.channels_last, copy=True)
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return x.mul_(self.scale).sub_(self.shift)


class SideBranch(nn.Module):
    """A small CNN on the raw image (side-tuning's g), its last layer zero-initialised."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        w = max(8, width // 8)
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.out = nn.Linear(2 * w, num_classes)
        zero_(self.out)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(image))


def zero_(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Net(nn.Module):
    """y = head(B(x)) [+ branch(B(x) or x)]."""

    def __init__(
        self,
        adapter: InputAdapter,
        backbone: nn.Module,
        head: nn.Module,
        branch: nn.Module | None = None,
        branch_on_image: bool = False,
    ) -> None:
        super().__init__()
        self.adapter, self.backbone, self.head, self.branch = adapter, backbone, head, branch
        self.branch_on_image = branch_on_image

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))

    def from_features(self, feats: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        y = self.head(feats)
        if self.branch is not None:
            if self.branch_on_image:
                assert x is not None, "the side branch needs the image"
                y = y + self.branch(self.adapter(x)).to(y.dtype)
            else:
                y = y + self.branch(feats).to(y.dtype)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.encode(x), x)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build_head: Callable[[int, int, nn.Module, HParams], tuple[nn.Module, nn.Module | None, bool]]
    trains_backbone: bool  # False: a frozen-backbone row, trained on cached features (never augmented)
    probe_init: bool  # H_f starts as the linear_probe row's model (sft*, lp_ft)
    is_probe: bool = False  # the linear probe itself: its fit is the probe every probe_init method starts from

    @property
    def searched(self) -> bool:
        """Whether a tuned cell of this method searches: not the linear probe (protocol v3), whose one
        setting, its L2 strength, is cross-validated inside its fit."""
        return not self.is_probe

    extra_space: Callable[[Any], dict[str, Any]] | None = None  # method-specific hyperparameters (branch width)
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def train_backbone(self, hp: HParams) -> bool:
        """Whether B trains (kept as a function of hp for callers; the answer is the method's)."""
        return self.trains_backbone

    def search_space(self, trial: Any) -> dict[str, Any]:
        """The shared space (identical ranges for every method that has the hyperparameter) plus the method's own."""
        space = shared_space(trial, self.trains_backbone)
        if self.extra_space is not None:
            space.update(self.extra_space(trial))
        return space


METHODS: Registry[MethodSpec] = Registry("method")

# The values the shared hyperparameters take in every search (methods.md: "shared
# hyperparameters share their search space"). A frozen-backbone row has no multiplier and
# no BatchNorm policy; every method that trains B gets both, with the same choices.
LR_RANGE = (1e-4, 3e-2)
WEIGHT_DECAY_RANGE = (1e-6, 1e-2)
LABEL_SMOOTHING_CHOICES = [0.0, 0.1]
WARMUP_CHOICES = [0.0, 0.05, 0.1]
BACKBONE_LR_MULT_CHOICES = [0.01, 0.1, 1.0]
BRANCH_WIDTH_CHOICES = [64, 256, 1024]


def shared_space(trial: Any, trains_backbone: bool) -> dict[str, Any]:
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
    return {"branch_width": trial.suggest_categorical("branch_width", BRANCH_WIDTH_CHOICES)}


# Frozen rows train on cached features: they cannot augment (methods.md), so they say so.
FROZEN = {"augment": False}


def register_method(
    name: str,
    *,
    trains_backbone: bool,
    probe_init: bool = False,
    is_probe: bool = False,
    extra_space: Callable[[Any], dict[str, Any]] | None = None,
    summary: str = "",
) -> Callable:
    def deco(build_head: Callable) -> Callable:
        defaults = {} if trains_backbone else dict(FROZEN)
        spec = MethodSpec(name, build_head, trains_backbone, probe_init, is_probe, extra_space, defaults, summary)
        METHODS.register(name)(spec)
        return build_head

    return deco


def _linear_head(d: int, c: int, pretrained_head: nn.Module, hp: HParams) -> tuple[nn.Module, None, bool]:
    return nn.Linear(d, c), None, False


register_method("finetune", trains_backbone=True, summary="new head on B(x); everything trained")(_linear_head)
register_method(
    "linear_probe",
    trains_backbone=False,
    is_probe=True,
    summary="new head on frozen B(x): a converged logistic regression, its L2 strength cross-validated (no search)",
)(_linear_head)
register_method(
    "lp_ft", trains_backbone=True, probe_init=True, summary="head started as the linear probe, then everything trained"
)(_linear_head)


@register_method(
    "article_sft", trains_backbone=True, summary="the article's model: full pretrained classifier (K logits) -> Linear(K, C)"
)
def _article_sft(d: int, c: int, pretrained_head: nn.Module, hp: HParams) -> tuple[nn.Module, None, bool]:
    k = pretrained_head.out_features if isinstance(pretrained_head, nn.Linear) else _out_features(pretrained_head)
    return nn.Sequential(pretrained_head, nn.Linear(k, c)), None, False


# Its name until the recipe was renamed `article` (`seed` also names the random seed); still read.
for _old, _new in METHOD_ALIASES.items():
    METHODS.alias(_old, _new)


def _out_features(module: nn.Module) -> int:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1].out_features


def _sft_linear(d: int, c: int, pretrained_head: nn.Module, hp: HParams) -> tuple[nn.Module, nn.Module, bool]:
    return nn.Linear(d, c), zero_(nn.Linear(d, c)), False


def _sft_mlp(d: int, c: int, pretrained_head: nn.Module, hp: HParams) -> tuple[nn.Module, nn.Module, bool]:
    branch = nn.Sequential(nn.Linear(d, hp.branch_width), nn.ReLU(), zero_(nn.Linear(hp.branch_width, c)))
    return nn.Linear(d, c), branch, False


def _sft_side(d: int, c: int, pretrained_head: nn.Module, hp: HParams) -> tuple[nn.Module, nn.Module, bool]:
    return nn.Linear(d, c), SideBranch(hp.branch_width, c), True


# sft (linear branch) with B frozen is the linear probe again (methods.md), so it has no frozen row.
register_method(
    "sft",
    trains_backbone=True,
    probe_init=True,
    summary="f + g, g = V B(x) + c (linear, zero-init): lp_ft with a doubled head step (W and V get identical gradients)",
)(_sft_linear)
register_method(
    "sft-mlp", trains_backbone=True, probe_init=True, extra_space=width_space, summary="f + g, g = one-hidden-layer MLP on B(x)"
)(_sft_mlp)
register_method(
    "sft-side", trains_backbone=True, probe_init=True, extra_space=width_space, summary="f + g, g = small CNN on the image"
)(_sft_side)
register_method(
    "sft-mlp-frozen",
    trains_backbone=False,
    probe_init=True,
    extra_space=width_space,
    summary="f + g on frozen B(x), g = MLP (an MLP probe)",
)(_sft_mlp)
register_method(
    "sft-side-frozen",
    trains_backbone=False,
    probe_init=True,
    extra_space=width_space,
    summary="f + g, B frozen, g = small CNN on the image (side-tuning as published)",
)(_sft_side)


def method_name(method: str, branch: str | None) -> str:
    """`--method sft --branch mlp` is the registry entry `sft-mlp`."""
    if branch in (None, "", "linear"):
        return method
    if method != "sft":
        raise UserError(f"--branch applies to sft only, not '{method}'")
    if branch not in ("mlp", "side"):
        raise UserError(f"branch '{branch}' is not one of: linear, mlp, side")
    return f"sft-{branch}"


def build_net(
    method: str,
    feats: nn.Module,
    pretrained_head: nn.Module,
    feature_dim: int,
    num_classes: int,
    hp: HParams,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    resolution: int,
) -> Net:
    spec = METHODS.get(method)
    head, branch, on_image = spec.build_head(feature_dim, num_classes, pretrained_head, hp)
    return Net(InputAdapter(mean, std, resolution), feats, head, branch, on_image)
