"""Options two commands declare alike (`run` and `sweep`), declared once so their help cannot drift apart."""

from __future__ import annotations

from typing import Any

import typer

COMPILE_MODE_HELP = (
    "torch.compile mode, implies --compile: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs."
)


def compile_mode_option() -> Any:
    """`--compile-mode MODE` (a fresh OptionInfo for each command: Typer keeps per-command state on it)."""
    return typer.Option("--compile-mode", help=COMPILE_MODE_HELP)
