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

from bench.backbones import build_backbone, get_backbone
from bench.data import Cifar10, check_fraction, label_split, load_cifar10
from bench.engine import classification_metrics, fit, predict
from bench.methods import METHODS, SEED_NORMALISATION, SEED_RECIPE, HParams, build_net
from bench.provenance import peak_memory_mb, provenance, resolve_device
from bench.registry import UserError

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
        METHODS.get(self.method)

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
) -> RunConfig:
    """Resolve defaults (recipe, method defaults, backbone resolution) into a RunConfig."""
    spec = METHODS.get(method)
    if recipe == "seed":
        hp = SEED_RECIPE
        # The article feeds 32 px CIFAR images straight into the network.
        resolution = 32 if resolution is None else resolution
    else:
        hp = HParams().update(**spec.defaults)
        # `is None`, not `or`: an explicit 0 is bad input for RunConfig to refuse, not the default
        resolution = get_backbone(backbone).input_size if resolution is None else resolution
    hp = hp.update(**(overrides or {}))
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
    on_epoch: Callable[[dict], None] | None = None,
    save_predictions: Path | None = None,
    save_model: Path | None = None,
    compile: bool | str = False,
) -> dict:
    """Train and evaluate one run; return its record (a plain dict, JSON-ready).

    `compile` (torch.compile for the end-to-end phase) changes speed, not the result, so
    it is not part of the RunConfig or its run id.
    """
    wall0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, data.num_classes).to(device).to(memory_format=torch.channels_last)
    split = label_split(data.train_y, cfg.fraction, cfg.seed, cfg.val_fraction)
    spec = METHODS.get(cfg.method)
    idx = split.labelled if cfg.stage == "final" else split.train
    x = data.train_x[idx].to(device)
    y = data.train_y[idx].to(device)
    val = None
    if cfg.stage == "trial":
        val = (data.train_x[split.val].to(device), data.train_y[split.val].to(device))
    result = fit(net, spec, cfg.hp, x, y, seed=cfg.seed, precision=cfg.precision, val=val, on_epoch=on_epoch, compile=compile)
    t_eval = time.perf_counter()
    if cfg.stage == "final":
        ex, ey = data.test()
        ex, ey = ex.to(device), ey.to(device)
    else:
        ex, ey = val
    probs = predict(net, ex, cfg.precision)
    eval_seconds = time.perf_counter() - t_eval
    metrics = classification_metrics(probs, ey, data.num_classes)
    if cfg.stage == "trial":
        metrics = {"val_accuracy": metrics["test_accuracy"], "val_macro_f1": metrics["macro_f1"]}
    record: dict[str, Any] = {
        "run_id": cfg.run_id,
        "config": cfg.to_dict(),
        **{k: v for k, v in cfg.to_dict().items() if k != "hp"},
        "hparams": asdict(cfg.hp),
        **metrics,
        "classes": list(data.classes),
        "n_train": len(x),
        "n_eval": len(ey),
        "trainable_params": trainable_parameters(net, cfg),
        "train_seconds": result.train_seconds,
        "feature_seconds": result.feature_seconds,
        "eval_seconds": eval_seconds,
        "eval_images_per_second": len(ey) / eval_seconds if eval_seconds > 0 else 0.0,
        "wall_seconds": time.perf_counter() - wall0,
        "images_per_second": result.images_per_second,
        "peak_memory_mb": peak_memory_mb(device),
        "history": result.history,
        "provenance": provenance(device),
    }
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


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
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


def write_record(path: Path, record: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=2)), mode="w")


def default_device(name: str = "auto") -> torch.device:
    return resolve_device(name)
