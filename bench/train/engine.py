"""The one training loop every method uses, top to bottom.

    fit(net, spec, hp, x, y, ...)      # uint8 images and labels, already on the device
      1. frozen-backbone features, computed once (linear_probe, frozen rows, and the probe
         of sft* / lp_ft) from the content-keyed `FEATURES` cache
      2. linear_probe: the row *is* the probe: `fit_probe` on those features. sft* / lp_ft:
         H_f = the linear_probe row's model for the same data, seed and probe hyperparameters
         (`fit_probe` again, served from `PROBES` when already fitted in this process)
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

Speed (measured in docs/benchmarks.md, `python cli.py perf`):
- frozen-backbone features come from `FEATURES`, a per-process cache keyed by the
  content of the weights, the input adapter, the precision and the images, so the
  trials of one sweep cell encode their images once, not once per trial
  (`feature_cache="trial"` recomputes per fit, `"off"` on every batch: the baselines);
- the optimiser is the fused (one kernel) implementation where torch has one;
- loss and accuracy are summed on the device: one host sync per history row;
- `compile=True` (or a backend name) runs the end-to-end forward/backward through
  `torch.compile`; it changes speed, not results, so it is not part of a run's id.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.budget import report_interval
from bench.data import augment
from bench.models.methods import HParams, MethodSpec, Net
from bench.registry import UserError

EVAL_BATCH = 1024  # evaluation and feature batches on CUDA
# On CPU, small evaluation batches are faster: 128 ran EfficientNet-Lite0 inference at
# 1.5x the rate of 1024 here (its activations stay in cache and below glibc's mmap
# threshold, so no fresh pages per batch); ResNet-18 within 10% (docs/benchmarks.md).
CPU_EVAL_BATCH = 128


def eval_batch(device: torch.device) -> int:
    """The evaluation / feature-extraction batch for a device (the results do not depend on it)."""
    return EVAL_BATCH if device.type == "cuda" else CPU_EVAL_BATCH


FEATURE_CACHE_MODES = ("shared", "trial", "off")


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the sweep prunes such a trial and records why."""


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0
    feature_seconds: float = 0.0
    # one (images, seconds) per history row: steady-state speed for `perf`
    interval_seconds: list[tuple[int, float]] = field(default_factory=list)
    feature_cache_hits: int = 0
    steps: int = 0  # optimiser steps of the method's own training (the budget S)
    probe_steps: int = 0  # head-only steps of the linear probe it started from (compute beside S)
    probe_cache_hit: bool = False
    augmented: bool = False  # whether any training batch was augmented

    @property
    def images_per_second(self) -> float:
        """Training images per second, the one-off feature pass of frozen phases included."""
        seconds = self.train_seconds + self.feature_seconds
        return self.images_seen / seconds if seconds > 0 else 0.0


def autocast(device: torch.device, precision: str) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def encode_all(net: Net, x: torch.Tensor, precision: str, batch: int | None = None) -> torch.Tensor:
    """Backbone features for every image, in eval mode, as fp32 (batch: `eval_batch` of the device)."""
    batch = batch or eval_batch(x.device)
    was = net.training
    net.eval()
    with autocast(x.device, precision):
        out = torch.cat([net.encode(x[i : i + batch]).float() for i in range(0, len(x), batch)])
    net.train(was)
    return out


