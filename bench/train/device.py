"""What a training or an evaluation asks of its device: the batch of a feature pass, the
autocast context of a precision, and a sync that makes wall-clock timings mean something."""

from __future__ import annotations

import torch

EVAL_BATCH = 1024  # evaluation and feature batches on CUDA
# On CPU, small evaluation batches are faster: 128 ran EfficientNet-Lite0 inference at
# 1.5x the rate of 1024 here (its activations stay in cache and below glibc's mmap
# threshold, so no fresh pages per batch); ResNet-18 within 10% (docs/benchmarks.md).
CPU_EVAL_BATCH = 128


def eval_batch(device: torch.device) -> int:
    """The evaluation / feature-extraction batch for a device (the results do not depend on it)."""
    return EVAL_BATCH if device.type == "cuda" else CPU_EVAL_BATCH


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast when `precision == "bf16"`, a no-op context otherwise (fp32): one switch for
    training, features and evaluation, so they always compute at the same precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work: a timing taken without it measures the launch, not the work. Called
    on every device (a no-op on CPU), so bench/train/syncs.py counts the same waits everywhere."""
    _wait(device)


def _wait(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
