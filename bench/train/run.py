"""One run: (backbone, method, fraction, seed, hyperparameters) -> a JSON record.

A frozen `RunConfig` describes the run completely; its hash is the run id, so a
result is found again (and never recomputed) from the config alone.

    python cli.py run --backbone efficientnet_lite0 --method sft --fraction 0.1 --resolution 64
    python cli.py run --recipe seed --method seed_sft --backbone resnet18   # the article
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.budget import MIN_STEPS, PROTOCOL, seed_recipe_steps, step_budget
from bench.data import Cifar10, check_fraction, cv_folds, label_split, labelled_count, load_cifar10
from bench.models.backbones import build_backbone, get_backbone
from bench.models.methods import METHODS, SEED_NORMALISATION, SEED_RECIPE, HParams, build_net
from bench.provenance import peak_memory_mb, provenance, resolve_device
from bench.records import Provenance, RunRecord
from bench.registry import UserError
from bench.train.engine import FitResult, classification_metrics, default_probe, fit, predict

RECIPES = ("tuned", "seed")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class RunConfig:
    """Everything that can change a result. `stage`: "final" trains on the whole labelled
    subset and evaluates once on the test set; "trial" trains on the train part of the
    subset and scores on its validation part (the test set is never read)."""

    backbone: str
    method: str
    fraction: float
    seed: int
    recipe: str = "tuned"
    hp: HParams = field(default_factory=HParams)
    resolution: int = 32
    pretrained: bool = True
    stage: str = "final"
    val_fraction: float = 0.2
    precision: str = "fp32"
    device_type: str = "cpu"
    data: str = ""  # the dataset's fingerprint (md5s of its files)
    probe: HParams | None = None  # sft* / lp_ft: the linear probe's hyperparameters (H_f starts as that model)
    cv_folds: int = 1  # trial stage: k > 1 scores the mean validation accuracy over k stratified folds
    protocol: int = PROTOCOL  # ../shared/docs/methods.md version: a v1 run never shares an id with a v2 one

    def __post_init__(self) -> None:
        check_fraction(self.fraction)
        if self.recipe not in RECIPES:
            raise UserError(f"recipe '{self.recipe}' is not one of: {', '.join(RECIPES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"precision '{self.precision}' is not one of: {', '.join(PRECISIONS)}")
        if self.stage not in ("final", "trial"):
            raise UserError(f"stage '{self.stage}' is not one of: final, trial")
        if not 8 <= self.resolution <= 1024:
            raise UserError(f"resolution {self.resolution} is outside 8..1024 pixels")
        spec = METHODS.get(self.method)
        if spec.trains_backbone and self.hp.backbone_lr_mult <= 0:
            raise UserError(
                f"{self.method} trains the backbone, so backbone_lr_mult must be > 0 (got {self.hp.backbone_lr_mult}); "
                "a frozen backbone is a row of its own: linear_probe, sft-mlp-frozen, sft-side-frozen"
            )
        if not spec.trains_backbone and self.hp.augment:
            raise UserError(f"{self.method} trains on cached features of a frozen backbone, which cannot be augmented")
        if (self.probe is not None) != spec.probe_init:
            raise UserError(f"{self.method}: a probe's hyperparameters are {'needed' if spec.probe_init else 'not used'}")
        if self.cv_folds < 1 or (self.cv_folds > 1 and self.stage != "trial"):
            raise UserError(f"cv_folds {self.cv_folds}: k-fold scores are for the trial stage only (k >= 2), else 1")

    @property
    def run_id(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return asdict(self)


def make_config(
    backbone: str,
    method: str,
    fraction: float,
    seed: int,
    *,
    recipe: str = "tuned",
    resolution: int | None = None,
    pretrained: bool = True,
    overrides: dict | None = None,
    stage: str = "final",
    precision: str = "auto",
    device: torch.device,
    data: Cifar10,
    val_fraction: float = 0.2,
    probe: HParams | None = None,
    cv_folds: int = 1,
) -> RunConfig:
    """Resolve defaults (recipe, method defaults, step budget, backbone resolution) into a RunConfig.

    The step budget is `overrides["steps"]` when given, else the protocol's rule of the
    labelled-set size (bench/budget.py; the article's 10 epochs for the seed recipe).
    `probe`: the linear probe a probe-initialised method starts from (the sweep passes the
    linear_probe row's chosen hyperparameters); default: linear_probe's defaults at this budget.
    """
    spec = METHODS.get(method)
    if recipe == "seed":
        hp = SEED_RECIPE.update(**spec.defaults)
        # The article feeds 32 px CIFAR images straight into the network.
        resolution = 32 if resolution is None else resolution
    else:
        hp = HParams().update(**spec.defaults)
        # `is None`, not `or`: an explicit 0 is bad input for RunConfig to refuse, not the default
        resolution = get_backbone(backbone).input_size if resolution is None else resolution
    overrides = dict(overrides or {})
    hp = hp.update(**overrides)
    if "steps" not in overrides:
        n = labelled_count(data.train_y, fraction)
        hp = hp.update(steps=seed_recipe_steps(n, hp.batch_size) if recipe == "seed" else step_budget(n, hp.batch_size))
    if spec.probe_init and probe is None:
        probe = default_probe(hp)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return RunConfig(
        backbone,
        method,
        float(fraction),
        int(seed),
        recipe,
        hp,
        int(resolution),
        pretrained,
        stage,
        val_fraction,
        precision,
        device.type,
        data.fingerprint,
        probe if spec.probe_init else None,
        cv_folds,
    )


_DATA: dict[str, Cifar10] = {}


def get_data(data_dir: str | Path) -> Cifar10:
    """Load once per process (the sweep runs hundreds of trainings on the same arrays)."""
    key = str(Path(data_dir).resolve())
    if key not in _DATA:
        _DATA[key] = load_cifar10(data_dir)
    return _DATA[key]


def build_model(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    bspec = get_backbone(cfg.backbone)
    feats, pretrained_head = build_backbone(bspec, cfg.pretrained)
    mean, std = SEED_NORMALISATION if cfg.recipe == "seed" else (bspec.mean, bspec.std)
    return build_net(cfg.method, feats, pretrained_head, bspec.feature_dim, num_classes, cfg.hp, mean, std, cfg.resolution)


def trainable_parameters(net: torch.nn.Module, cfg: RunConfig) -> int:
    spec = METHODS.get(cfg.method)
    backbone = sum(p.numel() for p in net.backbone.parameters()) if spec.train_backbone(cfg.hp) else 0
    rest = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("backbone."))
    return backbone + rest


def execute(
    cfg: RunConfig,
    data: Cifar10,
    device: torch.device,
    *,
    on_progress: Callable[[dict], None] | None = None,
    save_predictions: Path | None = None,
    save_model: Path | None = None,
    compile: bool | str = False,
) -> RunRecord:
    """Train and evaluate one run; return its record.

    `compile` (torch.compile for the end-to-end phase) changes speed, not the result, so
    it is not part of the RunConfig or its run id.
    """
    wall0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    spec = METHODS.get(cfg.method)
    split = label_split(data.train_y, cfg.fraction, cfg.seed, cfg.val_fraction)
    if cfg.stage == "final":
        folds: list[tuple[torch.Tensor, torch.Tensor | None]] = [(split.labelled, None)]
    elif cfg.cv_folds > 1:
        folds = list(cv_folds(data.train_y, cfg.fraction, cfg.seed, cfg.cv_folds))
    else:
        folds = [(split.train, split.val)]
    k = len(folds)
    results: list[FitResult] = []
    val_scores: list[dict] = []
    t_eval = 0.0
    for j, (train_idx, val_idx) in enumerate(folds):
        torch.manual_seed(cfg.seed)
        net = build_model(cfg, data.num_classes).to(device).to(memory_format=torch.channels_last)
        x = data.train_x[train_idx].to(device)
        y = data.train_y[train_idx].to(device)
        val = None if val_idx is None else (data.train_x[val_idx].to(device), data.train_y[val_idx].to(device))
        # fold j's rows continue the step count of the folds before it: one axis for the pruner
        fold_progress = None if on_progress is None else _fold_rows(on_progress, j, k)
        result = fit(
            net,
            spec,
            cfg.hp,
            x,
            y,
            seed=cfg.seed,
            precision=cfg.precision,
            val=val,
            on_progress=fold_progress,
            compile=compile,
            probe=cfg.probe,
        )
        results.append(result)
        t0 = time.perf_counter()
        if val is None:
            ex, ey = data.test()
            ex, ey = ex.to(device), ey.to(device)
        else:
            ex, ey = val
        probs = predict(net, ex, cfg.precision)
        t_eval += time.perf_counter() - t0
        val_scores.append(classification_metrics(probs, ey, data.num_classes))
    metrics = val_scores[0]
    if cfg.stage == "trial":
        metrics = {
            "val_accuracy": sum(m["test_accuracy"] for m in val_scores) / k,
            "val_macro_f1": sum(m["macro_f1"] for m in val_scores) / k,
        }
        if k > 1:
            metrics["fold_val_accuracy"] = [m["test_accuracy"] for m in val_scores]
    history = [dict(r, fold=j) if k > 1 else r for j, res in enumerate(results) for r in res.history]
    result = results[-1]
    train_seconds = sum(r.train_seconds for r in results)
    feature_seconds = sum(r.feature_seconds for r in results)
    images = sum(r.images_seen for r in results)
    config = cfg.to_dict()
    record = RunRecord(
        run_id=cfg.run_id,
        config=config,
        **{k: v for k, v in config.items() if k not in ("hp", "probe")},
        hparams=asdict(cfg.hp),
        probe_hparams=None if cfg.probe is None else asdict(cfg.probe),
        **metrics,
        classes=list(data.classes),
        n_train=len(folds[0][0]),
        n_eval=len(ey),
        steps=result.steps,
        probe_steps=result.probe_steps,
        min_steps=MIN_STEPS,
        augment=result.augmented,
        bn=cfg.hp.bn if spec.trains_backbone else "frozen",
        probe_cache_hit=any(r.probe_cache_hit for r in results),
        trainable_params=trainable_parameters(net, cfg),
        train_seconds=train_seconds,
        feature_seconds=feature_seconds,
        eval_seconds=t_eval,
        eval_images_per_second=k * len(ey) / t_eval if t_eval > 0 else 0.0,
        wall_seconds=time.perf_counter() - wall0,
        images_per_second=images / (train_seconds + feature_seconds) if train_seconds + feature_seconds > 0 else 0.0,
        peak_memory_mb=peak_memory_mb(device),
        history=history,
        provenance=Provenance(**provenance(device)),
    )
    if save_predictions is not None:
        write_predictions(save_predictions, probs, ey, data.classes)
    if save_model is not None:
        atomic_write(
            save_model,
            lambda f: torch.save(
                {"state_dict": net.state_dict(), "config": json.loads(json.dumps(cfg.to_dict())), "classes": list(data.classes)},
                f,
            ),
        )
    return record


def _fold_rows(on_progress: Callable[[dict], None], fold: int, folds: int) -> Callable[[dict], None]:
    if folds == 1:
        return on_progress

    def forward(row: dict) -> None:
        on_progress({**row, "fold": fold, "step": fold * row["steps"] + row["step"], "steps": folds * row["steps"]})

    return forward


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename in (None, str(tmp)):  # name the file being written, not its temporary twin
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_predictions(path: Path, probs: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> None:
    """CSV: index (position in the test set as stored), label, prediction, one probability per class."""
    probs = probs.cpu()
    labels = labels.cpu().tolist()
    preds = probs.argmax(1).tolist()

    def write(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(["index", "label", "prediction", *[f"prob_{c}" for c in classes]])
        for i, (lab, pred, row) in enumerate(zip(labels, preds, probs.tolist(), strict=False)):
            w.writerow([i, lab, pred, *[f"{p:.6g}" for p in row]])

    atomic_write(path, write, mode="w")


def write_record(path: Path, record: RunRecord) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(record.to_dict(), indent=2)), mode="w")


def default_device(name: str = "auto") -> torch.device:
    return resolve_device(name)
