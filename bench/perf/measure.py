"""The measurements of one case (`Bench`): (a) the ceiling, (b) the suite's loop, (c) the article's
pipeline (article.py), (d) frozen-backbone trials with and without the caches, (e) evaluation.

Every measurement warms up first (oneDNN and cuDNN pick and build kernels on the first
calls) and then times whole steps between device syncs, stopping after `steps` steps or
`max_seconds`, whichever comes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from bench.budget import REPORTS, report_interval
from bench.data import Cifar10, label_split
from bench.history import HistoryRow
from bench.models.backbones import get_backbone
from bench.models.hparams import HParams
from bench.models.kinds import METHODS
from bench.perf.article import article_pipeline, article_units
from bench.perf.interleave import Interleaved, interleave
from bench.perf.rows import PerfRow, RowId, measured
from bench.perf.settings import ARTICLE_BATCH, FORMATS, FORWARD_BATCHES, PerfCase, PerfSettings
from bench.run_config import RunConfig, make_config
from bench.timing import timed
from bench.train.caches import Caches
from bench.train.compiling import compile_spec
from bench.train.context import FitContext, FitData
from bench.train.device import autocast, eval_batch, sync
from bench.train.evaluate import predict
from bench.train.fit import fit
from bench.train.loop import FitResult, make_optimizer
from bench.train.run import build_model

FROZEN_TRIALS = ("sft-mlp-frozen",)  # (d): the frozen rows whose searches train a head on cached features


# ---------------------------------------------------------------- the measurements


class _Enough(Exception):
    """Raised from `on_progress` once (b) has timed its intervals (as the sweep's pruner stops a trial)."""


class Bench:
    """All measurements of one case; builds every model the same way the suite does."""

    def __init__(
        self, case: PerfCase, data: Cifar10, device: torch.device, settings: PerfSettings, caches: Caches | None = None
    ) -> None:
        self.case, self.data, self.device, self.s = case, data, device, settings
        self.caches = Caches() if caches is None else caches
        spec = get_backbone(case.backbone)
        ok, _ = spec.available()
        # Speed does not depend on the weights' values, so a backbone without offline
        # weights is measured from a random initialisation, and the table says so.
        self.pretrained = ok
        self.weights = "pretrained" if ok else "scratch (random init; same speed)"
        self.suite_precision = make_config(
            backbone=case.backbone,
            method="finetune",
            fraction=1.0,
            seed=0,
            resolution=case.resolution,
            device=device,
            data=data,
            pretrained=ok,
            precision=settings.precision,
        ).precision

    def config(
        self, method: str, overrides: dict, precision: str | None = None, stage: str = "final", fraction: float = 1.0
    ) -> RunConfig:
        """The run config the suite would make for `method` on this case (seed 0, the case's resolution)."""
        return make_config(
            backbone=self.case.backbone,
            method=method,
            fraction=fraction,
            seed=0,
            resolution=self.case.resolution,
            pretrained=self.pretrained,
            overrides=overrides,
            stage=stage,
            precision=precision or self.suite_precision,
            device=self.device,
            data=self.data,
        )

    def net(self, cfg: RunConfig, fmt: str = "channels_last") -> nn.Module:
        """The run's model as `execute` builds it (seed 0), in memory format `fmt`."""
        torch.manual_seed(0)
        return build_model(cfg, self.data.num_classes).to(self.device).to(memory_format=FORMATS[fmt])

    # a: the ceiling
    def ceiling(self) -> list[PerfRow]:
        """(a) forward + backward + step on synthetic tensors in memory, every precision x memory format;
        and forward only, at every batch of FORWARD_BATCHES in the fastest configuration."""
        s, dev = self.s, self.device
        hp = HParams().update(**METHODS.get("finetune").defaults, batch_size=s.batch_size)
        cfg = self.config("finetune", {"batch_size": s.batch_size})
        rows = []
        gen = torch.Generator().manual_seed(0)
        for precision in s.ceiling_precisions:
            for fmt in s.ceiling_formats:
                step = self.train_step(cfg, hp, precision, fmt, gen)
                units = [(s.batch_size * n, t) for n, t in timed(step, dev, s.warmup, s.steps, s.max_seconds, s.per_sync)]
                rows.append(measured(RowId(self.case, "a_train", precision, fmt, s.batch_size), self.weights, units))
                del step
                rows.append(self.forward(cfg, precision, fmt, eval_batch(dev, self.case.resolution)))
        by_id = {r.id: r for r in rows}
        # The forward ceiling is also the fastest batch: try the others in the fastest configuration.
        best = max((r.id for r in rows if r.id.path == "a_forward"), key=lambda i: by_id[i].images_per_second)
        for batch in FORWARD_BATCHES:
            if batch != best.batch_size:
                rows.append(self.forward(cfg, best.precision, best.memory_format, batch))
        return rows

    def train_step(self, cfg: RunConfig, hp: HParams, precision: str, fmt: str, gen: torch.Generator) -> Callable[[], None]:
        """(a)'s unit: one forward + backward + optimiser step of a fresh model on synthetic tensors in memory."""
        s, dev, res = self.s, self.device, self.case.resolution
        net = self.net(cfg, fmt).train()
        x = torch.randn(s.batch_size, 3, res, res, generator=gen).to(dev).contiguous(memory_format=FORMATS[fmt])
        y = torch.randint(0, 10, (s.batch_size,), generator=gen).to(dev)
        opt = make_optimizer([{"params": list(net.parameters())}], hp)

        def step() -> None:
            with autocast(dev, precision):
                loss = F.cross_entropy(net.head(net.backbone(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def forward(self, cfg: RunConfig, precision: str, fmt: str, batch: int) -> PerfRow:
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
        units = [(batch * n, t) for n, t in timed(fwd, dev, 1, steps, s.max_seconds, s.per_sync)]
        return measured(RowId(self.case, "a_forward", precision, fmt, batch), self.weights, units)

    def ceiling_article_config(self) -> PerfRow:
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

        units = [(ARTICLE_BATCH * n, t) for n, t in timed(step, dev, s.warmup, s.steps, s.max_seconds, s.per_sync)]
        rid = RowId(self.case, "a_train", "fp32", "contiguous", ARTICLE_BATCH, setting="article")
        return measured(rid, self.weights, units, "article config")

    # b: the suite's loop
    def suite_units(self, precision: str | None = None) -> list[tuple[int, float]]:
        """`fit` (finetune) timed per history interval: the engine writes a row every
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

        def progress(row: HistoryRow) -> None:
            if row.tick:
                return  # a live view's step count between history rows: not an interval end
            ends.append(time.perf_counter())
            if len(ends) > s.intervals:
                raise _Enough

        try:
            kw = dict(on_progress=progress, compile=compile_spec(s.compile), caches=self.caches)
            fit(net, METHODS.get("finetune"), cfg.hp, FitData(x, y), FitContext(seed=0, precision=precision, **kw))
        except _Enough:
            pass
        return [(n, b - a) for a, b in pairwise(ends)]

    def suite(self, precision: str | None = None) -> PerfRow:
        """(b) as a row: `suite_units` once."""
        precision = precision or self.suite_precision
        k = self.s.interval_steps
        note = f"finetune, augmentation on, history intervals of {k} steps after a warm-up interval"
        note += f", compile={self.s.compile}" if self.s.compile else ""
        units = self.suite_units(precision)
        rid = RowId(self.case, "b_suite_train", precision, "channels_last", self.s.batch_size)
        return measured(rid, self.weights, units, note)

    # c: the article's pipeline
    def article(self) -> PerfRow:
        """(c) the article's own loop (article.py)."""
        return article_pipeline(self)

    # d: frozen-backbone trials
    def frozen_data(self) -> tuple[float, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(d)'s cell: (fraction, its training part, its validation part) on the device."""
        s, dev = self.s, self.device
        # At least 5 images per class (a small test set), else the 1% cell.
        per_class = int(torch.bincount(self.data.train_y).min())
        fraction = min(1.0, max(s.frozen_fraction, 5 / per_class))
        split = label_split(self.data.train_y, fraction, 0)
        train = (self.data.train_x[split.train].to(dev), self.data.train_y[split.train].to(dev))
        val = (self.data.train_x[split.val].to(dev), self.data.train_y[split.val].to(dev))
        return fraction, train, val

    def frozen_trial(
        self, cfg: RunConfig, hp: HParams, train: tuple[torch.Tensor, torch.Tensor], val: tuple, mode: str
    ) -> tuple[FitResult, float]:
        """One frozen-row trial as the sweep runs it: (its FitResult, seconds), the feature cache `mode`."""
        net = self.net(cfg)
        sync(self.device)
        t0 = time.perf_counter()
        ctx = FitContext(seed=0, precision=self.suite_precision, feature_cache=mode, probe=cfg.probe, caches=self.caches)
        r = fit(net, METHODS.get(cfg.method), hp, FitData(*train, val=val), ctx)
        sync(self.device)
        return r, time.perf_counter() - t0

    def frozen(self) -> list[PerfRow]:
        """(d) sft-mlp-frozen trials: recomputing the backbone every step, then with the caches cold (the
        cell's first trial) and warm (its later trials). Protocol v3's linear_probe has no trials (it is
        solved, its strength cross-validated inside the fit), so it is no longer measured here."""
        s = self.s
        fraction, (x, y), val = self.frozen_data()
        rows = []
        # sft-mlp-frozen trains a head on cached features after its linear probe (fit_probe), which
        # a later trial of the cell takes from the probe cache.
        for method in FROZEN_TRIALS:
            cfg = self.config(method, {"steps": s.frozen_steps}, stage="trial", fraction=fraction)
            # label, feature cache, repeats: the warm trials are later trials of the same cell
            for label, mode, repeats in (("recompute", "off", 1), ("cached_cold", "shared", 1), ("cached_warm", "shared", 3)):
                if label == "cached_cold":
                    self.caches.clear()
                units, hits, probe_hits = [], 0, 0
                for k in range(repeats):
                    # a later trial has other hyperparameters; the probe it starts from stays the cell's one
                    hp = cfg.hp.update(lr=cfg.hp.lr * 0.5 ** (k + (label == "cached_warm")))
                    r, seconds = self.frozen_trial(cfg, hp, (x, y), val, mode)
                    units.append((r.images_seen, seconds))
                    hits += r.feature_cache_hits
                    probe_hits += r.probe_cache_hit
                probe = " after its linear probe" if r.probe_steps else ""
                note = f"{method}, {r.steps} steps{probe}, {len(x)}+{len(val[0])} images"
                note += f", cache hits {hits}, probe cache hits {probe_hits}" if mode == "shared" else ""
                path = f"d_{method}_{label}"
                prec = self.suite_precision
                rows.append(measured(RowId(self.case, path, prec, "channels_last", hp.batch_size), self.weights, units, note))
        self.caches.clear()
        return rows

    # e: evaluation
    def evaluation(self) -> PerfRow:
        """(e) `predict` on the test images, timed in chunks."""
        s, dev = self.s, self.device
        cfg = self.config("finetune", {})
        net = self.net(cfg)
        ex, _ = self.data.test()
        if s.eval_images:
            ex = ex[: s.eval_images]
        ex = ex.to(dev)
        batch = eval_batch(dev, self.case.resolution)
        predict(net, ex[:2048], self.suite_precision)  # warm-up
        units = []
        chunk = 2048  # every test image once, in chunks timed one by one
        for i in range(0, len(ex), chunk):
            sync(dev)
            t0 = time.perf_counter()
            predict(net, ex[i : i + chunk], self.suite_precision)
            sync(dev)
            units.append((len(ex[i : i + chunk]), time.perf_counter() - t0))
        note = f"predict: uint8 -> probabilities, {len(ex)} test images in chunks of {chunk}"
        rid = RowId(self.case, "e_suite_eval", self.suite_precision, "channels_last", batch)
        return measured(rid, self.weights, units, note)


# ---------------------------------------------------------------- in alternation


def _total(units: list[tuple[int, float]]) -> tuple[int, float]:
    return sum(n for n, _ in units), sum(t for _, t in units)


def alternating(b: Bench, rows: list[PerfRow], rounds: int) -> list[Interleaved]:
    """The issue's ratios measured again in alternation (interleave.py), each side a short sample:
    b/a (the suite's loop against the fastest ceiling configuration, same batch), b/c (against the
    article's pipeline), e/a (evaluation against the fastest forward-only configuration), and d
    (a warm cached frozen trial against one recomputing the backbone)."""
    s, name = b.s, b.case.name
    out: list[Interleaved] = []
    best = max((r for r in rows if r.id.path == "a_train" and r.id.setting == "suite"), key=lambda r: r.images_per_second)
    hp = HParams().update(**METHODS.get("finetune").defaults, batch_size=s.batch_size)
    cfg = b.config("finetune", {"batch_size": s.batch_size})
    step = b.train_step(cfg, hp, best.id.precision, best.id.memory_format, torch.Generator().manual_seed(0))
    k = s.interval_steps * s.intervals  # the ceiling's sample trains as many steps as the suite's

    def ceiling() -> tuple[int, float]:
        return s.batch_size * k, sum(t for _, t in timed(step, b.device, 0, k, float("inf"), s.per_sync))

    def suite() -> tuple[int, float]:
        return _total(b.suite_units())

    suite_desc = f"suite ({b.suite_precision}, channels_last, batch {s.batch_size})"
    ceiling_desc = f"ceiling ({best.id.precision}, {best.id.memory_format}, batch {s.batch_size})"
    out.append(Interleaved(name, "b/a", interleave(suite, ceiling, rounds), suite_desc, ceiling_desc))
    out.append(Interleaved(name, "b/c", interleave(suite, lambda: _total(article_units(b)), rounds), suite_desc, "article"))
    out.append(_eval_against_forward(b, rows, rounds))
    out += _frozen_against_recompute(b, rounds)
    return out


def _eval_against_forward(b: Bench, rows: list[PerfRow], rounds: int) -> Interleaved:
    """e/a: `predict` on test images against the fastest forward-only configuration, same images."""
    dev = b.device
    fwd = max((r for r in rows if r.id.path == "a_forward"), key=lambda r: r.images_per_second)
    ex = b.data.test()[0][:2048].to(dev)
    cfg = b.config("finetune", {})
    net = b.net(cfg)
    ref = b.net(cfg, fwd.id.memory_format).eval()
    xe = torch.randn(len(ex), 3, b.case.resolution, b.case.resolution, generator=torch.Generator().manual_seed(2)).to(dev)
    xe = xe.contiguous(memory_format=FORMATS[fwd.id.memory_format])

    def evaluation() -> tuple[int, float]:
        sync(dev)
        t0 = time.perf_counter()
        predict(net, ex, b.suite_precision)
        sync(dev)
        return len(ex), time.perf_counter() - t0

    @torch.inference_mode()
    def forward() -> tuple[int, float]:
        sync(dev)
        t0 = time.perf_counter()
        with autocast(dev, fwd.id.precision):
            for i in range(0, len(xe), fwd.id.batch_size):
                ref.head(ref.backbone(xe[i : i + fwd.id.batch_size]))
        sync(dev)
        return len(xe), time.perf_counter() - t0

    den = f"forward ceiling ({fwd.id.precision}, {fwd.id.memory_format}, batch {fwd.id.batch_size})"
    return Interleaved(b.case.name, "e/a", interleave(evaluation, forward, rounds), f"eval of {len(ex)} test images", den)


def _frozen_against_recompute(b: Bench, rounds: int) -> list[Interleaved]:
    """d: a later (warm) trial of a frozen row against the same trial recomputing the backbone every step."""
    fraction, train, val = b.frozen_data()
    out = []
    for method in FROZEN_TRIALS:
        cfg = b.config(method, {"steps": b.s.frozen_steps}, stage="trial", fraction=fraction)
        tick = iter(range(1, 10**6))

        def trial(mode: str, cfg: RunConfig = cfg, tick: Iterator[int] = tick) -> tuple[int, float]:
            hp = cfg.hp.update(lr=cfg.hp.lr * 0.5 ** next(tick))  # a later trial: other hyperparameters
            r, seconds = b.frozen_trial(cfg, hp, train, val, mode)
            return r.images_seen, seconds

        b.caches.clear()
        ratios = interleave(lambda: trial("shared"), lambda: trial("off"), rounds)  # warm-up round fills the caches
        out.append(Interleaved(b.case.name, f"d {method} warm", ratios, "cached (warm) trial", "trial recomputing"))
    b.caches.clear()
    return out


def measure_case(
    case: PerfCase,
    data: Cifar10,
    device: torch.device,
    settings: PerfSettings,
    log: Callable[[str], None],
    caches: Caches | None = None,
) -> tuple[list[PerfRow], list[Interleaved]]:
    """Every measurement of one case, in the order that keeps them comparable, each logged as it lands;
    then the compared pairs again in alternation (`settings.rounds` rounds; 0: not at all)."""
    b = Bench(case, data, device, settings, caches)
    rows: list[PerfRow] = []

    def add(new: PerfRow | list[PerfRow]) -> None:
        for r in new if isinstance(new, list) else [new]:
            rows.append(r)
            log(f"{r.id.case.name:<22} {r.id.path:<30} {r.describe():>42}  (load {r.loadavg_1m:.2f})")

    add(b.ceiling())
    # Right after the ceiling, as in a run evaluation follows training: the allocator is in
    # the same (warm) state for both, which moved the forward rate by 10-25% here.
    add(b.evaluation())
    add(b.ceiling_article_config())
    add(b.suite())
    best = max((r for r in rows if r.id.path == "a_train" and r.id.setting == "suite"), key=lambda r: r.images_per_second)
    if best.id.precision != b.suite_precision:
        add(alternative(b.suite(best.id.precision), f"at the ceiling's precision ({best.id.precision})"))
    add(b.article())
    add(b.frozen())
    pairs: list[Interleaved] = []
    if settings.rounds:
        log(f"{case.name:<22} in alternation, {settings.rounds} rounds ...")
        pairs = alternating(b, rows, settings.rounds)
        for m in pairs:
            flag = "" if m.trusted else "  UNTRUSTED (range too wide)"
            log(f"{case.name:<22} {m.metric:<30} {m.describe()}{flag}")
    return rows, pairs


def alternative(row: PerfRow, extra: str) -> PerfRow:
    """`row` measured again in another configuration: its own path (`<path>_alt`) and a note saying how."""
    return replace(row, id=replace(row.id, path=row.id.path + "_alt"), note=f"{row.note}; {extra}")
