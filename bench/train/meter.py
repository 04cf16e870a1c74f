"""`BackboneMeter`: the images through the backbone's forward pass, counted where the backbone is called.

Why counted by the callers and not by a forward hook on the backbone: a hook runs inside a
compiled model, where its Python counter became a guard of the graph (its value changed at every
step, so every step compiled a new graph, and after torch's limit of 8 the step silently ran
eagerly). The callers know their batch sizes without touching the model: the training step
(`fit`), a feature pass (`encode_all`), an evaluation (`predict`). The count is the one the hook
gave (tests/test_engine.py and the bit-identity check of docs/gpu.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BackboneMeter:
    """Images through the backbone's forward pass: training steps, validation reports, evaluation
    and feature passes alike, while a cache or store hit counts nothing. The unit the issue on a
    grid's cost asks for (what computing each thing once saves), and one that a pruned trial, which
    returns no record, still leaves with its owner."""

    images: int = 0

    def add(self, n: int) -> None:
        """`n` more images went through the backbone."""
        self.images += int(n)


def count(meter: BackboneMeter | None, n: int) -> None:
    """`meter.add(n)` when there is a meter (library callers that count nothing pass None)."""
    if meter is not None:
        meter.add(n)
