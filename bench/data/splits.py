"""Nested, stratified label fractions of the training set and their validation splits.

Why nested: the 1% subset of a seed is inside its 10% subset, inside 100%, so a column of the
table differs from the next only by the labels added, never by a different draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.registry import UserError
from bench.run_config import check_fraction
from bench.subsets import val_count


@dataclass(frozen=True)
class Split:
    """Indices into the training set: the labelled subset, and its train/validation halves."""

    labelled: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor


def label_split(labels: torch.Tensor, fraction: float, seed: int, val_fraction: float = 0.2) -> Split:
    """Stratified, nested, deterministic.

    Class c is shuffled once per seed (the order does not depend on the fraction), and
    fraction p keeps the first round(p * n_c) images of that order, so for one seed
    1% is inside 10% is inside 100%. The validation images are the last
    max(1, round(val_fraction * k)) of each class's k kept images (never all k: at
    least one image of every class is left to train on).
    """
    check_fraction(fraction)
    if not (0.0 < val_fraction < 1.0):
        raise UserError(f"validation fraction {val_fraction} is outside (0, 1)")
    labels = labels.cpu()
    gen = torch.Generator().manual_seed(int(seed))
    labelled, train, val = [], [], []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        order = idx[torch.randperm(len(idx), generator=gen)]
        k = int(round(fraction * len(idx)))
        if k < 2:
            raise UserError(
                f"label fraction {fraction} keeps {k} image(s) of class {c}; at least 2 per class are needed "
                "(one to train, one to validate): use a larger fraction"
            )
        kept = order[:k]
        n_val = val_count(k, val_fraction)  # at least one image on each side
        labelled.append(kept)
        train.append(kept[: k - n_val])
        val.append(kept[k - n_val :])
    cat = lambda parts: torch.sort(torch.cat(parts)).values  # noqa: E731
    return Split(cat(labelled), cat(train), cat(val))


def labelled_count(labels: torch.Tensor, fraction: float) -> int:
    """Size of the labelled subset at `fraction` (the same for every seed): sum of round(p * n_c)."""
    check_fraction(fraction)
    counts = torch.bincount(labels.cpu().long())
    return int(sum(int(round(fraction * int(n))) for n in counts if n > 0))


def scored_images(
    labels: torch.Tensor, fraction: float, seeds: tuple[int, ...], val_fraction: float = 0.2, folds: int = 1
) -> int:
    """Validation images behind one trial's score: each seed's validation split (k-fold: every labelled image
    once), summed over the seeds it pools. The same for every seed: the counts per class do not depend on the draw."""
    if folds > 1:
        per_seed = labelled_count(labels, fraction)
    else:
        counts = torch.bincount(labels.cpu().long())
        per_seed = sum(val_count(int(round(fraction * int(n))), val_fraction) for n in counts if n > 0)
    return per_seed * max(1, len(seeds))


def cv_folds(labels: torch.Tensor, fraction: float, seed: int, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """k stratified folds of the labelled subset: (train, val) index pairs.

    Why: at 1% of CIFAR-10 the validation split is 10 images a class, so one trial's score
    moves a point per image; k-fold scores use every labelled image once for validation.
    Fold j validates on the images at positions j, j+k, ... of each class's kept order."""
    split = label_split(labels, fraction, seed)
    kept = split.labelled
    labels = labels.cpu()
    smallest = int(torch.bincount(labels[kept].long()).min())
    if not 2 <= k <= smallest:
        raise UserError(
            f"cv_folds {k} does not fit: at fraction {fraction:g} the smallest class keeps {smallest} images; "
            f"use 2..{smallest} folds (or 1 for the plain validation split)"
        )
    gen = torch.Generator().manual_seed(int(seed))
    folds: list[tuple[list, list]] = [([], []) for _ in range(k)]
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        order = idx[torch.randperm(len(idx), generator=gen)]  # the same per-class order as label_split
        mine = order[: int(round(fraction * len(idx)))]
        for j in range(k):
            val = mine[j::k]
            mask = torch.ones(len(mine), dtype=torch.bool)
            mask[j::k] = False
            folds[j][0].append(mine[mask])
            folds[j][1].append(val)
    return [(torch.sort(torch.cat(t)).values, torch.sort(torch.cat(v)).values) for t, v in folds]
