"""How a fit runs, apart from what it trains: `FitData` (the images, on the training device) and
`FitContext` (seed and generator, precision, the linear probe's settings, the caches, the progress
callback, torch.compile, where frozen features come from, the image meter).

Why one object: these settings went through every function of the training path one by one (`fit`,
`_train_phase`, `train_steps` took 12 or 13 parameters), so a new setting touched five signatures and
a call site could pass two of them swapped. None of them changes what a model *is* (that is the
method, its hyperparameters and the probe's settings, the run id's); most change only speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from bench.history import HistoryRow
from bench.models.hparams import ProbeSpec
from bench.train.compiling import CompileSpec

if TYPE_CHECKING:
    from bench.train.caches import Caches
    from bench.train.meter import BackboneMeter

FEATURE_CACHE_MODES = ("shared", "trial", "off")


@dataclass(frozen=True)
class FitData:
    """The uint8 images `x` and labels `y` a fit trains on, and its validation split `val` (None: no
    validation rows), all on the training device."""

    x: torch.Tensor
    y: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class FitContext:
    """How one fit runs.

    `seed` seeds the new layers' initialisation and the batch order (`generator`, made by `started` on
    the images' device). `precision`: "fp32" or "bf16" autocast. `probe`: the linear probe's settings
    (linear_probe and the probe-initialised methods; None: `ProbeSpec()`). `caches`: the feature and
    probe caches shared with other fits (None: fresh ones, private to this fit; the model is the same
    either way). `on_progress` sees every history row and a tick per step. `compile`: how the encoder of
    the end-to-end phase is compiled (None: not; `compile_spec` reads the `--compile` setting); speed only.
    `feature_cache`: where frozen-backbone features come from: "shared" (the caches'), "trial"
    (computed once in this fit) or "off" (the backbone again on every batch); the same model, only
    the time differs. `meter` counts the images through the backbone.
    """

    seed: int = 0
    precision: str = "fp32"
    probe: ProbeSpec | None = None
    caches: Caches | None = None
    on_progress: Callable[[HistoryRow], None] | None = None
    compile: CompileSpec | None = None
    feature_cache: str = "shared"
    meter: BackboneMeter | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(f"feature_cache '{self.feature_cache}' is not one of: {', '.join(FEATURE_CACHE_MODES)}")

    def started(self, device: torch.device, caches: Caches) -> FitContext:
        """This context for a fit on `device`: its generator seeded, its caches set (torch's global
        generator is seeded too: the new layers' initialisation draws from it)."""
        torch.manual_seed(self.seed)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        return replace(self, caches=caches, generator=gen)

    @property
    def gen(self) -> torch.Generator:
        """The generator of a started fit (the batch order and the augmentation draw from it)."""
        if self.generator is None:
            raise RuntimeError("the fit context has no generator: FitContext.started makes one")
        return self.generator

    @property
    def device(self) -> torch.device:
        """The training device (a started fit's)."""
        return self.gen.device

    def report(self, row: HistoryRow) -> None:
        """Hand `row` to the progress callback, if any."""
        if self.on_progress is not None:
            self.on_progress(row)
