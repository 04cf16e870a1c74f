"""The step budget S of a cell: one rule, the same for every method (protocol v2).

Why steps and not epochs: at 1% of CIFAR-10 an epoch is one or two optimiser steps, so a
budget in epochs gives the smallest fractions almost no optimisation, and a method that
trains a probe first got more steps than one that did not (protocol v1's artefact).

    S = max(MIN_STEPS, ceil(PASSES * n / batch_size))

n is the size of the whole labelled subset (training and validation parts together), so
a search trial and the final run of a cell train for the same S. The floor follows BiT's
HyperRule (500 steps below 20k labelled images); above the floor S grows with the data
at PASSES passes over it. Torch-free: the sweep's validation and the report import it.
"""

from __future__ import annotations

import math

PROTOCOL = 3  # the protocol version (../shared/docs/methods.md) this code implements
MIN_STEPS = 500  # the protocol's floor; an experiment may go below it for smoke tests, and the report says so
PASSES = 10  # passes over the labelled subset once the floor is exceeded
REPORTS = 10  # validation reports per training phase (the pruner's resolution)
ARTICLE_EPOCHS = 10  # the article's recipe: 10 epochs at its batch size


def step_budget(n_labelled: int, batch_size: int, min_steps: int = MIN_STEPS, passes: int = PASSES) -> int:
    """The optimiser steps every method gets in a cell whose labelled subset has `n_labelled` images."""
    if n_labelled <= 0 or batch_size <= 0:
        raise ValueError(f"need positive sizes, got n_labelled={n_labelled}, batch_size={batch_size}")
    return max(min_steps, math.ceil(passes * n_labelled / batch_size))


def article_recipe_steps(n_labelled: int, batch_size: int) -> int:
    """The article's budget: ARTICLE_EPOCHS passes at its own batch size (no floor: it is the article's)."""
    return ARTICLE_EPOCHS * math.ceil(n_labelled / batch_size)


def report_interval(steps: int) -> int:
    """Steps between two validation reports / history rows."""
    return max(1, math.ceil(steps / REPORTS))
