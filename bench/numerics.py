"""The process's numerical settings on CUDA (determinism, TF32): set once by an entry point, read
back into every run's provenance. A module of its own, above both the training code and the
provenance that records it, so neither imports the other for it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

CUBLAS_WORKSPACE = ":4096:8"  # what torch.use_deterministic_algorithms asks of cuBLAS (CUDA >= 10.2)


@dataclass(frozen=True)
class Numerics:
    """The process's numerical settings on CUDA, as asked (`configure_numerics`) or found (`current`).

    deterministic: cuDNN in deterministic mode without its kernel search (`benchmark` off),
    `torch.use_deterministic_algorithms(True)` (an op without a deterministic kernel raises instead
    of running a nondeterministic one) and cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG). Off:
    cuDNN's benchmark picks the fastest kernel per shape at run time, atomics may add in any order.
    tf32: fp32 matmuls and convolutions may use TF32 tensor cores (10-bit mantissa inputs). Off (the
    default): "fp32" is IEEE fp32 (torch otherwise lets cuDNN convolutions use TF32).
    A CPU computes the same either way (its kernels are deterministic for a thread count; TF32 is a
    CUDA format): the settings are recorded as they are, and only change CUDA results."""

    deterministic: bool = False
    tf32: bool = False

    @classmethod
    def current(cls) -> Numerics:
        """The settings this process runs with now (what a record's provenance says)."""
        precisions = (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.rnn.fp32_precision,
        )
        deterministic = torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        return cls(deterministic=bool(deterministic and not torch.backends.cudnn.benchmark), tf32="tf32" in precisions)


def configure_numerics(numerics: Numerics) -> Numerics:
    """Make `numerics` the process's settings (an entry point's job: bench/cli/__init__.py), and return them.

    The cuBLAS workspace must be set before cuBLAS starts: at an entry point it is. The TF32 flags
    are set through torch's per-backend `fp32_precision` (the API that replaces `allow_tf32`; the two
    must not be mixed); oneDNN's CPU flag is left alone, so CPU results are what they were."""
    det = numerics.deterministic
    if det:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cudnn.deterministic = det
    torch.backends.cudnn.benchmark = not det
    torch.use_deterministic_algorithms(det)
    precision = "tf32" if numerics.tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    return Numerics.current()
