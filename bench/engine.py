"""The one training loop every method uses, top to bottom.

    fit(net, spec, hp, x, y, ...)      # uint8 images and labels, already on the device
      1. sft / lp_ft: fit the head as a linear probe on cached frozen features
      2. backbone frozen (linear_probe, sft with multiplier 0): train head (+ branch)
         on features computed once; otherwise train end to end on augmented batches
      3. every epoch: validation accuracy -> on_epoch (Optuna reports and prunes here)

Precision: bf16 autocast where asked (`precision="bf16"`), fp32 otherwise; channels_last
memory format always for conv nets (it is faster on CPU and on CUDA here).

Speed (measured in docs/benchmarks.md, `python cli.py perf`):
- frozen-backbone features come from `FEATURES`, a per-process cache keyed by the
  content of the weights, the input adapter, the precision and the images, so the
  trials of one sweep cell encode their images once, not once per trial or epoch
  (`feature_cache="trial"` recomputes per fit, `"off"` on every batch: the baselines);
- the optimiser is the fused (one kernel) implementation where torch has one;
- per-epoch loss and accuracy are summed on the device: one host sync per epoch;
- `compile=True` (or a backend name) runs the end-to-end forward/backward through
  `torch.compile`; it changes speed, not results, so it is not part of a run's id.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import augment
from bench.methods import HParams, MethodSpec, Net

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
    epoch_seconds: list[float] = field(default_factory=list)  # one per history row: steady-state speed
    feature_cache_hits: int = 0

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


def _scheduler(opt: torch.optim.Optimizer, hp: HParams, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    if hp.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(total_steps, 2)
        )
    if hp.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _freeze(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


def train_epochs(
    net: Net,
    groups: list[dict],
    hp: HParams,
    n: int,
    forward: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    y: torch.Tensor,
    gen: torch.Generator,
    precision: str,
    frozen_backbone: bool,
    result: FitResult,
    phase: str,
    evaluate: Callable[[], float] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    epochs: int | None = None,
) -> None:
    """Shuffled minibatches for `epochs`; `forward(idx, gen)` gives the logits of a batch."""
    epochs = epochs or hp.epochs
    device = y.device
    steps_per_epoch = math.ceil(n / hp.batch_size)
    opt = _optimizer(groups, hp)
    sched = _scheduler(opt, hp, epochs * steps_per_epoch)
    params = [p for g in groups for p in g["params"]]
    for epoch in range(1, epochs + 1):
        net.train()
        if frozen_backbone:
            net.backbone.eval()  # keep BatchNorm statistics of a frozen backbone
        _sync(device)
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen, device=gen.device).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i in range(0, n, hp.batch_size):
            idx = perm[i : i + hp.batch_size]
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
        _sync(device)
        seconds = time.perf_counter() - t0
        result.train_seconds += seconds
        result.epoch_seconds.append(seconds)
        result.images_seen += n
        loss_value = float(loss_sum) / n
        if not math.isfinite(loss_value):
            raise Diverged(f"{phase} loss became {loss_value} in epoch {epoch} (lr {hp.lr:g})")
        row = {"phase": phase, "epoch": epoch, "epochs": epochs, "loss": loss_value, "train_accuracy": float(correct) / n}
        if evaluate is not None:
            row["val_accuracy"] = evaluate()
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)


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
    on_epoch: Callable[[dict], None] | None = None,
    feature_cache: str = "shared",
    compile: bool | str = False,
) -> FitResult:
    """Train `net` on uint8 images `x` with labels `y` (both on the training device).

    `feature_cache`: where frozen-backbone features come from: "shared" (the process-wide
    `FEATURES` cache), "trial" (computed once in this fit) or "off" (the backbone is run
    again on every batch of every epoch, as a naive loop would). All three give the same
    model; only the time differs. `compile`: True (inductor) or a torch.compile backend
    name for the end-to-end phase; speed only.
    """
    if feature_cache not in FEATURE_CACHE_MODES:
        raise ValueError(f"feature_cache '{feature_cache}' is not one of: {', '.join(FEATURE_CACHE_MODES)}")
    device = x.device
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    result = FitResult()
    n = len(x)
    train_backbone = spec.train_backbone(hp)
    needs_features = spec.probe_init or not train_backbone
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

    if needs_features and feature_cache != "off":
        t0 = time.perf_counter()
        feats = encode(x)
        if val is not None and not train_backbone:
            val_feats = encode(val[0])
        result.feature_seconds = time.perf_counter() - t0

    def features(idx: torch.Tensor) -> torch.Tensor:
        if feats is not None:
            return feats[idx]
        with torch.no_grad():  # feature_cache="off": the frozen backbone again, as encode_all runs it
            return net.encode(x[idx]).float()

    def head_forward(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        xb = x[idx] if net.branch_on_image else None
        if xb is not None and hp.augment:
            xb = augment(xb, g)
        return net.from_features(features(idx), xb)

    if spec.probe_init:
        # H_f starts as the linear-probe solution on frozen features; the branch is
        # not part of this phase (it is zero at its output anyway).
        probe_hp = hp.update(
            optimizer="adamw", lr=hp.probe_lr, weight_decay=1e-4, schedule="cosine", label_smoothing=0.0, grad_clip=0.0
        )
        _freeze(net, True)
        _freeze(net.head, False)
        train_epochs(
            net,
            [{"params": list(net.head.parameters())}],
            probe_hp,
            n,
            lambda idx, g: net.head(features(idx)),
            y,
            gen,
            precision,
            True,
            result,
            "probe",
            on_epoch=on_epoch,  # the contract: on_epoch sees "probe" rows too (progress bars, heartbeats)
            epochs=hp.probe_epochs,
        )

    evaluate = None
    if val is not None:
        vx, vy = val

        def evaluate() -> float:
            probs = predict(net, vx, precision, feats=val_feats)
            return float((probs.argmax(1) == vy).float().mean())

    _freeze(net, False)
    _freeze(net.backbone, not train_backbone)
    head_params = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    groups = [{"params": head_params}]
    if train_backbone:
        groups.append({"params": list(net.backbone.parameters()), "lr": hp.lr * hp.backbone_lr_mult})
        model = compiled(net, compile)
        forward = lambda idx, g: model(augment(x[idx], g) if hp.augment else x[idx])  # noqa: E731
    else:
        forward = head_forward
    train_epochs(
        net, groups, hp, n, forward, y, gen, precision, not train_backbone, result, "train", evaluate=evaluate, on_epoch=on_epoch
    )
    return result


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