def _fingerprint(h: Any, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape, layout and bytes to `h`, without copying dense CPU tensors."""
    t = t.detach().cpu()
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)  # the same memory, now contiguous; the layout is part of the key
        h.update(b"channels_last")
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))


class FeatureCache:
    """Frozen-backbone features shared by every fit in the process, least recently used out.

    Why: a sweep trains hundreds of heads on the same frozen backbone and the same
    images (every linear_probe and sft-with-multiplier-0 trial, and the probe phase of
    every sft / lp_ft trial); only the head's hyperparameters change. The key is a hash
    of what the features depend on (backbone weights and BatchNorm statistics, input
    adapter, precision, device, images), never of names, so a hit returns exactly what
    `encode_all` would: a scratch backbone with another seed, or a backbone that has
    been trained, is another key. Hashing (SHA-256, accelerated on x86) runs at roughly
    1 GB/s here: about 50 ms for ResNet-18's weights, once per fit.
    """

    def __init__(self, max_mb: float | None = None) -> None:
        if max_mb is None:
            max_mb = float(os.environ.get("SFT_BENCH_FEATURE_CACHE_MB", 1024))
        self.max_bytes = int(max_mb * 2**20)
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def net_key(net: Net, precision: str) -> str:
        """What the features depend on besides the images (compute once per fit: it hashes the weights)."""
        h = hashlib.sha256(usedforsecurity=False)
        h.update(f"{precision}|{type(net.backbone).__name__}|{getattr(net.adapter, 'resolution', '')}".encode())
        for t in net.backbone.state_dict().values():
            _fingerprint(h, t)
        for t in net.adapter.buffers():
            _fingerprint(h, t)
        return h.hexdigest()

    @classmethod
    def key(cls, net: Net, x: torch.Tensor, precision: str, net_key: str | None = None) -> str:
        h = hashlib.sha256((net_key or cls.net_key(net, precision)).encode(), usedforsecurity=False)
        h.update(str(x.device).encode())
        _fingerprint(h, x)
        return h.hexdigest()

    def encode(self, net: Net, x: torch.Tensor, precision: str, net_key: str | None = None) -> tuple[torch.Tensor, bool]:
        """(features, whether they came from the cache). Callers must not modify them."""
        k = self.key(net, x, precision, net_key)
        if k in self._store:
            self._store.move_to_end(k)
            self.hits += 1
            return self._store[k], True
        self.misses += 1
        feats = encode_all(net, x, precision)
        size = feats.numel() * feats.element_size()
        if size <= self.max_bytes:
            self._store[k] = feats
            while sum(v.numel() * v.element_size() for v in self._store.values()) > self.max_bytes:
                self._store.popitem(last=False)
        return feats, False

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)


FEATURES = FeatureCache()


@torch.inference_mode()
def predict(
    net: Net, x: torch.Tensor, precision: str, batch: int | None = None, feats: torch.Tensor | None = None
) -> torch.Tensor:
    """Class probabilities for every image (fp32), in eval mode (batch: `eval_batch` of the device)."""
    batch = batch or eval_batch(x.device)
    was = net.training
    net.eval()
    outs = []
    with autocast(x.device, precision):
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            logits = net(xb) if feats is None else net.from_features(feats[i : i + batch], xb)
            outs.append(logits.float().softmax(1))
    net.train(was)
    return torch.cat(outs)


def _fusable(groups: list[dict]) -> bool:
    """torch's fused optimisers take floating-point tensors on CPU or CUDA only."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def _optimizer(groups: list[dict], hp: HParams) -> torch.optim.Optimizer:
    # fused: one kernel over all parameters instead of a Python loop of small ops per
    # tensor (see docs/benchmarks.md for what it is worth).
    fused = _fusable(groups)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)


def lr_factor(hp: HParams, total_steps: int) -> Callable[[int], float]:
    """The factor on each group's lr at step k (0-based): linear warm-up over round(warmup * S)
    steps, reaching 1 at the last warm-up step, then cosine to 0 or constant."""
    w = round(hp.warmup * total_steps)
    rest = max(1, total_steps - w)

    def factor(k: int) -> float:
        if k < w:
            return (k + 1) / w
        if hp.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(k - w, rest) / rest))
        return 1.0

    return factor


def _scheduler(opt: torch.optim.Optimizer, hp: HParams, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if hp.schedule == "onecycle":  # its own warm-up (pct_start) replaces the linear one
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=hp.warmup if hp.warmup > 0 else 0.3,
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(hp, total_steps))


def _freeze(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


def set_train_mode(net: Net, trains_backbone: bool, bn: str) -> None:
    """Train mode under the protocol's BatchNorm policy (one for every method).

    A frozen backbone runs in eval mode (its statistics are never touched). A trained one
    with `bn == "frozen"` keeps every BatchNorm layer in eval mode: the pretrained running
    statistics normalise in training as in evaluation, and the affine parameters still
    train. `bn == "train"` uses (and updates) batch statistics."""
    net.train()
    if not trains_backbone:
        net.backbone.eval()
    elif bn == "frozen":
        for m in net.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train_steps(
    groups: list[dict],
    hp: HParams,
    n: int,
    forward: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    y: torch.Tensor,
    gen: torch.Generator,
    precision: str,
    result: FitResult,
    phase: str,
    *,
    train_mode: Callable[[], None],
    evaluate: Callable[[], float] | None = None,
    on_progress: Callable[[dict], None] | None = None,
    augmented: bool = False,
) -> None:
    """hp.steps optimiser steps over shuffled passes of the n examples; `forward(idx, gen)`
    gives the logits of a batch. A history row every `report_interval(steps)` steps."""
    steps, bs = hp.steps, hp.batch_size
    device = y.device
    opt = _optimizer(groups, hp)
    sched = _scheduler(opt, hp, steps)
    params = [p for g in groups for p in g["params"]]
    interval = report_interval(steps)
    train_mode()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    perm, pos = None, n
    _sync(device)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if pos >= n:  # a new shuffled pass; its last batch may be smaller
            perm, pos = torch.randperm(n, generator=gen, device=gen.device).to(device), 0
        idx = perm[pos : pos + bs]
        pos += bs
        with autocast(device, precision):
            logits = forward(idx, gen)
            loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=hp.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if hp.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, hp.grad_clip)
        opt.step()
        sched.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == y[idx]).sum()
        seen += len(idx)
        if step % interval and step != steps:
            continue
        _sync(device)
        seconds = time.perf_counter() - t0
        result.train_seconds += seconds
        result.interval_seconds.append((seen, seconds))
        result.images_seen += seen
        loss_value = float(loss_sum) / seen
        if not math.isfinite(loss_value):
            raise Diverged(f"{phase} loss became {loss_value} by step {step} (lr {hp.lr:g})")
        row = {"phase": phase, "step": step, "steps": steps, "loss": loss_value, "train_accuracy": float(correct) / seen}
        if evaluate is not None:
            row["val_accuracy"] = evaluate()
            train_mode()  # evaluation switched to eval mode
        result.history.append(row)
        if on_progress is not None:
            on_progress(row)
        loss_sum.zero_()
        correct.zero_()
        seen = 0
        _sync(device)
        t0 = time.perf_counter()
    result.augmented = result.augmented or augmented


