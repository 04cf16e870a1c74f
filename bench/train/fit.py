"""`fit`: one model trained by one method, top to bottom.

    fit(net, spec, hp, x, y, ...)      # uint8 images and labels, already on the device
      1. frozen-backbone features, computed once (linear_probe, frozen rows, and the probe
         of sft* / lp_ft) from the content-keyed feature cache of the `Caches` given
      2. linear_probe: the row *is* the probe: `fit_probe` (protocol v3: a converged logistic
         regression, its L2 strength cross-validated) on those features. sft* / lp_ft: H_f = the
         linear_probe row's model for the same images (`fit_probe` again, served from the probe
         cache when already fitted with these caches: it is deterministic)
      3. hp.steps optimiser steps (the cell's budget S, bench/budget.py) with a linear
         warm-up, end to end on augmented batches, or on cached features for frozen rows
      4. every S/10 steps a history row (loss, train accuracy, validation accuracy when a
         validation split is given) -> on_progress (Optuna reports and prunes there)

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
- `compile=True` (or a mode such as "reduce-overhead", or a backend name) runs the encoder (input
  adapter and backbone) of the end-to-end phase through `torch.compile` (bench/train/compiling.py:
  one graph per backbone, resolution, batch, precision and BatchNorm policy, reused by every trial),
  compiled in a warm-up outside `train_seconds`; it changes speed, not the protocol, so it is not
  part of a run's id.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.data import augment
from bench.models.hparams import HParams, ProbeSpec
from bench.models.kinds import MethodSpec
from bench.models.methods import Net, out_features
from bench.run_config import check_fit
from bench.train.caches import Caches
from bench.train.compiling import compile_encoder, compile_spec, warm_up
from bench.train.evaluate import predict
from bench.train.features import FeatureCache, encode_all
from bench.train.loop import FitResult, freeze, set_train_mode, train_steps
from bench.train.meter import BackboneMeter, count
from bench.train.probe import ProbeCache, fit_probe

FEATURE_CACHE_MODES = ("shared", "trial", "off")


class FrozenFeatures:
    """The frozen backbone's features of one fit's images, from where `mode` says ("shared": the
    given cache; "trial": computed once here; "off": the backbone again on every batch).

    Called with a batch's indices it gives that batch's features, whatever the mode. `meter` counts
    the images each mode puts through the backbone (a cache hit: none)."""

    def __init__(
        self,
        net: Net,
        x: torch.Tensor,
        precision: str,
        mode: str,
        cache: FeatureCache,
        result: FitResult,
        meter: BackboneMeter | None = None,
    ) -> None:
        self.net, self.x, self.precision, self.mode, self.cache, self.result = net, x, precision, mode, cache, result
        self.meter = meter
        self.train: torch.Tensor | None = None
        self.val: torch.Tensor | None = None
        self._net_key: str | None = None

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "shared":
            self._net_key = self._net_key or self.cache.net_key(self.net, self.precision)  # hash the weights once per fit
            out, hit = self.cache.encode(self.net, images, self.precision, self._net_key, meter=self.meter)
            self.result.feature_cache_hits += int(hit)
            return out
        return encode_all(self.net, images, self.precision, meter=self.meter)

    def compute(self, val_images: torch.Tensor | None) -> None:
        """Encode the training images (and `val_images`, for frozen rows) once, unless the mode is "off"."""
        if self.mode == "off":
            return
        t0 = time.perf_counter()
        self.train = self._encode(self.x)
        if val_images is not None:
            self.val = self._encode(val_images)
        self.result.feature_seconds = time.perf_counter() - t0

    def matrix(self) -> torch.Tensor:
        """Every training image's features (the probe is fitted on all of them at once)."""
        return self.train if self.train is not None else encode_all(self.net, self.x, self.precision, meter=self.meter)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.train is not None:
            return self.train[idx]
        count(self.meter, len(idx))
        with torch.no_grad():  # feature_cache="off": the frozen backbone again, as encode_all runs it
            self.net.backbone.eval()
            return self.net.encode(self.x[idx]).float()


def _evaluator(
    net: Net,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    precision: str,
    val_feats: torch.Tensor | None,
    meter: BackboneMeter | None = None,
) -> Callable[[], float] | None:
    """Validation accuracy of `net` as it is now (None without a validation split)."""
    if val is None:
        return None
    vx, vy = val

    def evaluate() -> float:
        probs = predict(net, vx, precision, feats=val_feats, meter=meter)
        return float((probs.argmax(1) == vy).float().mean())

    return evaluate


