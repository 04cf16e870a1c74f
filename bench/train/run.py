"""One run: its `RunConfig` (bench/run_config.py: frozen, torch-free, its hash the run id) -> a
JSON record (`execute` -> `RunRecord`), its predictions and its model.

    python cli.py run --backbone efficientnet_lite0 --method sft --fraction 0.1 --resolution 64
    python cli.py run --recipe article --method article_sft --backbone resnet18   # the article
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.budget import MIN_STEPS
from bench.data import Cifar10, cv_folds, label_split
from bench.files import atomic_write
from bench.history import HistoryRow
from bench.models.backbones import BackboneCache, build_backbone, get_backbone
from bench.models.hparams import ARTICLE_NORMALISATION
from bench.models.kinds import METHODS
from bench.models.methods import Backbone, InputAdapter, build_net
from bench.provenance import peak_memory_mb, provenance
from bench.records import Provenance, RunRecord
from bench.run_config import RunConfig
from bench.train.caches import Caches
from bench.train.compiling import graph_count
from bench.train.context import FitContext, FitData
from bench.train.evaluate import Scores, classification_metrics, predict
from bench.train.fit import fit
from bench.train.loop import FitResult
from bench.train.meter import BackboneMeter


def get_data(data_dir: str | Path, caches: Caches | None = None) -> Cifar10:
    """The dataset in `data_dir`, from `caches.data` when given (loaded once per owner: the sweep runs
    hundreds of trainings on the same arrays), else loaded now."""
    return (caches if caches is not None else Caches()).data.get(data_dir)


def build_model(cfg: RunConfig, num_classes: int, backbones: BackboneCache | None = None) -> torch.nn.Module:
    """The run's network: its backbone (pretrained or not), the method's head and the input adapter
    (the article's recipe normalises with 0.5 / 0.5, whatever the backbone's own statistics).
    `backbones`: the owner's built backbones, copied instead of built again (the same model)."""
    bspec = get_backbone(cfg.backbone)
    feats, pretrained_head = (backbones.build if backbones is not None else build_backbone)(bspec, cfg.pretrained)
    mean, std = ARTICLE_NORMALISATION if cfg.recipe == "article" else (bspec.mean, bspec.std)
    backbone = Backbone(feats, pretrained_head, bspec.feature_dim)
    return build_net(cfg.method, backbone, InputAdapter(mean, std, cfg.resolution), num_classes, cfg.hp)


def trainable_parameters(net: torch.nn.Module, cfg: RunConfig) -> int:
    """Parameters the run trains: the head and branch, and the backbone's when the method trains it."""
    spec = METHODS.get(cfg.method)
    backbone = sum(p.numel() for p in net.backbone.parameters()) if spec.trains_backbone else 0
    rest = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("backbone."))
    return backbone + rest


@dataclass(frozen=True)
class Fold:
    """What one training of a run trains and scores on: the seed whose subset it is (its
    initialisation and batch order too), training indices, validation indices (None: the test set)."""

    seed: int
    train: torch.Tensor
    val: torch.Tensor | None


def run_folds(cfg: RunConfig, data: Cifar10) -> list[Fold]:
    """What the run trains and scores on: the whole labelled subset then the test set (final), its
    train / validation split (trial), or k stratified folds of it (trial, cv_folds > 1); for a
    pooled trial, that for each seed of its pool in turn (one training each, exactly the one a
    trial of that seed alone would run)."""
    out: list[Fold] = []
    for seed in cfg.pool or (cfg.seed,):
        split = label_split(data.train_y, cfg.fraction, seed, cfg.val_fraction)
        if cfg.stage == "final":
            out.append(Fold(seed, split.labelled, None))
        elif cfg.cv_folds > 1:
            out += [Fold(seed, t, v) for t, v in cv_folds(data.train_y, cfg.fraction, seed, cfg.cv_folds)]
        else:
            out.append(Fold(seed, split.train, split.val))
    return out


@dataclass
class FoldResult:
    """One fold's training and its scores on what it was evaluated on."""

    net: torch.nn.Module
    fit: FitResult
    probs: torch.Tensor
    labels: torch.Tensor
    scores: Scores
    eval_seconds: float
    n_train: int  # the images it trained on


