"""One run's identity: `RunConfig` (frozen, its hash the run id) and `make_config`, which resolves the
defaults (recipe, method defaults, step budget, precision) into one. Torch-free: the records, the
sweep's bookkeeping and the report name runs without importing the training code.

    cfg = make_config(backbone="tiny", method="sft", fraction=0.1, seed=0, resolution=32, device=dev, data=data)
    cfg.run_id    # the first 16 hex digits of the SHA-256 of the config as sorted JSON

`check_fit` is the one check of what a training can do (a method that trains the backbone at
multiplier 0, an augmented frozen row): a config runs it when it is made, `fit` when it is called
without one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from bench.budget import PROTOCOL, article_recipe_steps, step_budget
from bench.models.hparams import ARTICLE_RECIPE, HParams, ProbeSpec
from bench.models.kinds import METHODS, MethodSpec
from bench.names import RECIPES, recipe_name
from bench.registry import UserError


class Stage(StrEnum):
    """FINAL trains on the whole labelled subset and evaluates once on the test set; TRIAL trains on
    the train part of the subset and scores on its validation part (the test set is never read).
    A str: records, runs.csv and the run id hold the same strings as before it was an enum."""

    FINAL = "final"
    TRIAL = "trial"


class Precision(StrEnum):
    """The arithmetic of training, features and evaluation: fp32, or bf16 autocast."""

    FP32 = "fp32"
    BF16 = "bf16"


PRECISIONS = tuple(p.value for p in Precision)


def default_precision(device_type: str) -> Precision:
    """`--precision auto`: bf16 on CUDA, fp32 elsewhere (a function of the device type only)."""
    return Precision.BF16 if device_type == "cuda" else Precision.FP32


def check_fraction(fraction: float) -> None:
    """A label fraction is in (0, 1]."""
    if not (0.0 < fraction <= 1.0):
        raise UserError(f"label fraction {fraction} is outside (0, 1]; use e.g. 0.01 for 1% of the labels")


def check_fit(spec: MethodSpec, hp: HParams) -> None:
    """Refuse what a training cannot do, before any work: a method that trains the backbone at
    multiplier 0 (a frozen backbone is a row of its own), an augmented frozen row."""
    if spec.trains_backbone and hp.backbone_lr_mult <= 0:
        raise UserError(
            f"{spec.name} trains the backbone, so backbone_lr_mult must be > 0 (got {hp.backbone_lr_mult}); "
            "a frozen backbone is a row of its own: linear_probe, sft-mlp-frozen, sft-side-frozen"
        )
    if not spec.trains_backbone and hp.augment:
        raise UserError(
            f"{spec.name} trains on cached features of a frozen backbone, which cannot be augmented; set augment=false"
        )


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that can change a result (`stage`: see `Stage`). A trial with a `pool` (protocol
    v3's pooled selection) trains and scores on each seed of the pool in turn, and scores the mean of
    their validation accuracies. Built with keywords only; the field order is the records' key order."""

    backbone: str
    method: str
    fraction: float
    seed: int
    recipe: str = "tuned"
    hp: HParams = field(default_factory=HParams)
    resolution: int = 32
    pretrained: bool = True
    stage: Stage = Stage.FINAL
    val_fraction: float = 0.2
    precision: Precision = Precision.FP32
    device_type: str = "cpu"
    data: str = ""  # the dataset's fingerprint (md5s of its files)
    probe: ProbeSpec | None = None  # linear_probe, lp_ft, sft*: the linear probe's settings (H_f starts as that model)
    cv_folds: int = 1  # trial stage: k > 1 scores the mean validation accuracy over k stratified folds
    protocol: int = PROTOCOL  # ../shared/docs/methods.md version: runs of two versions never share an id
    pool: tuple[int, ...] = ()  # trial stage, pooled selection: the seeds whose subsets it trains and scores on

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if self.recipe not in RECIPES:
            raise UserError(f"recipe '{self.recipe}' is not one of: {', '.join(RECIPES)}")
        object.__setattr__(self, "precision", _member(Precision, self.precision, "precision"))
        object.__setattr__(self, "stage", _member(Stage, self.stage, "stage"))
        if not 8 <= self.resolution <= 1024:
            raise UserError(f"resolution {self.resolution} is outside 8..1024 pixels")
        spec = METHODS.get(self.method)
        check_fit(spec, self.hp)
        if isinstance(self.probe, dict):  # a stored config (a record's, a checkpoint's): its probe as data
            object.__setattr__(self, "probe", ProbeSpec.from_dict(self.probe))
        if spec.kind.fits_probe and self.probe is None:
            object.__setattr__(self, "probe", ProbeSpec())  # the default probe: the same run id as naming it
        if not spec.kind.fits_probe and self.probe is not None:
            raise UserError(f"{self.method} fits no linear probe: probe settings do not apply")
        trial = self.stage is Stage.TRIAL
        if self.cv_folds < 1 or (self.cv_folds > 1 and not trial):
            raise UserError(f"cv_folds {self.cv_folds}: k-fold scores are for the trial stage only (k >= 2), else 1")
        if self.pool and (not trial or self.pool[0] != self.seed or len(set(self.pool)) != len(self.pool)):
            raise UserError(f"pool {list(self.pool)}: a pooled trial starts at its own seed ({self.seed}), names each seed once")

    @property
    def run_id(self) -> str:
        """The first 16 hex digits of the SHA-256 of the config as sorted JSON: same config, same id."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (nested hyperparameters as dicts, modes as their strings)."""
        out = asdict(self)
        out["stage"], out["precision"] = str(self.stage), str(self.precision)
        if self.probe is not None:
            out["probe"] = self.probe.as_data()
        return out


