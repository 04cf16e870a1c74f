"""How many images a label fraction keeps, and how many of them validate: the counts `label_split` draws.

Why a module of its own, torch-free: the report (its selection table: how many validation images stand behind
a search's score) and the grid-cost projection need these counts without the labels or torch at hand; the
split itself (bench/data/splits.py) uses the same rule, so the counts cannot drift from the draw.
"""

from __future__ import annotations

CIFAR10_PER_CLASS = 5000  # CIFAR-10's training set: 10 balanced classes of 5,000 images


def val_count(k: int, val_fraction: float) -> int:
    """Validation images of a class that keeps k labelled images: max(1, round(val_fraction * k)), never all k."""
    return min(k - 1, max(1, int(round(val_fraction * k))))


def split_sizes(
    fraction: float, val_fraction: float = 0.2, per_class: int = CIFAR10_PER_CLASS, classes: int = 10
) -> tuple[int, int]:
    """(train, validation) images of one seed's subset at `fraction`, as `label_split` draws them from balanced
    classes."""
    k = int(round(fraction * per_class))
    n_val = val_count(k, val_fraction)
    return (k - n_val) * classes, n_val * classes