def run_fold(cfg: RunConfig, data: Cifar10, fold: Fold, ctx: FitContext, device: torch.device) -> FoldResult:
    """Build the model, train it on the fold's training images, and score it on its validation
    images (or on the test set: the only place a final run reads it). `ctx` gives the caches (set),
    progress, compile and meter; the fold's seed and the config's precision and probe go into it here."""
    caches, meter = ctx.caches, ctx.meter
    assert caches is not None, "a run's context has its caches"
    torch.manual_seed(fold.seed)
    net = build_model(cfg, data.num_classes, caches.backbones).to(device).to(memory_format=torch.channels_last)
    # the dataset is on the device once per owner; a fold's images are a gather there
    resident = caches.data.on(data, device)
    train_idx = fold.train.to(device)
    val_idx = None if fold.val is None else fold.val.to(device)
    x, y = resident.train_x[train_idx], resident.train_y[train_idx]
    val = None if val_idx is None else (resident.train_x[val_idx], resident.train_y[val_idx])
    spec = METHODS.get(cfg.method)
    result = fit(net, spec, cfg.hp, FitData(x, y, val), replace(ctx, seed=fold.seed, precision=cfg.precision, probe=cfg.probe))
    t0 = time.perf_counter()
    if val is None:
        ex, ey = resident.test()  # counted on `data` (Cifar10.test)
    else:
        ex, ey = val
    feats = None
    if not spec.trains_backbone:
        # a frozen backbone's features of the evaluation images: computed once per backbone and
        # image set (the test set: once for every final run of every frozen row), bit-identical to
        # the full forward pass `predict` would run (the same batches, the same kernels)
        feats, hit = caches.features.encode(net, ex, cfg.precision, meter=meter)
        result.feature_cache_hits += int(hit)
    probs = predict(net, ex, cfg.precision, feats=feats, meter=meter)
    seconds = time.perf_counter() - t0
    scores = classification_metrics(probs, ey, data.num_classes)
    return FoldResult(net, result, probs, ey, scores, seconds, len(fold.train))


def execute(
    cfg: RunConfig,
    data: Cifar10,
    device: torch.device,
    ctx: FitContext | None = None,
    save: SaveTo | None = None,
) -> RunRecord:
    """Train and evaluate one run; return its record.

    `ctx`: how it runs (its `on_progress`, `compile`, `caches`, `meter`; the seed, precision and probe
    are the config's). `compile` (torch.compile for the end-to-end phase) changes speed, not the
    result, so it is not part of the RunConfig or its run id. `caches`: the feature and probe caches
    shared with the owner's other runs (a sweep's); default: fresh ones, private to this run (the
    same record, less reuse). `meter`: counts the images through the backbone (the record's
    `backbone_images`; pass one to read the count of a run that raises, as a pruned trial does).
    `save`: where the predictions and the model go. Process settings (cuDNN's kernel search) are the
    entry point's (bench/cli/__init__.py, configure_runtime), not made here.
    """
    wall0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ctx = ctx or FitContext()
    meter = BackboneMeter() if ctx.meter is None else ctx.meter
    ctx = replace(ctx, caches=Caches() if ctx.caches is None else ctx.caches, meter=meter)
    before, graphs = meter.images, graph_count()
    folds = run_folds(cfg, data)
    k = len(folds)
    done: list[FoldResult] = []
    for j, fold in enumerate(folds):
        # fold j's rows continue the step count of the folds before it: one axis for the pruner
        progress = None if ctx.on_progress is None else _fold_rows(ctx.on_progress, j, k)
        done.append(run_fold(cfg, data, fold, replace(ctx, on_progress=progress), device))
    record = _record(cfg, data, device, done, time.perf_counter() - wall0)
    record = replace(record, backbone_images=meter.images - before, compiled_graphs=graph_count() - graphs)
    last = done[-1]
    if save is not None and save.predictions is not None:
        write_predictions(save.predictions, last.probs, last.labels, data.classes)
    if save is not None and save.model is not None:
        save_checkpoint(save.model, last.net, cfg, data.classes)
    return record


@dataclass(frozen=True)
class SaveTo:
    """Where a run's outputs beside its record go (None: not written): its test predictions (CSV) and
    its trained model (a checkpoint)."""

    predictions: Path | None = None
    model: Path | None = None