def _member(enum: type[StrEnum], value: str, what: str) -> Any:
    """`value` as a member of `enum`, or the one-line refusal naming the valid ones."""
    try:
        return enum(value)
    except ValueError:
        raise UserError(f"{what} '{value}' is not one of: {', '.join(m.value for m in enum)}") from None


class DataFacts(Protocol):
    """What a config needs of a dataset (bench.data.Cifar10 has it): its fingerprint and the size
    of the labelled subset at a fraction (the step budget's n)."""

    fingerprint: str

    def labelled_count(self, fraction: float) -> int: ...


class DeviceFacts(Protocol):
    """What a config needs of a device (a `torch.device` has it): its type."""

    @property
    def type(self) -> str: ...


def make_config(
    *,
    backbone: str,
    method: str,
    fraction: float,
    seed: int,
    resolution: int,
    device: DeviceFacts,
    data: DataFacts,
    recipe: str = "tuned",
    pretrained: bool = True,
    overrides: dict[str, Any] | None = None,
    stage: str = "final",
    precision: str = "auto",
    val_fraction: float = 0.2,
    probe: ProbeSpec | None = None,
    cv_folds: int = 1,
    pool: tuple[int, ...] = (),
) -> RunConfig:
    """Resolve defaults (recipe, method defaults, step budget, precision) into a RunConfig.

    The step budget is `overrides["steps"]` when given, else the protocol's rule of the
    labelled-set size (bench/budget.py; the article's 10 epochs for the article recipe).
    `resolution`: the run's input pixels, `bench.models.backbones.input_resolution`'s (the one
    rule the sweep and perf's projection use too; it knows the backbones, so the caller asks it).
    `probe`: the settings of the linear probe (linear_probe and every method that starts from it;
    default `ProbeSpec()`). `pool`: a pooled trial's seeds (the first is `seed`). The recipe
    `defaults` is each method's defaults (no search), like `tuned` before the sweep fills in a
    search's choice. Old names (`recipe="seed"`, `method="seed_sft"`) are read as bench/names.py says.
    """
    recipe = recipe_name(recipe)
    method = METHODS.canonical(method)
    spec = METHODS.get(method)
    article = recipe == "article"
    overrides = dict(overrides or {})
    hp = (ARTICLE_RECIPE if article else HParams()).update(**spec.defaults).update(**overrides)
    if "steps" not in overrides:
        n = data.labelled_count(fraction)
        hp = hp.update(steps=article_recipe_steps(n, hp.batch_size) if article else step_budget(n, hp.batch_size))
    if spec.is_probe:
        hp = _probe_hparams(spec, overrides)
    return RunConfig(
        backbone=backbone,
        method=method,
        fraction=float(fraction),
        seed=int(seed),
        recipe=recipe,
        hp=hp,
        resolution=int(resolution),
        pretrained=pretrained,
        stage=_member(Stage, stage, "stage"),
        val_fraction=val_fraction,
        precision=default_precision(device.type) if precision == "auto" else _member(Precision, precision, "precision"),
        device_type=device.type,
        data=data.fingerprint,
        probe=(probe or ProbeSpec()) if spec.kind.fits_probe else None,
        cv_folds=cv_folds,
        pool=tuple(int(s) for s in pool),
    )


def _probe_hparams(spec: MethodSpec, overrides: dict[str, Any]) -> HParams:
    """The linear probe is solved (L-BFGS to a tolerance), not trained for S steps: no training
    hyperparameter applies, so none is part of its id (a budget or batch size asked for the whole
    grid is ignored; anything else is refused)."""
    ignored = {"steps", "batch_size"} | ({"augment"} if overrides.get("augment") is False else set())
    if set(overrides) - ignored:
        names = sorted(set(overrides) - ignored)
        raise UserError(
            f"{spec.name} has no training hyperparameters under protocol v{PROTOCOL} (it is a converged logistic "
            f"regression), so {', '.join(names)} cannot be set; its settings are the probe's (--probe-set folds=..., l2=...)"
        )
    return HParams().update(**spec.defaults)
