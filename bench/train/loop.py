"""The step loop every phase of every method runs (`train_steps`): an optimiser, a schedule
with linear warm-up, shuffled passes over the examples, and a history row every S/10 steps.

Speed (docs/speed.md): the optimiser is the fused (one kernel) implementation where
torch has one; loss and accuracy are summed on the device and read together once per history row,
so the host never waits for the device between two rows (`SYNCS_PER_STEP`, `syncs_per_row`: the
documented counts bench/train/syncs.py checks, tests/test_gpu_ready.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.budget import report_interval
from bench.history import HistoryRow, tick
from bench.models.hparams import HParams
from bench.models.methods import Net
from bench.train.context import FitContext
from bench.train.device import autocast, sync

# Host syncs (bench/train/syncs.py) of the step loop: none in a step; per history row, the device
# sync that ends its timed interval, one read of its loss and accuracy together, and the sync that
# starts the next interval; the validation accuracy (when there is a validation split) is one more
# read. Plus one sync before the first step.
SYNCS_PER_STEP = 0
SYNCS_BEFORE_STEPS = 1


def syncs_per_row(validates: bool) -> int:
    """Host syncs of one history row of `train_steps` (with a validation split: one more)."""
    return 3 + int(validates)


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the sweep prunes such a trial and records why."""


@dataclass
class FitResult:
    """What one `fit` did: its history rows, its step counts and where its time went."""

    history: list[HistoryRow] = field(default_factory=list)
    train_seconds: float = 0.0
    images_seen: int = 0
    feature_seconds: float = 0.0
    compile_seconds: float = 0.0  # torch.compile's warm-up before the steps (bench/train/compiling.py), not in train_seconds
    # one (images, seconds) per history row: steady-state speed for `perf`
    interval_seconds: list[tuple[int, float]] = field(default_factory=list)
    feature_cache_hits: int = 0
    steps: int = 0  # optimiser steps of the method's own training (the budget S)
    probe_steps: int = 0  # L-BFGS iterations of the linear probe it fitted or started from (compute beside S)
    probe_l2: float | None = None  # the probe's L2 strength, as its cross-validation chose it
    probe_converged: bool | None = None  # whether the probe's final fit reached its gradient tolerance
    probe_cache_hit: bool = False
    augmented: bool = False  # whether any training batch was augmented


@dataclass(frozen=True)
class StepPlan:
    """What the step loop trains: the optimiser's parameter groups, the logits of a batch
    (`forward(idx, gen)`), the train mode to (re)enter, the validation accuracy (None: no split), and
    whether batches are augmented (the record says so)."""

    groups: list[dict]
    forward: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    train_mode: Callable[[], None]
    evaluate: Callable[[], float] | None = None
    augmented: bool = False


def _fusable(groups: list[dict]) -> bool:
    """torch's fused optimisers take floating-point tensors on CPU or CUDA only."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def make_optimizer(groups: list[dict], hp: HParams) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over the parameter groups, as `hp` asks.

    fused: one kernel over all parameters instead of a Python loop of small ops per
    tensor (see docs/speed.md for what it is worth)."""
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


def make_scheduler(opt: torch.optim.Optimizer, hp: HParams, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of `hp` over `total_steps` steps (stepped once per step)."""
    if hp.schedule == "onecycle":  # its own warm-up (pct_start) replaces the linear one
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=max(total_steps, 2),
            pct_start=hp.warmup if hp.warmup > 0 else 0.3,
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(hp, total_steps))


def freeze(module: nn.Module, frozen: bool) -> None:
    """Whether `module`'s parameters get gradients."""
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


class FullBatches:
    """Batch indices from shuffled passes over n examples, every batch of the same size min(bs, n).

    Protocol v3: a pass that does not divide into whole batches continues into the next shuffled
    pass (a batch may straddle two passes), instead of ending on a short batch. Why: every step
    then sees the same number of examples (a short last batch is a noisier step, of a size that
    depends on the subset), and a compiled or CUDA-graphed step has one input shape, not one per
    remainder (issue: "--compile does nothing useful", which counted a new graph per short batch).
    Within one pass every example appears once, as before."""

    def __init__(self, n: int, bs: int, gen: torch.Generator, device: torch.device) -> None:
        self.n, self.size, self.gen, self.device = n, min(bs, n), gen, device
        self.buffer = torch.empty(0, dtype=torch.long, device=device)

    def next(self) -> torch.Tensor:
        while len(self.buffer) < self.size:
            perm = torch.randperm(self.n, generator=self.gen, device=self.gen.device).to(self.device)
            self.buffer = torch.cat([self.buffer, perm])
        idx, self.buffer = self.buffer[: self.size], self.buffer[self.size :]
        return idx


def train_steps(plan: StepPlan, hp: HParams, y: torch.Tensor, ctx: FitContext, result: FitResult) -> None:
    """hp.steps optimiser steps over shuffled passes of the examples (labels `y`) with `ctx`'s generator
    and precision; `plan.forward(idx, gen)` gives the logits of a batch. A history row every
    `report_interval(steps)` steps; between them, `ctx.on_progress` gets a tick after every step, for
    live step counts (it costs no host sync; ticks are not history)."""
    steps, bs, phase = hp.steps, hp.batch_size, "train"
    device, gen, precision, n = y.device, ctx.gen, ctx.precision, len(y)
    groups, forward, train_mode, evaluate = plan.groups, plan.forward, plan.train_mode, plan.evaluate
    opt = make_optimizer(groups, hp)
    sched = make_scheduler(opt, hp, steps)
    params = [p for g in groups for p in g["params"]]
    interval = report_interval(steps)
    train_mode()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = FullBatches(n, bs, gen, device)
    sync(device)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = batches.next()
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
            ctx.report(tick(phase, step, steps))  # a live view's step count: no loss (that needs a host sync)
            continue
        sync(device)
        seconds = time.perf_counter() - t0
        result.train_seconds += seconds
        result.interval_seconds.append((seen, seconds))
        result.images_seen += seen
        # one read for both (exact: a float32 sum and an integer count are exact as float64)
        loss_total, correct_total = torch.stack([loss_sum.double(), correct.double()]).tolist()
        loss_value = loss_total / seen
        if not math.isfinite(loss_value):
            raise Diverged(f"{phase} loss became {loss_value} by step {step} (lr {hp.lr:g})")
        val = None
        if evaluate is not None:
            val = evaluate()
            train_mode()  # evaluation switched to eval mode
        row = HistoryRow(
            phase=phase, step=step, steps=steps, loss=loss_value, train_accuracy=correct_total / seen, val_accuracy=val
        )
        result.history.append(row)
        ctx.report(row)
        loss_sum.zero_()
        correct.zero_()
        seen = 0
        sync(device)
        t0 = time.perf_counter()
    result.augmented = result.augmented or plan.augmented
