"""`fit`: one model trained by one method, top to bottom.

    fit(net, spec, hp, FitData(x, y, val), FitContext(seed=..., ...))   # uint8 images, on the device
      1. frozen-backbone features, computed once (linear_probe, frozen rows, and the probe
         of sft* / lp_ft) from the content-keyed feature cache of the `Caches` given
      2. linear_probe: the row *is* the probe: `fit_probe` (protocol v3: a converged logistic
         regression, its L2 strength cross-validated) on those features. sft* / lp_ft: H_f = the
         linear_probe row's model for the same images (`fit_probe` again, served from the probe
         cache when already fitted with these caches: it is deterministic)
      3. hp.steps optimiser steps (the cell's budget S, bench/budget.py) with a linear
         warm-up, end to end on augmented batches, or on cached features for frozen rows
      4. every S/10 steps a history row (loss, train accuracy, validation accuracy when a
         validation split is given), a typed `HistoryRow` -> on_progress (Optuna reports and prunes there)

BatchNorm (protocol v2, one policy for every method): a frozen backbone is always in eval
mode; a trained one keeps its pretrained running statistics in train and eval when
`hp.bn == "frozen"` (its affine parameters still train), or uses batch statistics when
`hp.bn == "train"`. So at step 0 every probe-initialised model's logits are the linear
probe's, and a step at learning rate 0 leaves them there (tests/test_engine.py).

Precision: bf16 autocast where asked (`precision="bf16"`), fp32 otherwise; channels_last
memory format always for conv nets (it is faster on CPU and on CUDA here).

Speed (measured in docs/speed.md, `python cli.py perf`):
- frozen-backbone features come from the `Caches` given (a sweep's: one per process, over the
  on-disk store its workers and resumes share), keyed by the content of the weights, the input
  adapter, the precision and the images, so the trials of one sweep cell encode their images
  once, not once per trial (nor once per worker)
  (`feature_cache="trial"` recomputes per fit, `"off"` on every batch: the baselines);
- `FitContext.compile` (the `compile_spec` of True, a mode such as "reduce-overhead", or a backend name) runs the encoder (input
  adapter and backbone) of the end-to-end phase through `torch.compile` (bench/train/compiling.py:
  one graph per backbone, resolution, batch, precision and BatchNorm policy, reused by every trial),
  compiled in a warm-up outside `train_seconds`; it changes speed, not the protocol, so it is not
  part of a run's id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.data import augment
from bench.models.hparams import HParams, ProbeSpec
from bench.models.kinds import MethodSpec
from bench.models.methods import Net, out_features
from bench.run_config import check_fit
from bench.train.caches import Caches
from bench.train.compiling import compile_encoder, warm_up
from bench.train.context import FitContext, FitData
from bench.train.evaluate import predict
from bench.train.features import encode_all
from bench.train.loop import FitResult, StepPlan, freeze, set_train_mode, train_steps
from bench.train.meter import count
from bench.train.probe import fit_probe, record_probe


class FrozenFeatures:
    """The frozen backbone's features of one fit's images, from where `ctx.feature_cache` says ("shared":
    the context's cache; "trial": computed once here; "off": the backbone again on every batch).

    Called with a batch's indices it gives that batch's features, whatever the mode. The context's
    meter counts the images each mode puts through the backbone (a cache hit: none)."""

    def __init__(self, net: Net, x: torch.Tensor, ctx: FitContext, result: FitResult) -> None:
        self.net, self.x, self.ctx, self.result = net, x, ctx, result
        self.train: torch.Tensor | None = None
        self.val: torch.Tensor | None = None
        self._net_key: str | None = None

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        if ctx.feature_cache == "shared":
            assert ctx.caches is not None, "a started context has its caches"
            cache = ctx.caches.features
            self._net_key = self._net_key or cache.net_key(self.net, ctx.precision)  # hash the weights once per fit
            out, hit = cache.encode(self.net, images, ctx.precision, self._net_key, meter=ctx.meter)
            self.result.feature_cache_hits += int(hit)
            return out
        return encode_all(self.net, images, ctx.precision, meter=ctx.meter)

    def compute(self, val_images: torch.Tensor | None) -> None:
        """Encode the training images (and `val_images`, for frozen rows) once, unless the mode is "off"."""
        if self.ctx.feature_cache == "off":
            return
        t0 = time.perf_counter()
        self.train = self._encode(self.x)
        if val_images is not None:
            self.val = self._encode(val_images)
        self.result.feature_seconds = time.perf_counter() - t0

    def matrix(self) -> torch.Tensor:
        """Every training image's features (the probe is fitted on all of them at once)."""
        if self.train is not None:
            return self.train
        return encode_all(self.net, self.x, self.ctx.precision, meter=self.ctx.meter)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.train is not None:
            return self.train[idx]
        count(self.ctx.meter, len(idx))
        with torch.no_grad():  # feature_cache="off": the frozen backbone again, as encode_all runs it
            self.net.backbone.eval()
            return self.net.encode(self.x[idx]).float()


def _evaluator(net: Net, data: FitData, val_feats: torch.Tensor | None, ctx: FitContext) -> Callable[[], float] | None:
    """Validation accuracy of `net` as it is now (None without a validation split)."""
    if data.val is None:
        return None
    vx, vy = data.val

    def evaluate() -> float:
        probs = predict(net, vx, ctx.precision, feats=val_feats, meter=ctx.meter)
        return float((probs.argmax(1) == vy).float().mean())

    return evaluate


@dataclass
class _Fit:
    """One fit under way: its network, its images, what it has recorded so far, its frozen features."""

    net: Net
    data: FitData
    result: FitResult
    feats: FrozenFeatures


def fit(net: Net, spec: MethodSpec, hp: HParams, data: FitData, ctx: FitContext) -> FitResult:
    """Train `net` by method `spec` with hyperparameters `hp` on `data` (uint8 images and labels on the
    training device), as `ctx` says (seed, precision, probe settings, caches, progress, compile)."""
    check_fit(spec, hp)
    ctx = ctx.started(data.x.device, Caches() if ctx.caches is None else ctx.caches)
    trains = spec.trains_backbone
    result = FitResult()
    run = _Fit(net, data, result, FrozenFeatures(net, data.x, ctx, result))
    if spec.probe_init or not trains:
        run.feats.compute(data.val[0] if data.val is not None and not trains else None)
    if spec.is_probe or spec.probe_init:
        _probe_phase(run, ctx.probe or ProbeSpec(), ctx)
        if spec.is_probe:
            return result
    _train_phase(run, spec, hp, ctx)
    return result


def _probe_phase(run: _Fit, probe: ProbeSpec, ctx: FitContext) -> None:
    """The linear probe into `net.head`: the row itself (linear_probe) or H_f's start (sft*, lp_ft)."""
    assert ctx.caches is not None, "a started context has its caches"
    net, y = run.net, run.data.y
    state, rows, hit = fit_probe(run.feats.matrix(), y, out_features(net.head), probe, ctx.caches.probes)
    record_probe(run.result, rows, hit)
    net.head.load_state_dict(state)
    ctx.report(run.result.history[-1])  # the contract: on_progress sees "probe" rows too (progress bars, heartbeats)


def _train_phase(run: _Fit, spec: MethodSpec, hp: HParams, ctx: FitContext) -> None:
    """The method's own hp.steps steps: end to end on (augmented) images, or on cached features
    when the backbone is frozen. End to end, the encoder is compiled when asked (and warmed up
    before the timed steps); the head and branch run eagerly on its output."""
    net, x, result, trains = run.net, run.data.x, run.result, spec.trains_backbone
    freeze(net, False)
    freeze(net.backbone, not trains)
    head_params = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    groups = [{"params": head_params}]
    if trains:
        groups.append({"params": list(net.backbone.parameters()), "lr": hp.lr * hp.backbone_lr_mult})
        forward = _end_to_end(run, hp, ctx)
    else:
        feats = run.feats

        def forward(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            # a side branch sees the same (unaugmented) view as the cached features
            return net.from_features(feats(idx), x[idx] if net.branch_on_image else None)

    plan = StepPlan(
        groups=groups,
        forward=forward,
        train_mode=lambda: set_train_mode(net, trains, hp.bn),
        evaluate=_evaluator(net, run.data, run.feats.val, ctx),
        augmented=trains and hp.augment,
    )
    train_steps(plan, hp, run.data.y, ctx, result)
    result.steps = hp.steps


def _end_to_end(run: _Fit, hp: HParams, ctx: FitContext) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """The forward pass of a batch through the whole network (augmented when hp says so), its encoder
    compiled when `ctx.compile` asks (compiled and warmed up here, outside the timed steps)."""
    net, x = run.net, run.data.x
    how = ctx.compile
    encode = net.encode if how is None else compile_encoder(net, how)

    def batch(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return augment(x[idx], g) if hp.augment else x[idx]

    def forward(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = batch(idx, g)
        count(ctx.meter, len(xb))
        # net(xb) is exactly this: from_features(encode(xb), xb)
        return net.from_features(encode(xb), xb)

    if how is not None:
        set_train_mode(net, True, hp.bn)  # the copy warmed up must be in the steps' modes
        sample = torch.arange(min(hp.batch_size, len(x)), device=x.device)
        gen = ctx.gen
        probe_gen = torch.Generator(device=gen.device).set_state(gen.get_state())  # the steps' draws stay untouched
        run.result.compile_seconds += warm_up(net, how, batch(sample, probe_gen), ctx.precision)
    return forward