# ---------------------------------------------------------------- the linear probe


class ProbeCache:
    """Fitted linear probes (head state dicts) of this process, least recently used out.

    Why: `linear_probe`'s row, and the H_f of every sft* and lp_ft run of the same data,
    seed and probe hyperparameters, are one model (methods.md); it is fitted once and
    reused. The key is the content of the features and labels, the hyperparameters and the
    seed, so a hit is exactly what fitting again would give (tests/test_engine.py)."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        self._store: OrderedDict[str, tuple[dict[str, torch.Tensor], list[dict]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(feats: torch.Tensor, y: torch.Tensor, hp: HParams, seed: int, num_classes: int, precision: str) -> str:
        h = hashlib.sha256(usedforsecurity=False)
        h.update(json.dumps([asdict(hp), seed, num_classes, precision, str(feats.device)], sort_keys=True).encode())
        _fingerprint(h, feats)
        _fingerprint(h, y)
        return h.hexdigest()

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], list[dict]] | None:
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        return None

    def put(self, key: str, state: dict[str, torch.Tensor], history: list[dict]) -> None:
        self._store[key] = ({k: v.detach().clone() for k, v in state.items()}, history)
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)


PROBES = ProbeCache()


def fit_probe(
    features: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    y: torch.Tensor,
    num_classes: int,
    hp: HParams,
    seed: int,
    precision: str,
    result: FitResult,
    *,
    phase: str,
    cache_key: str | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The linear probe: Linear(d, C) on frozen features, `hp.steps` steps; its state dict.

    Its initialisation and batch order come from `seed` alone (not from the global RNG), so
    the linear_probe row and the probe inside an sft run of the same data are one model."""
    device = y.device
    if cache_key is not None and (hit := PROBES.get(cache_key)) is not None:
        # the record is the same whether the probe was fitted here or earlier: replay its rows
        result.probe_cache_hit = True
        result.history.extend(dict(row) for row in hit[1])
        return {k: v.clone() for k, v in hit[0].items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(d, num_classes)
    head = head.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    before = len(result.history)
    train_steps(
        [{"params": list(head.parameters())}],
        hp,
        len(y),
        lambda idx, g: head(features(idx)),
        y,
        gen,
        precision,
        result,
        phase,
        train_mode=lambda: head.train(),
        evaluate=None if evaluate is None else (lambda: evaluate(head)),
        on_progress=on_progress,
    )
    state = head.state_dict()
    if cache_key is not None:
        PROBES.put(cache_key, state, result.history[before:])
    return state


def default_probe(hp: HParams) -> HParams:
    """The probe a probe-initialised run starts from when no linear_probe row chose one
    (a single `cli.py run`): the linear_probe method's defaults, with the run's budget and batch."""
    from bench.models.methods import METHODS

    return HParams().update(**METHODS.get("linear_probe").defaults, steps=hp.steps, batch_size=hp.batch_size)


# ---------------------------------------------------------------- fit


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
    probe: HParams | None = None,
) -> FitResult:
    """Train `net` on uint8 images `x` with labels `y` (both on the training device).

    `probe`: the linear probe's hyperparameters for probe-initialised methods (the
    linear_probe row's, chosen by its own search; default: `default_probe(hp)`).
    `feature_cache`: where frozen-backbone features come from: "shared" (the process-wide
    `FEATURES` cache), "trial" (computed once in this fit) or "off" (the backbone is run
    again on every batch, as a naive loop would). All three give the same model; only the
    time differs. `compile`: True (inductor) or a torch.compile backend name for the
    end-to-end phase; speed only.
    """
    if feature_cache not in FEATURE_CACHE_MODES:
        raise ValueError(f"feature_cache '{feature_cache}' is not one of: {', '.join(FEATURE_CACHE_MODES)}")
    trains = spec.trains_backbone
    if trains and hp.backbone_lr_mult <= 0:
        raise UserError(
            f"{spec.name} trains the backbone, so backbone_lr_mult must be > 0 (got {hp.backbone_lr_mult}); "
            "a frozen backbone is a row of its own: linear_probe, sft-mlp-frozen, sft-side-frozen"
        )
    if not trains and hp.augment:
        raise UserError(
            f"{spec.name} trains on cached features of a frozen backbone, which cannot be augmented; set augment=false"
        )
    device = x.device
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    result = FitResult()
    n = len(x)
    num_classes = _out_features(net.head)
    feats = val_feats = None
    net_key: str | None = None

    def encode(images: torch.Tensor) -> torch.Tensor:
        nonlocal net_key
        if feature_cache == "shared":
            net_key = net_key or FEATURES.net_key(net, precision)  # hash the weights once per fit
            out, hit = FEATURES.encode(net, images, precision, net_key)
            result.feature_cache_hits += int(hit)
            return out
        return encode_all(net, images, precision)

    needs_features = spec.probe_init or not trains
    if needs_features and feature_cache != "off":
        t0 = time.perf_counter()
        feats = encode(x)
        if val is not None and not trains:
            val_feats = encode(val[0])
        result.feature_seconds = time.perf_counter() - t0

    def features(idx: torch.Tensor) -> torch.Tensor:
        if feats is not None:
            return feats[idx]
        with torch.no_grad():  # feature_cache="off": the frozen backbone again, as encode_all runs it
            net.backbone.eval()
            return net.encode(x[idx]).float()

    evaluate = None
    if val is not None:
        vx, vy = val

        def evaluate() -> float:
            probs = predict(net, vx, precision, feats=val_feats)
            return float((probs.argmax(1) == vy).float().mean())

    if spec.is_probe or spec.probe_init:
        d = feats.shape[1] if feats is not None else net.head.in_features
        probe_hp = hp if spec.is_probe else (probe or default_probe(hp))
        key = None if feats is None else ProbeCache.key(feats, y, probe_hp, seed, num_classes, precision)

        def evaluate_head(head: nn.Module) -> float:
            net.head.load_state_dict(head.state_dict())
            return evaluate()

        state = fit_probe(
            features,
            d,
            y,
            num_classes,
            probe_hp,
            seed,
            precision,
            result,
            phase="train" if spec.is_probe else "probe",
            cache_key=key,
            evaluate=evaluate_head if spec.is_probe and evaluate is not None else None,
            on_progress=on_progress,  # the contract: on_progress sees "probe" rows too (progress bars, heartbeats)
        )
        net.head.load_state_dict(state)
        if spec.is_probe:
            result.steps = probe_hp.steps
            return result
        result.probe_steps = probe_hp.steps

    _freeze(net, False)
    _freeze(net.backbone, not trains)
    head_params = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    groups = [{"params": head_params}]
    if trains:
        groups.append({"params": list(net.backbone.parameters()), "lr": hp.lr * hp.backbone_lr_mult})
        model = compiled(net, compile)
        forward = lambda idx, g: model(augment(x[idx], g) if hp.augment else x[idx])  # noqa: E731
    else:

        def forward(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            # a side branch sees the same (unaugmented) view as the cached features
            return net.from_features(features(idx), x[idx] if net.branch_on_image else None)

    train_steps(
        groups,
        hp,
        n,
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
    return result


def _out_features(head: nn.Module) -> int:
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features


def compiled(net: nn.Module, compile: bool | str) -> nn.Module:
    """`net` through torch.compile (shares its parameters), or `net` itself when not asked.

    Static shapes: the last, smaller batch of an epoch compiles once more instead of
    turning every batch into a dynamic-shape graph.
    """
    if not compile:
        return net
    backend = compile if isinstance(compile, str) else "inductor"
    return torch.compile(net, backend=backend, dynamic=False)


def classification_metrics(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    pred = probs.argmax(1).cpu()
    y = y.cpu()
    conf = torch.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    tp = conf.diag()
    support = conf.sum(1)
    predicted = conf.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    return {
        "test_accuracy": float(tp.sum() / conf.sum()),
        "macro_f1": float(f1.mean()),
        "per_class_accuracy": recall.tolist(),
    }
