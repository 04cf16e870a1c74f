"""What a training or an evaluation asks of its device: the batch of a feature pass, the
autocast context of a precision and a sync that makes wall-clock timings mean something, resolved
from a `torch.device` (the process's numerical settings, determinism and TF32, are bench/numerics.py).

Every CUDA default is a function of a `torch.device` object (`device_defaults`), never of whether
this machine has a GPU, so it is tested on a CPU with `torch.device("cuda")`
(tests/test_gpu_ready.py) and is the same on every machine for the same device type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EVAL_BATCH = 1024  # evaluation and feature batches on CUDA at 64 px (`cuda_eval_batch` scales it by the resolution)
# On CPU, small evaluation batches are faster: 128 ran EfficientNet-Lite0 inference at
# 1.5x the rate of 1024 here (its activations stay in cache and below glibc's mmap
# threshold, so no fresh pages per batch); ResNet-18 within 10% (docs/speed.md).
CPU_EVAL_BATCH = 128
EVAL_PIXELS = EVAL_BATCH * 64 * 64  # pixels per CUDA evaluation batch: 4096 images at 32 px, 1024 at 64, 256 at 128
CUDA_EVAL_BATCH_RANGE = (128, 4096)


def cuda_eval_batch(resolution: int) -> int:
    """The CUDA evaluation batch at `resolution`: about EVAL_PIXELS pixels (a multiple of 64, within
    CUDA_EVAL_BATCH_RANGE). Why by resolution: a fixed 1024 left a 32 px batch a few milliseconds of
    kernels (launch-bound) and gave a 224 px batch activations of several GB (with several workers on
    one GPU, more than they can share). A choice, not a GPU measurement (docs/gpu.md)."""
    low, high = CUDA_EVAL_BATCH_RANGE
    return max(low, min(high, EVAL_PIXELS // (resolution * resolution) // 64 * 64))


def eval_batch(device: torch.device, resolution: int = 32) -> int:
    """The evaluation / feature-extraction batch for a device at the network's input resolution (CPU:
    CPU_EVAL_BATCH at every resolution, as it has always been). Results do not depend on it in exact
    arithmetic; on a GPU the kernels chosen may, in the last bits (docs/gpu.md)."""
    return cuda_eval_batch(resolution) if device.type == "cuda" else CPU_EVAL_BATCH


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


# ---------------------------------------------------------------- numerical settings (CUDA)


@dataclass(frozen=True)
class DeviceDefaults:
    """What a run on `device` gets unless told otherwise: the precision of `--precision auto` and the
    evaluation batch at a resolution (the numerical flags are `Numerics`)."""

    precision: str
    eval_batch: int


def device_defaults(device: torch.device, resolution: int = 32) -> DeviceDefaults:
    """The defaults of a device type: bf16 and a resolution-scaled evaluation batch on CUDA, fp32 and
    CPU_EVAL_BATCH on a CPU. A function of the device object only (testable without a GPU)."""
    cuda = device.type == "cuda"
    return DeviceDefaults("bf16" if cuda else "fp32", eval_batch(device, resolution))
