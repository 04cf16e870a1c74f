"""The networks the compared methods build (see ../shared/docs/methods.md); models only.

Every method builds the same `Net`: an input adapter (uint8 -> float, resize to the run's
resolution, the backbone's normalisation), the backbone's features, and a head on top; `sft*`
add the supervision branch g whose output is summed with the head's. Which head a method builds
is its entry in bench/models/kinds.py (torch-free: what a method *is*); the builders are `HEADS`
here. The search space is the sweep's (bench/sweep/space.py), names as users spell them are
bench/names.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.models.hparams import HParams
from bench.models.kinds import METHODS


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
    """A small CNN on the raw image (side-tuning's g), its last layer zero-initialised.

    `width` is the searched `branch_width`; the convolutions have `max(8, width // 8)` and twice
    that many channels (so 64, 256, 1024 give 8, 32, 128), which keeps the branch small beside the
    backbone, as side-tuning's is."""

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
        """The branch's logits of the adapted image."""
        return self.out(self.body(image))


def zero_(layer: nn.Linear) -> nn.Linear:
    """`layer` with zero weights and bias: a branch that starts as nothing, so f + g starts as f."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@dataclass(frozen=True)
class Head:
    """What a head builder returns: H_f, the supervision branch g (None: none), and whether g reads
    the image (a side branch) rather than B(x)."""

    head: nn.Module
    branch: nn.Module | None = None
    branch_on_image: bool = False


@dataclass(frozen=True)
class Backbone:
    """A built backbone: its feature extractor B, the pretrained classifier it came with (the
    article's model keeps it), and B's feature size."""

    features: nn.Module
    pretrained_head: nn.Module
    feature_dim: int


def out_features(module: nn.Module) -> int:
    """The output size of a classifier: its last Linear layer's (a pretrained head may be an MLP)."""
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1].out_features


def _linear(b: Backbone, c: int, hp: HParams) -> Head:
    """A new Linear(d, C) on B(x): finetune, linear_probe, lp_ft."""
    return Head(nn.Linear(b.feature_dim, c))


def _article(b: Backbone, c: int, hp: HParams) -> Head:
    """The article's model: the whole pretrained classifier (K logits), then Linear(K, C)."""
    return Head(nn.Sequential(b.pretrained_head, nn.Linear(out_features(b.pretrained_head), c)))


def _sft_linear(b: Backbone, c: int, hp: HParams) -> Head:
    """sft: f = Linear(d, C) and g = a zero-initialised Linear(d, C) on B(x) (f + g starts as f)."""
    return Head(nn.Linear(b.feature_dim, c), zero_(nn.Linear(b.feature_dim, c)))


def _mlp(b: Backbone, c: int, hp: HParams) -> Head:
    """sft-mlp: g = an MLP on B(x) with `branch_width` hidden units, its last layer zero-initialised."""
    d = b.feature_dim
    # the branch is built first: the order of the random initialisations every run so far had
    branch = nn.Sequential(nn.Linear(d, hp.branch_width), nn.ReLU(), zero_(nn.Linear(hp.branch_width, c)))
    return Head(nn.Linear(d, c), branch)


def _side(b: Backbone, c: int, hp: HParams) -> Head:
    """sft-side: g = a small CNN on the image (`SideBranch`), its last layer zero-initialised."""
    return Head(nn.Linear(b.feature_dim, c), SideBranch(hp.branch_width, c), branch_on_image=True)


# The head builders by the names bench/models/kinds.py's entries give (a plug-in method adds its own).
HEADS: dict[str, Callable[[Backbone, int, HParams], Head]] = {
    "linear": _linear,
    "article": _article,
    "sft-linear": _sft_linear,
    "mlp": _mlp,
    "side": _side,
}


def build_net(method: str, backbone: Backbone, adapter: InputAdapter, num_classes: int, hp: HParams) -> Net:
    """The network of `method` on `backbone`: the adapter, B, and the method's head (and branch)."""
    return Net(adapter, backbone.features, HEADS[METHODS.get(method).head](backbone, num_classes, hp))


class Net(nn.Module):
    """y = head(B(x)) [+ branch(B(x) or x)]."""

    def __init__(self, adapter: InputAdapter, backbone: nn.Module, head: Head) -> None:
        super().__init__()
        self.adapter, self.backbone, self.head, self.branch = adapter, backbone, head.head, head.branch
        self.branch_on_image = head.branch_on_image

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """B(x): the backbone's features of uint8 images (what a frozen row caches)."""
        return self.backbone(self.adapter(x))

    def from_features(self, feats: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The logits from B(x) (`x`, the images, only for a side branch): how cached features are trained on."""
        y = self.head(feats)
        if self.branch is not None:
            if self.branch_on_image:
                assert x is not None, "the side branch needs the image"
                y = y + self.branch(self.adapter(x)).to(y.dtype)
            else:
                y = y + self.branch(feats).to(y.dtype)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of uint8 images, exactly `from_features(encode(x), x)`."""
        return self.from_features(self.encode(x), x)
