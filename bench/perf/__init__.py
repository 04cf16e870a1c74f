"""How fast is one training, and where does the time go? (`python cli.py perf`)

A grid is hundreds of trainings, so the cost of one training decides which questions
a user can afford. For each case (backbone at a resolution) this measures, in one
process, on the same model and machine:

    a  ceiling    forward + backward + optimiser step on synthetic float tensors already
                  in memory, for every memory format x precision; and forward only
    b  suite      `engine.fit` (finetune) on real CIFAR-10: indexing, augmentation, the
                  input adapter, loss and accuracy bookkeeping included; timed per history
                  interval (the engine's unit of bookkeeping: one host sync per interval)
    c  article    the article's pipeline: torchvision transforms on PIL images,
                  DataLoader(num_workers=2), batch 100, fp32, default memory format
    d  frozen     one frozen-backbone trial (linear_probe, sft-mlp-frozen: both train a
                  head on cached features, sft-mlp-frozen after its linear probe) with the
                  feature cache (cold: first trial; warm: any later trial of the cell)
                  against the same trial recomputing the backbone on every step
    e  eval       `engine.predict` on the test images, against (a)'s forward-only rate

Figures are ratios first (these machines are shared and noisy), with the load average
at measurement time beside them. Every measurement warms up first (oneDNN and cuDNN
pick and build kernels on the first calls) and then times whole steps between device
syncs, stopping after `steps` steps or `max_seconds`, whichever comes first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.budget import REPORTS, report_interval
from bench.data import Cifar10, label_split
from bench.models.backbones import build_backbone, get_backbone
from bench.models.methods import METHODS, HParams
from bench.provenance import cpu_model, git_commit, provenance
from bench.registry import UserError
from bench.registry import check_writable as registry_check_writable
from bench.train.engine import FEATURES, PROBES, _optimizer, _sync, autocast, eval_batch, fit, predict
from bench.train.run import atomic_write, build_model, make_config

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
PRECISIONS = ("fp32", "bf16")
# The article's example (../shared/seed): batch 100, SGD lr 0.001 momentum 0.9, two workers.
ARTICLE_BATCH = 100
ARTICLE_WORKERS = 2
FORWARD_BATCHES = (128, 256, 512, 1024)  # batches tried for the forward-only ceiling
# Targets of the speed issue (ratios, so that a noisy shared machine can still judge them).
TARGETS = {"b/a": 0.9, "b/c cpu": 1.5, "b/c cuda": 3.0, "d": 10.0, "e/a": 0.9}
COLUMNS = (
    "case",
    "backbone",
    "resolution",
    "weights",
    "path",
    "precision",
    "memory_format",
    "batch_size",
    "images",
    "seconds",
    "repeats",
    "images_per_second",
    "spread",
    "loadavg_1m",
    "note",
)
SUMMARY_COLUMNS = ("case", "metric", "value", "target", "met", "detail")


@dataclass(frozen=True)
class PerfCase:
    backbone: str
    resolution: int

    @property
    def name(self) -> str:
        return f"{self.backbone}@{self.resolution}"


DEFAULT_CASES = (PerfCase("resnet18", 32), PerfCase("efficientnet_lite0", 32), PerfCase("efficientnet_lite0", 64))


def parse_cases(text: str) -> list[PerfCase]:
    """'resnet18@32,efficientnet_lite0@64' -> cases; the backbone names are checked now."""
    cases = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, res = item.partition("@")
        if not res.isdigit() or not 8 <= int(res) <= 1024:
            raise UserError(f"case '{item}' is not BACKBONE@PIXELS (e.g. resnet18@32, pixels in 8..1024)")
        get_backbone(name)  # UserError with suggestions for an unknown name
        cases.append(PerfCase(name, int(res)))
    if not cases:
        raise UserError("no case given; e.g. --cases resnet18@32,efficientnet_lite0@64")
    return cases


@dataclass
class PerfSettings:
    """How long each measurement runs. `quick` is a smoke run: the ratios are rough."""

    batch_size: int = 256
    steps: int = 12  # timed training steps at most, per ceiling configuration
    warmup: int = 3
    max_seconds: float = 12.0  # per timed measurement, after warm-up (at least 2 steps)
    interval_steps: int = 4  # (b): steps per history interval (one pass over batch_size x interval_steps images)
    intervals: int = 3  # (b): timed intervals, after one warm-up interval
    article_steps: int = 20
    frozen_fraction: float = 0.01
    # (d): steps of a frozen trial (and of sft-mlp-frozen's probe): what 5 epochs of the 1% cell
    # were at batch 128, so short enough to measure; the protocol's trials are S >= 500 steps,
    # where the cache saves more (its cold cost is one feature pass, whatever S)
    frozen_steps: int = 20
    eval_images: int | None = None  # None: the whole test set
    precision: str = "auto"  # the suite's precision for (b), (d), (e); auto = the run default
    compile: bool | str = False
    workers: int = ARTICLE_WORKERS
    ceiling_precisions: tuple[str, ...] = PRECISIONS
    ceiling_formats: tuple[str, ...] = tuple(FORMATS)

    def __post_init__(self) -> None:
        if self.batch_size < 2 or self.steps < 2 or self.warmup < 1 or self.article_steps < 2:
            raise UserError("perf needs --batch-size >= 2, --steps >= 2 (warm-up >= 1)")
        if not 0 < self.frozen_fraction <= 1 or self.frozen_steps < 1:
            raise UserError("frozen-trial fraction must be in (0, 1] and steps >= 1")
        if self.interval_steps < 1 or not 1 <= self.intervals < REPORTS:
            # the engine writes REPORTS history rows per fit; one is the warm-up
            raise UserError(f"the suite's loop needs interval steps >= 1 and 1..{REPORTS - 1} timed intervals")
        if not (isinstance(self.max_seconds, int | float) and math.isfinite(self.max_seconds) and self.max_seconds > 0):
            raise UserError(f"--max-seconds must be a positive number of seconds, got {self.max_seconds}")

    @classmethod
    def quick(cls, **kw: Any) -> PerfSettings:
        quick = dict(steps=3, warmup=1, max_seconds=3.0, interval_steps=2, intervals=2, article_steps=3, eval_images=4096)
        return cls(**{**quick, **kw})


# ---------------------------------------------------------------- machine


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine(device: torch.device, command: str = "") -> dict:
    flags = cpu_flags()
    prov = provenance(device)
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (not measured on GPU)",
        "device": str(device),
        "python": prov["python"],
        "versions": prov["versions"],
        "onednn": torch.backends.mkldnn.is_available(),
        "git_commit": git_commit(),
        "hostname": platform.node(),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
    }


# ---------------------------------------------------------------- timing


def timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int, max_seconds: float) -> list[float]:
    """Seconds of each timed call: `warmup` untimed calls, then up to `steps` calls or `max_seconds`."""
    for _ in range(warmup):
        step()
    _sync(device)
    out: list[float] = []
    while len(out) < steps:
        t0 = time.perf_counter()
        step()
        _sync(device)
        out.append(time.perf_counter() - t0)
        if len(out) >= 2 and sum(out) > max_seconds:
            break
    return out


def _row(
    case: PerfCase,
    weights: str,
    path: str,
    precision: str,
    fmt: str,
    batch: int,
    units: list[tuple[int, float]],
    note: str = "",
) -> dict:
    """One measurement from its timed units (images, seconds): the rate is the median unit's,
    which a burst of load from other processes moves less than the mean."""
    rates = sorted(n / t for n, t in units if t > 0)
    median = statistics.median(rates) if rates else 0.0
    seconds = statistics.median(t for _, t in units) if units else 0.0
    return {
        "case": case.name,
        "backbone": case.backbone,
        "resolution": case.resolution,
        "weights": weights,
        "path": path,
        "precision": precision,
        "memory_format": fmt,
        "batch_size": batch,
        "images": units[0][0] if units else 0,
        "seconds": round(seconds, 4),
        "repeats": len(units),
        "images_per_second": round(median, 2),
        "spread": round((rates[-1] - rates[0]) / median, 3) if len(rates) > 1 and median else 0.0,
        "loadavg_1m": loadavg(),
        "note": note,
    }


# ---------------------------------------------------------------- the measurements


class _Enough(Exception):
    """Raised from `on_progress` once (b) has timed its intervals (as the sweep's pruner stops a trial)."""


class Bench:
    """All measurements of one case; builds every model the same way the suite does."""

    def __init__(self, case: PerfCase, data: Cifar10, device: torch.device, settings: PerfSettings) -> None:
        self.case, self.data, self.device, self.s = case, data, device, settings
        spec = get_backbone(case.backbone)
        ok, _ = spec.available()
        # Speed does not depend on the weights' values, so a backbone without offline
        # weights is measured from a random initialisation, and the table says so.
        self.pretrained = ok
        self.weights = "pretrained" if ok else "scratch (random init; same speed)"
        self.suite_precision = make_config(
            case.backbone, "finetune", 1.0, 0, device=device, data=data, pretrained=ok, precision=settings.precision
        ).precision

    def config(
        self, method: str, overrides: dict, precision: str | None = None, stage: str = "final", fraction: float = 1.0
    ) -> Any:
        return make_config(
            self.case.backbone,
            method,
            fraction,
            0,
            resolution=self.case.resolution,
            pretrained=self.pretrained,
            overrides=overrides,
            stage=stage,
            precision=precision or self.suite_precision,
            device=self.device,
            data=self.data,
        )

    def net(self, cfg: Any, fmt: str = "channels_last") -> nn.Module:
        torch.manual_seed(0)
        return build_model(cfg, self.data.num_classes).to(self.device).to(memory_format=FORMATS[fmt])

    # a: the ceiling
    def ceiling(self) -> list[dict]:
        s, dev, res = self.s, self.device, self.case.resolution
        hp = HParams().update(**METHODS.get("finetune").defaults, batch_size=s.batch_size)
        cfg = self.config("finetune", {"batch_size": s.batch_size})
        rows = []
        gen = torch.Generator().manual_seed(0)
        for precision in s.ceiling_precisions:
            for fmt in s.ceiling_formats:
                net = self.net(cfg, fmt).train()
                x = torch.randn(s.batch_size, 3, res, res, generator=gen).to(dev).contiguous(memory_format=FORMATS[fmt])
                y = torch.randint(0, 10, (s.batch_size,), generator=gen).to(dev)
                opt = _optimizer([{"params": list(net.parameters())}], hp)

                def step(
                    net: nn.Module = net, x: torch.Tensor = x, y: torch.Tensor = y, opt: Any = opt, p: str = precision
                ) -> None:
                    with autocast(dev, p):
                        loss = F.cross_entropy(net.head(net.backbone(x)).float(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                units = [(s.batch_size, t) for t in timed(step, dev, s.warmup, s.steps, s.max_seconds)]
                rows.append(_row(self.case, self.weights, "a_train", precision, fmt, s.batch_size, units))
                del net, opt
                rows.append(self.forward(cfg, precision, fmt, eval_batch(dev)))
        # The forward ceiling is also the fastest batch: try the others in the fastest configuration.
        best = max((r for r in rows if r["path"] == "a_forward"), key=_ips)
        for batch in FORWARD_BATCHES:
            if batch != best["batch_size"]:
                rows.append(self.forward(cfg, best["precision"], best["memory_format"], batch))
        return rows

    def forward(self, cfg: Any, precision: str, fmt: str, batch: int) -> dict:
        """(a) forward only: eval mode, inference mode, synthetic float input already in memory."""
        s, dev, res = self.s, self.device, self.case.resolution
        net = self.net(cfg, fmt).eval()
        xe = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(2)).to(dev)
        xe = xe.contiguous(memory_format=FORMATS[fmt])

        @torch.inference_mode()
        def fwd() -> None:
            with autocast(dev, precision):
                net.head(net.backbone(xe))

        # about as many images as the training steps see, whatever the batch
        steps = max(2, s.steps * s.batch_size // (2 * batch))
        units = [(batch, t) for t in timed(fwd, dev, 1, steps, s.max_seconds)]
        return _row(self.case, self.weights, "a_forward", precision, fmt, batch, units)

    def ceiling_article_config(self) -> dict:
        """(a) in the article's configuration (fp32, default layout, batch 100, SGD): what its loader feeds."""
        s, dev, res = self.s, self.device, self.case.resolution
        cfg = self.config("finetune", {})
        net = self.net(cfg, "contiguous").train()
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(ARTICLE_BATCH, 3, res, res, generator=gen).to(dev)
        y = torch.randint(0, 10, (ARTICLE_BATCH,), generator=gen).to(dev)
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

        def step() -> None:
            loss = F.cross_entropy(net.head(net.backbone(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        units = [(ARTICLE_BATCH, t) for t in timed(step, dev, s.warmup, s.steps, s.max_seconds)]
        return _row(self.case, self.weights, "a_train", "fp32", "contiguous", ARTICLE_BATCH, units, "article config")

    # b: the suite's loop
    def suite(self, precision: str | None = None) -> dict:
        """`engine.fit` (finetune) timed per history interval: the engine writes a row every
        report_interval(S) steps, so a budget of REPORTS x k steps gives intervals of k steps.
        The first interval warms up (kernel selection, compilation); the fit stops once the
        timed ones are done, the rest of its budget would measure nothing new."""
        s, dev = self.s, self.device
        precision = precision or self.suite_precision
        k = s.interval_steps
        n = s.batch_size * k  # one interval is one pass over these images
        steps = REPORTS * k
        assert report_interval(steps) == k
        cfg = self.config("finetune", {"batch_size": s.batch_size, "steps": steps}, precision=precision)
        net = self.net(cfg)
        x = self.data.train_x[:n].to(dev)
        y = self.data.train_y[:n].to(dev)
        ends: list[float] = []  # when each history row arrived (the engine has synced the device by then)

        def progress(row: dict) -> None:
            ends.append(time.perf_counter())
            if len(ends) > s.intervals:
                raise _Enough

        try:
            fit(net, METHODS.get("finetune"), cfg.hp, x, y, seed=0, precision=precision, on_progress=progress, compile=s.compile)
        except _Enough:
            pass
        note = f"finetune, augmentation on, history intervals of {k} steps after a warm-up interval"
        note += f", compile={s.compile}" if s.compile else ""
        units = [(n, b - a) for a, b in pairwise(ends)]
        return _row(self.case, self.weights, "b_suite_train", precision, "channels_last", s.batch_size, units, note)

    # c: the article's pipeline
    def article(self) -> dict:
        from PIL import Image
        from torchvision import transforms

        s, dev, res = self.s, self.device, self.case.resolution

        class ArticleCifar(torch.utils.data.Dataset):
            """torchvision.datasets.CIFAR10.__getitem__ on the suite's arrays (HWC uint8 -> PIL -> transform)."""

            def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable) -> None:
                self.data = x.permute(0, 2, 3, 1).contiguous().numpy()
                self.targets = y.tolist()
                self.transform = transform

            def __len__(self) -> int:
                return len(self.data)

            def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
                return self.transform(Image.fromarray(self.data[i])), self.targets[i]

        resize = [transforms.Resize(res)] if res != 32 else []  # the same model input as (a) and (b)
        transform = transforms.Compose(
            [
                transforms.RandomHorizontalFlip(),
                transforms.RandomCrop(32, padding=4),
                *resize,
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )
        total = ARTICLE_BATCH * (s.warmup + s.article_steps + 4)
        ds = ArticleCifar(self.data.train_x[:total], self.data.train_y[:total], transform)
        torch.manual_seed(0)
        feats, _ = build_backbone(get_backbone(self.case.backbone), self.pretrained)
        model = nn.Sequential(feats, nn.Linear(get_backbone(self.case.backbone).feature_dim, 10)).to(dev)
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        loader = torch.utils.data.DataLoader(ds, batch_size=ARTICLE_BATCH, shuffle=True, num_workers=s.workers)
        running_loss = 0.0
        times: list[float] = []
        t0 = time.perf_counter()
        # A step is timed from the end of the previous one, so waiting for the loader counts.
        for i, (inputs, labels) in enumerate(loader):
            inputs, labels = inputs.to(dev), labels.to(dev)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            t1 = time.perf_counter()
            if i >= s.warmup:
                times.append(t1 - t0)
                if len(times) >= s.article_steps or (len(times) >= 2 and sum(times) > s.max_seconds):
                    break
            t0 = t1
        note = f"PIL transforms, DataLoader(num_workers={s.workers}), SGD, loss.item() per step" + (
            ", Resize on PIL" if resize else ""
        )
        units = [(ARTICLE_BATCH, t) for t in times]
        return _row(self.case, self.weights, "c_article_train", "fp32", "contiguous", ARTICLE_BATCH, units, note)

    # d: frozen-backbone trials
    def frozen(self) -> list[dict]:
        s, dev = self.s, self.device
        # At least 5 images per class (a small test set), else the 1% cell.
        per_class = int(torch.bincount(self.data.train_y).min())
        fraction = min(1.0, max(s.frozen_fraction, 5 / per_class))
        split = label_split(self.data.train_y, fraction, 0)
        x, y = self.data.train_x[split.train].to(dev), self.data.train_y[split.train].to(dev)
        val = (self.data.train_x[split.val].to(dev), self.data.train_y[split.val].to(dev))
        rows = []
        # Both frozen rows train a head on cached features; sft-mlp-frozen first fits its linear
        # probe (engine.fit_probe), which a later trial of the cell takes from engine.PROBES.
        for method in ("linear_probe", "sft-mlp-frozen"):
            spec = METHODS.get(method)
            cfg = self.config(method, {"steps": s.frozen_steps}, stage="trial", fraction=fraction)
            # label, feature cache, repeats: the warm trials are later trials of the same cell
            for label, mode, repeats in (("recompute", "off", 1), ("cached_cold", "shared", 1), ("cached_warm", "shared", 3)):
                if label == "cached_cold":
                    FEATURES.clear()
                    PROBES.clear()
                units, hits, probe_hits = [], 0, 0
                for k in range(repeats):
                    # a later trial has other hyperparameters (so linear_probe's fit is not a
                    # PROBES hit); the probe sft-mlp-frozen starts from stays the cell's one
                    hp = cfg.hp.update(lr=cfg.hp.lr * 0.5 ** (k + (label == "cached_warm")))
                    net = self.net(cfg)
                    _sync(dev)
                    t0 = time.perf_counter()
                    r = fit(
                        net, spec, hp, x, y, seed=0, precision=self.suite_precision, val=val, feature_cache=mode, probe=cfg.probe
                    )
                    _sync(dev)
                    units.append((r.images_seen, time.perf_counter() - t0))
                    hits += r.feature_cache_hits
                    probe_hits += r.probe_cache_hit
                probe = f" after a {r.probe_steps}-step linear probe" if r.probe_steps else ""
                note = f"{method}, {r.steps} steps{probe}, {len(x)}+{len(val[0])} images"
                note += f", cache hits {hits}, probe cache hits {probe_hits}" if mode == "shared" else ""
                path = f"d_{method}_{label}"
                prec = self.suite_precision
                rows.append(_row(self.case, self.weights, path, prec, "channels_last", hp.batch_size, units, note))
        FEATURES.clear()
        PROBES.clear()
        return rows

    # e: evaluation
    def evaluation(self) -> dict:
        s, dev = self.s, self.device
        cfg = self.config("finetune", {})
        net = self.net(cfg)
        ex, _ = self.data.test()
        if s.eval_images:
            ex = ex[: s.eval_images]
        ex = ex.to(dev)
        batch = eval_batch(dev)
        predict(net, ex[:2048], self.suite_precision)  # warm-up
        units = []
        chunk = 2048  # every test image once, in chunks timed one by one
        for i in range(0, len(ex), chunk):
            _sync(dev)
            t0 = time.perf_counter()
            predict(net, ex[i : i + chunk], self.suite_precision)
            _sync(dev)
            units.append((len(ex[i : i + chunk]), time.perf_counter() - t0))
        note = f"engine.predict: uint8 -> probabilities, {len(ex)} test images in chunks of {chunk}"
        return _row(self.case, self.weights, "e_suite_eval", self.suite_precision, "channels_last", batch, units, note)


def measure_case(
    case: PerfCase, data: Cifar10, device: torch.device, settings: PerfSettings, log: Callable[[str], None]
) -> list[dict]:
    b = Bench(case, data, device, settings)
    rows: list[dict] = []

    def add(new: dict | list[dict]) -> None:
        for r in new if isinstance(new, list) else [new]:
            rows.append(r)
            log(f"{r['case']:<22} {r['path']:<30} {_cfg(r):>42}  (load {r['loadavg_1m']:.2f})")

    add(b.ceiling())
    # Right after the ceiling, as in a run evaluation follows training: the allocator is in
    # the same (warm) state for both, which moved the forward rate by 10-25% here.
    add(b.evaluation())
    add(b.ceiling_article_config())
    add(b.suite())
    best = max((r for r in rows if r["path"] == "a_train" and r["note"] != "article config"), key=_ips)
    if best["precision"] != b.suite_precision:
        add(replace_note(b.suite(best["precision"]), f"at the ceiling's precision ({best['precision']})"))
    add(b.article())
    add(b.frozen())
    return rows


def replace_note(row: dict, extra: str) -> dict:
    return {**row, "path": row["path"] + "_alt", "note": f"{row['note']}; {extra}"}


# ---------------------------------------------------------------- ratios


def _ips(r: dict) -> float:
    return r["images_per_second"]


def _cfg(r: dict) -> str:
    return f"{r['precision']} {r['memory_format']} bs {r['batch_size']}: {_ips(r):.0f} img/s"


def _ratio(case: str, metric: str, value: float | None, target: float | None, detail: str) -> dict:
    met = "" if target is None or value is None else ("yes" if value >= target else "no")
    return {
        "case": case,
        "metric": metric,
        "value": None if value is None else round(value, 3),
        "target": target,
        "met": met,
        "detail": detail,
    }


def summarise_case(case: str, rows: list[dict], device_type: str) -> list[dict]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["path"], []).append(r)
    first = lambda path: by.get(path, [None])[0]  # noqa: E731
    a_train = [r for r in by.get("a_train", []) if r["note"] != "article config"]
    a_best = max(a_train, key=_ips, default=None)
    a_fwd_best = max(by.get("a_forward", []), key=_ips, default=None)
    b, c, e = first("b_suite_train"), first("c_article_train"), first("e_suite_eval")
    out = []
    if a_best and b:
        out.append(_ratio(case, "b/a", _ips(b) / _ips(a_best), TARGETS["b/a"], f"suite {_cfg(b)}; ceiling {_cfg(a_best)}"))
        same = [r for r in a_train if (r["precision"], r["memory_format"]) == (b["precision"], b["memory_format"])]
        if same:
            detail = f"ceiling {_cfg(same[0])}: the loop's own overhead"
            out.append(_ratio(case, "b/a same config", _ips(b) / _ips(same[0]), None, detail))
    b_alt = first("b_suite_train_alt")
    if a_best and b_alt:
        out.append(_ratio(case, "b/a at ceiling precision", _ips(b_alt) / _ips(a_best), None, f"suite {_cfg(b_alt)}"))
    if b and c:
        target = TARGETS["b/c cuda" if device_type == "cuda" else "b/c cpu"]
        out.append(_ratio(case, "b/c", _ips(b) / _ips(c), target, f"suite {_cfg(b)}; article {_cfg(c)}"))
    art = [r for r in by.get("a_train", []) if r["note"] == "article config"]
    if art and c:
        out.append(
            _ratio(
                case, "c/a article config", _ips(c) / _ips(art[0]), None, f"the article's loop over its ceiling {_cfg(art[0])}"
            )
        )
    for method in ("linear_probe", "sft-mlp-frozen"):
        off = first(f"d_{method}_recompute")
        for label in ("cached_warm", "cached_cold"):
            cached = first(f"d_{method}_{label}")
            if off and cached and cached["seconds"] > 0:
                target = TARGETS["d"] if label == "cached_warm" else None
                detail = f"trial {off['seconds']:.2f} s recomputing vs {cached['seconds']:.3f} s cached ({off['note']})"
                out.append(_ratio(case, f"d {method} {label.split('_')[1]}", off["seconds"] / cached["seconds"], target, detail))
    if e and a_fwd_best:
        out.append(
            _ratio(case, "e/a", _ips(e) / _ips(a_fwd_best), TARGETS["e/a"], f"eval {_cfg(e)}; forward ceiling {_cfg(a_fwd_best)}")
        )
        same = [
            r for r in by.get("a_forward", []) if (r["precision"], r["memory_format"]) == (e["precision"], e["memory_format"])
        ]
        if same:
            ref = max(same, key=_ips)
            out.append(_ratio(case, "e/a same config", _ips(e) / _ips(ref), None, f"forward ceiling {_cfg(ref)}"))
    return out


def summarise(rows: list[dict], device_type: str) -> list[dict]:
    """The ratios the issue sets targets for, per case."""
    out = []
    for case in dict.fromkeys(r["case"] for r in rows):
        out += summarise_case(case, [r for r in rows if r["case"] == case], device_type)
    return out


# ---------------------------------------------------------------- output


def to_csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def md_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown(info: dict, rows: list[dict], summary: list[dict], projection: str = "") -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    parts = [
        "# sft-bench perf",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads; "
        f"bf16 ISA: {info['cpu_bf16']}); "
        f"GPU: {info['gpu']}; device: {info['device']}",
        f"- versions: Python {info['python']}, {versions}; git {info['git_commit']}",
        f"- started {info['started_at']}; 1-minute load average {info['loadavg_start']:.2f} at start, "
        f"{info.get('loadavg_end', float('nan')):.2f} at end (per row below: `loadavg_1m`)",
        "",
        "## Ratios and targets",
        "",
        md_table(summary, SUMMARY_COLUMNS),
        "",
        "## Measurements",
        "",
        md_table(rows, COLUMNS),
        "",
    ]
    if projection:
        parts += [projection, ""]
    return "\n".join(parts)


def write_outputs(out: Path, info: dict, rows: list[dict], summary: list[dict], projection: str = "") -> list[Path]:
    """perf.csv (every measurement), perf_summary.csv (ratios), perf.md, perf.json; each written whole or not at all."""
    out = Path(out)
    files = {
        out / "perf.csv": to_csv(rows, COLUMNS),
        out / "perf_summary.csv": to_csv(summary, SUMMARY_COLUMNS),
        out / "perf.md": markdown(info, rows, summary, projection),
        out / "perf.json": json.dumps({"machine": info, "rows": rows, "summary": summary}, indent=2, default=str),
    }
    for path, text in files.items():
        atomic_write(path, lambda f, text=text: f.write(text), mode="w")
    return list(files)


def check_writable(folder: Path) -> None:
    registry_check_writable(folder, option="--out")


def read_rows(path: Path) -> list[dict]:
    """A perf.csv back into rows (numbers as numbers)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"case", "path", "images_per_second"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise UserError(f"{path} is not a perf.csv (no rows, or no column {sorted(missing)})")
    for r in rows:
        for k in ("resolution", "batch_size", "images"):
            r[k] = int(float(r[k] or 0))
        for k in ("seconds", "images_per_second", "loadavg_1m"):
            r[k] = float(r[k] or "nan")
    return rows


def run_perf(
    cases: list[PerfCase],
    data: Cifar10,
    device: torch.device,
    settings: PerfSettings,
    out: Path,
    log: Callable[[str], None] = print,
    projection: Callable[[list[dict]], str] | None = None,
    command: str = "",
) -> tuple[dict, list[dict], list[dict], list[Path]]:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info = machine(device, command)
    info["settings"] = {k: v for k, v in asdict(settings).items()}
    rows: list[dict] = []
    for case in cases:
        log(f"-- {case.name} (load {loadavg():.2f})")
        rows += measure_case(case, data, device, settings, log)
    info["loadavg_end"] = loadavg()
    summary = summarise(rows, device.type)
    text = projection(rows) if projection else ""
    files = write_outputs(out, info, rows, summary, text)
    return info, rows, summary, files


# ---------------------------------------------------------------- sweep-level cost


def sweep_cost(folder: Path) -> dict:
    """Wall time, trial states and final runs of a finished sweep folder (runs.csv, optuna.journal).

    The wall time is from the first trial's start to the last final run's finish (or the
    last trial's end when there is no runs.csv): the time a user waits, not a sum over
    runs. The fraction pruned counts every finished trial of every study in the journal.
    `protocol`: the methods.md version the folder was produced under (1: epoch budgets, as
    results/quick; 2: step budgets; None: no readable config.toml), so a reader knows what
    its figures (the pruned fraction above all) were measured under.
    """
    folder = Path(folder)
    out: dict[str, Any] = {"folder": str(folder), "trials": 0, "states": {}, "studies": 0, "final_trials": 0}
    out["protocol"] = sweep_protocol(folder)
    starts, ends, trial_seconds, final_seconds = [], [], [], []
    journal = folder / "optuna.journal"
    if journal.is_file():
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        studies = storage.get_all_studies()
        for st in studies:
            # The sweep records its final runs in studies named "<experiment>:final/...": not search trials.
            final = ":final/" in st.study_name
            out["studies"] += 0 if final else 1
            for t in storage.get_all_trials(st._study_id, deepcopy=False):
                if final:
                    out["final_trials"] += 1
                else:
                    out["trials"] += 1
                    out["states"][t.state.name] = out["states"].get(t.state.name, 0) + 1
                if t.datetime_start:
                    starts.append(t.datetime_start.astimezone(timezone.utc))
                if t.datetime_complete:
                    ends.append(t.datetime_complete.astimezone(timezone.utc))
                    if t.datetime_start:
                        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
                        (final_seconds if final else trial_seconds).append(seconds)
    finished = sum(out["states"].get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
    out["pruned_fraction"] = out["states"].get("PRUNED", 0) / finished if finished else None
    out["trial_seconds"] = sum(trial_seconds)
    out["final_trial_seconds"] = sum(final_seconds)
    runs = folder / "runs.csv"
    out["final_runs"] = 0
    out["final_run_seconds"] = 0.0
    if runs.is_file():
        with open(runs, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        out["final_runs"] = len(rows)
        out["final_run_seconds"] = sum(float(r.get("wall_seconds") or 0) for r in rows)
        for r in rows:
            if r.get("finished_at"):
                end = datetime.fromisoformat(r["finished_at"].replace("Z", "+00:00"))
                ends.append(end if end.tzinfo else end.replace(tzinfo=timezone.utc))
                starts.append(ends[-1] - timedelta(seconds=float(r.get("wall_seconds") or 0)))
    out["wall_seconds"] = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    out["first_start"] = min(starts).isoformat(timespec="seconds") if starts else None
    out["last_end"] = max(ends).isoformat(timespec="seconds") if ends else None
    return out


def sweep_protocol(folder: Path) -> int | None:
    """1 when the folder's config.toml has protocol v1's epoch keys, 2 when it has none, None without one."""
    import tomllib

    try:
        with open(Path(folder) / "config.toml", "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    from bench.sweep.experiment import V1_KEYS, V1_SEARCH_KEYS

    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    return 1 if set(raw) & set(V1_KEYS) or set(search) & set(V1_SEARCH_KEYS) else 2


PROTOCOLS = {1: "v1 (epoch budgets)", 2: "v2 (step budgets)", None: "unknown (no config.toml)"}


def sweep_markdown(cost: dict) -> str:
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(cost["states"].items())) or "no journal"
    wall = cost["wall_seconds"]
    pruned = cost["pruned_fraction"]
    lines = [
        f"## Sweep-level cost: `{cost['folder']}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| wall time (first trial start to last final run end) | {'n/a' if wall is None else f'{wall / 60:.1f} min'} |",
        f"| protocol (../shared/docs/methods.md) | {PROTOCOLS[cost.get('protocol')]} |",
        f"| studies (searches: one per cell, or per cell and seed) | {cost['studies']} |",
        f"| trials | {cost['trials']} ({states}) |",
        f"| fraction of finished trials pruned | {'n/a' if pruned is None else f'{pruned:.1%}'} |",
        f"| search trial time, summed | {cost['trial_seconds'] / 60:.1f} min |",
        f"| final runs recorded in the journal | {cost['final_trials']}, {cost['final_trial_seconds'] / 60:.1f} min summed |",
        f"| final runs (runs.csv) | {cost['final_runs']}, {cost['final_run_seconds'] / 60:.1f} min summed |",
        f"| from | {cost['first_start']} to {cost['last_end']} |",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- projection of a grid


@dataclass(frozen=True)
class GridRun:
    """What one cell of a grid costs to run: its searches' trials and its final runs (protocol v2)."""

    backbone: str
    method: str
    recipe: str
    fraction: float
    resolution: int
    trials: int  # search trials of the cell, every search seed's together (0: the seed recipe, no search)
    search_seeds: int  # searches of the cell (per_seed: one per seed; shared: one)
    final_runs: int
    steps: int  # the cell's step budget S: every trial and final run of every method trains S steps
    batch_size: int
    folds: int  # trainings per trial (k-fold cross-validation; 1: one validation split)
    frozen: bool  # the backbone never trains: its runs train a head on cached features
    features: bool  # its runs encode the labelled images once (frozen rows, and the probe of sft* / lp_ft)
    prune_at: float  # share of its steps a pruned trial trains at least (search.pruner_warmup)


def grid_runs(path: Path) -> tuple[list[GridRun], Any]:
    """The cells of an experiment file as the sweep reads it (bench.sweep.experiment), and the experiment.

    Each cell's step budget is what the sweep's `make_config` gives it: the grid's fixed
    `steps`, else the protocol's rule of its labelled-set size (bench/budget.py), the
    article's 10 epochs at batch 100 for the seed recipe."""
    from bench.budget import seed_recipe_steps, step_budget
    from bench.models.methods import SEED_RECIPE
    from bench.sweep.experiment import read_toml, resolve

    exp = resolve(read_toml(Path(path)), str(path))
    out = []
    for cell in exp.cells():
        seed = cell.recipe == "seed"
        spec = METHODS.get(cell.method)
        # The sweep runs the article's recipe at its 32 px, whatever the grid's resolution.
        res = 32 if seed else (exp.resolution_for(cell.backbone) or get_backbone(cell.backbone).input_size)
        # as make_config resolves them: recipe, the method's defaults, then the grid's fixed values
        base = SEED_RECIPE if seed else HParams()
        hp = base.update(**spec.defaults).update(**({} if seed else exp.fixed_hparams(cell.method)))
        n = sum(_labelled_counts(cell.fraction, exp.val_fraction))
        if exp.steps is not None:
            steps = exp.steps
        else:
            steps = seed_recipe_steps(n, hp.batch_size) if seed else step_budget(n, hp.batch_size)
        out.append(
            GridRun(
                cell.backbone,
                cell.method,
                cell.recipe,
                cell.fraction,
                int(res),
                0 if seed else exp.trials * len(exp.search_seeds),
                0 if seed else len(exp.search_seeds),
                len(exp.seeds),
                steps,
                hp.batch_size,
                exp.cv_folds,
                not spec.trains_backbone,
                spec.probe_init or not spec.trains_backbone,
                float(exp.search.pruner_warmup),
            )
        )
    return out, exp


def _labelled_counts(fraction: float, val_fraction: float = 0.2, per_class: int = 5000, classes: int = 10) -> tuple[int, int]:
    """(train, val) images of a trial at this label fraction, as `label_split` draws them."""
    k = int(round(fraction * per_class))
    n_val = max(1, int(round(val_fraction * k)))
    return (k - n_val) * classes, n_val * classes


def project_grid(path: Path, rows: list[dict], pruned_fraction: float | None = None, pruned_source: str = "") -> dict:
    """Cost of a grid from measured throughputs (rows of a perf run); assumptions in `notes`.

    Per cell, with S its step budget and B its batch: every search trial (trials x search
    seeds, x folds) that trains the backbone sees S x B images at the suite's training
    rate (b) and validates every S/10 steps (10 passes over its validation images) at the
    evaluation rate (e); a cell whose runs need frozen features (frozen rows, the probe of
    sft* / lp_ft) encodes its labelled images once per search seed and fold (the feature
    cache), and frozen rows train only heads on them (not counted). Then one final run per
    seed: S x B training images when it trains the backbone, the features when it needs
    them, and 10,000 test images. Pruned trials stop at search.pruner_warmup of their steps.
    """
    runs, exp = grid_runs(path)
    speed: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r["path"] in ("b_suite_train", "e_suite_eval"):
            speed.setdefault((r["backbone"], int(r["resolution"])), {})[r["path"]] = float(r["images_per_second"])
    p = pruned_fraction or 0.0
    cells = []
    for g in runs:
        t = speed.get((g.backbone, g.resolution), {})
        t_train, t_eval = t.get("b_suite_train"), t.get("e_suite_eval")
        n_train, n_val = _labelled_counts(g.fraction, exp.val_fraction)
        n = n_train + n_val
        v = n_val if g.folds == 1 else n / g.folds  # validation images of one training of a trial
        run = 0 if g.frozen else g.steps * g.batch_size  # training images of one run (or fold of a trial)
        search = g.trials * g.folds * (1 - p * (1 - g.prune_at))  # trainings, pruned ones counted in part
        features = g.search_seeds * g.folds * ((n - v) + (v if g.frozen else 0)) if g.features else 0
        train_imgs = search * run + g.final_runs * run
        eval_imgs = search * (0 if g.frozen else REPORTS * v) + features + g.final_runs * ((n if g.features else 0) + 10_000)
        hours = (train_imgs / t_train + eval_imgs / t_eval) / 3600 if t_train and t_eval else None
        cells.append(
            {
                **asdict(g),
                "train_images": int(train_imgs),
                "eval_images": int(eval_imgs),
                "train_ips": t_train,
                "eval_ips": t_eval,
                "hours": hours,
            }
        )
    tuned = [g for g in runs if g.trials]
    per_search = exp.trials
    searches = f"{tuned[0].search_seeds} search seed(s), search mode {exp.search.mode}" if tuned else "no search"
    folds = f", {exp.cv_folds}-fold cross-validated trials" if exp.cv_folds > 1 else ""
    budget = f"the grid's fixed steps = {exp.steps}" if exp.steps is not None else "the protocol's rule"
    source = pruned_source or ("measured on the --sweep folder" if pruned_fraction is not None else "no sweep given")
    notes = [
        f"grid {path}: {len(runs)} cells ({len(tuned)} tuned with {per_search if tuned else 0} trials per search x "
        f"{searches}{folds}; {len(runs) - len(tuned)} with the article's fixed recipe), "
        f"{runs[0].final_runs if runs else 0} final run(s) per cell",
        f"steps: each cell's step budget S ({budget}: max(500, ceil(10 n / batch)) for n labelled images, "
        "10 epochs at batch 100 for the seed recipe); every trial and final run that trains the backbone "
        "sees S x batch images, and a trial validates every S/10 steps (10 passes over its validation images)",
        "frozen-backbone rows (linear_probe, sft-mlp-frozen, sft-side-frozen) and the linear probe that sft* and lp_ft "
        "start from cost one feature pass over the labelled images per search seed and fold and per final run, thanks "
        "to the shared feature cache; head-only steps on cached features are ignored",
        f"pruned trials: {p:.0%} of trials ({source}), assumed to stop at {runs[0].prune_at if runs else 0.5:.0%} of "
        "their steps (search.pruner_warmup: the earliest the pruner may stop a trial)",
        "rates: the suite's training (b) and evaluation (e) images/s measured by `perf` on the device that wrote them, "
        "at batch 256; start-up, model building and Optuna overheads are not counted",
    ]
    total = sum(c["hours"] for c in cells if c["hours"] is not None)
    missing = sorted({f"{c['backbone']}@{c['resolution']}" for c in cells if c["hours"] is None})
    return {"cells": cells, "notes": notes, "hours": total, "missing": missing}


ASSUMED_GPU_RATES = (2_000, 5_000, 10_000)  # training images/s, for scale only: not measured


def projection_markdown(proj: dict, assumed_rates: tuple[int, ...] = ASSUMED_GPU_RATES) -> str:
    """Per backbone and resolution: images to process, hours at the measured rates, and hours at
    a few assumed one-GPU rates (labelled as assumptions) so the scale is visible before a GPU run."""
    by: dict[tuple, dict] = {}
    for c in proj["cells"]:
        k = (c["backbone"], c["resolution"])
        agg = by.setdefault(k, {"cells": 0, "train_images": 0, "eval_images": 0, "hours": 0.0, "ips": c["train_ips"]})
        agg["cells"] += 1
        agg["train_images"] += c["train_images"]
        agg["eval_images"] += c["eval_images"]
        agg["hours"] = None if c["hours"] is None or agg["hours"] is None else agg["hours"] + c["hours"]

    def assumed(train: float, evals: float, rate: float) -> float:
        return (train / rate + evals / (3 * rate)) / 3600  # forward only: about a third of a training step

    rate_cols = " | ".join(f"h at {r / 1000:g}k img/s (assumed)" for r in assumed_rates)
    lines = [
        "## Projected cost of the grid",
        "",
        "| backbone @ px | cells | training images (M) | evaluation images (M) | measured train img/s | hours measured | "
        f"{rate_cols} |",
        "|---|---|---|---|---|---|" + "---|" * len(assumed_rates),
    ]
    for (b, res), a in by.items():
        hours = "not measured" if a["hours"] is None else f"{a['hours']:.1f}"
        ips = "not measured" if not a["ips"] else f"{a['ips']:.0f}"
        millions = f"{a['train_images'] / 1e6:.1f} | {a['eval_images'] / 1e6:.2f}"
        extra = " | ".join(f"{assumed(a['train_images'], a['eval_images'], r):.1f}" for r in assumed_rates)
        lines.append(f"| {b} @ {res} | {a['cells']} | {millions} | {ips} | {hours} | {extra} |")
    total_train = sum(a["train_images"] for a in by.values())
    total_eval = sum(a["eval_images"] for a in by.values())
    extra = ", ".join(f"{assumed(total_train, total_eval, r):.0f} h at {r / 1000:g}k" for r in assumed_rates)
    lines += [
        "",
        f"Total: {total_train / 1e6:.1f} M training images and {total_eval / 1e6:.1f} M evaluated; "
        f"{proj['hours']:.1f} h at the measured rates (measured cases only); {extra} images/s (assumed rates).",
    ]
    if proj["missing"]:
        lines.append(f"Not measured on this device (add them with `perf --cases`): {', '.join(proj['missing'])}.")
    lines += ["", "Assumptions:", *[f"- {n}" for n in proj["notes"]]]
    lines.append(
        f"- the assumed rates ({', '.join(f'{r:,}' for r in assumed_rates)} training images/s, evaluation 3x faster) are "
        "not measurements: they only show the scale until `perf --device cuda` measures the GPU"
    )
    return "\n".join(lines)