def _record(cfg: RunConfig, data: Cifar10, device: torch.device, done: list[FoldResult], wall_seconds: float) -> RunRecord:
    """The run's record from its folds: metrics (a trial's averaged over folds), counts, timings, provenance."""
    k = len(done)
    spec = METHODS.get(cfg.method)
    # a final run is scored once, on the test set; a trial on its validation fold(s), averaged
    trial, scores = cfg.stage == "trial", [d.scores for d in done]
    history = [(r.in_fold(j) if k > 1 else r).to_dict() for j, d in enumerate(done) for r in d.fit.history]
    result = done[-1].fit
    n_eval = len(done[-1].labels)
    train_seconds = sum(d.fit.train_seconds for d in done)
    feature_seconds = sum(d.fit.feature_seconds for d in done)
    compile_seconds = sum(d.fit.compile_seconds for d in done)
    t_eval = sum(d.eval_seconds for d in done)
    images = sum(d.fit.images_seen for d in done)
    config = cfg.to_dict()
    return RunRecord(
        run_id=cfg.run_id,
        config=config,
        **{key: v for key, v in config.items() if key not in ("hp", "probe", "pool")},
        pool=list(cfg.pool),
        hparams=asdict(cfg.hp),
        probe_hparams=None if cfg.probe is None else cfg.probe.as_data(),
        test_accuracy=None if trial else scores[0].accuracy,
        macro_f1=None if trial else scores[0].macro_f1,
        per_class_accuracy=None if trial else scores[0].per_class,
        val_accuracy=sum(s.accuracy for s in scores) / k if trial else None,
        val_macro_f1=sum(s.macro_f1 for s in scores) / k if trial else None,
        fold_val_accuracy=[s.accuracy for s in scores] if trial and k > 1 else None,
        classes=list(data.classes),
        n_train=done[0].n_train,
        n_eval=n_eval,
        steps=result.steps,
        probe_steps=result.probe_steps,
        min_steps=0 if spec.is_probe else MIN_STEPS,  # the probe has no step budget (protocol v3)
        augment=result.augmented,
        bn=str(cfg.hp.bn) if spec.trains_backbone else "frozen",
        probe_cache_hit=any(d.fit.probe_cache_hit for d in done),
        probe_l2=result.probe_l2,
        probe_converged=None if result.probe_converged is None else all(d.fit.probe_converged for d in done),
        feature_cache_hits=sum(d.fit.feature_cache_hits for d in done),
        trainable_params=trainable_parameters(done[-1].net, cfg),
        train_seconds=train_seconds,
        feature_seconds=feature_seconds,
        compile_seconds=compile_seconds,
        eval_seconds=t_eval,
        eval_images_per_second=k * n_eval / t_eval if t_eval > 0 else 0.0,
        wall_seconds=wall_seconds,
        images_per_second=images / (train_seconds + feature_seconds) if train_seconds + feature_seconds > 0 else 0.0,
        peak_memory_mb=peak_memory_mb(device),
        history=history,
        provenance=Provenance(**provenance(device), data_copy=data.copy),
    )


def save_checkpoint(path: Path, net: torch.nn.Module, cfg: RunConfig, classes: tuple[str, ...]) -> None:
    """The trained model with its config and classes (loads with weights_only=True)."""
    blob = {"state_dict": net.state_dict(), "config": json.loads(json.dumps(cfg.to_dict())), "classes": list(classes)}
    atomic_write(path, lambda f: torch.save(blob, f))


def _fold_rows(on_progress: Callable[[HistoryRow], None], fold: int, folds: int) -> Callable[[HistoryRow], None]:
    """`on_progress` for fold `fold`: its rows say their fold and count steps on from the folds before."""
    if folds == 1:
        return on_progress

    def forward(row: HistoryRow) -> None:
        assert row.step is not None and row.steps is not None, "progress rows count steps"
        on_progress(replace(row, fold=fold, step=fold * row.steps + row.step, steps=folds * row.steps))

    return forward


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
    """The run's JSON record, written whole or not at all."""
    atomic_write(path, lambda f: f.write(json.dumps(record.to_dict(), indent=2)), mode="w")