def fit(
    net: Net,
    spec: MethodSpec,
    hp: HParams,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    precision: str = "fp32",
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    feature_cache: str = "shared",
    compile: bool | str = False,
    probe: ProbeSpec | None = None,
    caches: Caches | None = None,
    meter: BackboneMeter | None = None,
) -> FitResult:
    """Train `net` on uint8 images `x` with labels `y` (both on the training device).

    `probe`: the linear probe's settings (linear_probe and the probe-initialised methods; default
    `ProbeSpec()`).
    `caches`: the feature and probe caches shared with other fits (default: fresh ones,
    private to this fit; the model is the same either way). `feature_cache`: where
    frozen-backbone features come from: "shared" (the feature cache of `caches`), "trial"
    (computed once in this fit) or "off" (the backbone is run again on every batch, as a
    naive loop would). All three give the same model; only the time differs. `compile`:
    True (inductor), a torch.compile mode or a backend name for the encoder of the end-to-end phase
    (bench/train/compiling.py); speed only. `meter`: counts the images through the backbone.
    """
    if feature_cache not in FEATURE_CACHE_MODES:
        raise ValueError(f"feature_cache '{feature_cache}' is not one of: {', '.join(FEATURE_CACHE_MODES)}")
    check_fit(spec, hp)
    caches = Caches() if caches is None else caches
    trains = spec.trains_backbone
    torch.manual_seed(seed)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    result = FitResult()
    feats = FrozenFeatures(net, x, precision, feature_cache, caches.features, result, meter)
    if spec.probe_init or not trains:
        feats.compute(val[0] if val is not None and not trains else None)
    evaluate = _evaluator(net, val, precision, feats.val, meter)
    if spec.is_probe or spec.probe_init:
        _probe_phase(net, probe or ProbeSpec(), y, result, feats, caches.probes, on_progress)
        if spec.is_probe:
            return result
    _train_phase(net, spec, hp, x, y, gen, precision, result, feats, evaluate, on_progress, compile, meter)
    return result


def _probe_phase(
    net: Net,
    probe: ProbeSpec,
    y: torch.Tensor,
    result: FitResult,
    feats: FrozenFeatures,
    probes: ProbeCache,
    on_progress: Callable[[dict], None] | None,
) -> None:
    """The linear probe into `net.head`: the row itself (linear_probe) or H_f's start (sft*, lp_ft)."""
    state = fit_probe(feats.matrix(), y, out_features(net.head), probe, result, probes=probes)
    net.head.load_state_dict(state)
    if on_progress is not None:
        on_progress(result.history[-1])  # the contract: on_progress sees "probe" rows too (progress bars, heartbeats)


def _train_phase(
    net: Net,
    spec: MethodSpec,
    hp: HParams,
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    precision: str,
    result: FitResult,
    feats: FrozenFeatures,
    evaluate: Callable[[], float] | None,
    on_progress: Callable[[dict], None] | None,
    compile: bool | str,
    meter: BackboneMeter | None = None,
) -> None:
    """The method's own hp.steps steps: end to end on (augmented) images, or on cached features
    when the backbone is frozen. End to end, the encoder is compiled when asked (and warmed up
    before the timed steps); the head and branch run eagerly on its output."""
    trains = spec.trains_backbone
    freeze(net, False)
    freeze(net.backbone, not trains)
    head_params = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    groups = [{"params": head_params}]
    if trains:
        groups.append({"params": list(net.backbone.parameters()), "lr": hp.lr * hp.backbone_lr_mult})
        how = compile_spec(compile)
        encode = net.encode if how is None else compile_encoder(net, how)

        def batch(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return augment(x[idx], g) if hp.augment else x[idx]

        def forward(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            xb = batch(idx, g)
            count(meter, len(xb))
            # net(xb) is exactly this: from_features(encode(xb), xb)
            return net.from_features(encode(xb), xb)

        if how is not None:
            set_train_mode(net, trains, hp.bn)  # the copy warmed up must be in the steps' modes
            sample = torch.arange(min(hp.batch_size, len(x)), device=x.device)
            probe_gen = torch.Generator(device=gen.device).set_state(gen.get_state())  # the steps' draws stay untouched
            result.compile_seconds += warm_up(net, how, batch(sample, probe_gen), precision)
    else:

        def forward(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            # a side branch sees the same (unaugmented) view as the cached features
            return net.from_features(feats(idx), x[idx] if net.branch_on_image else None)

    train_steps(
        groups,
        hp,
        len(x),
        forward,
        y,
        gen,
        precision,
        result,
        "train",
        train_mode=lambda: set_train_mode(net, trains, hp.bn),
        evaluate=evaluate,
        on_progress=on_progress,
        augmented=trains and hp.augment,
    )
    result.steps = hp.steps
