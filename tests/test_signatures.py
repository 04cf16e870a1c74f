"""The training path's functions take at most five parameters (issue 21: `fit` and `train_steps` took 13).

Why a test: a new setting of how a fit runs belongs in `FitContext`, not in one more parameter of
five functions; this says so the day someone adds one.
"""

from __future__ import annotations

import inspect

import pytest

from bench.models import methods
from bench.train import fit, loop, probe, run

TRAINING_PATH = [
    fit.fit,
    fit._probe_phase,
    fit._train_phase,
    fit._end_to_end,
    fit._evaluator,
    loop.train_steps,
    probe.fit_probe,
    probe.record_probe,
    run.run_fold,
    run.execute,
    run._record,
    methods.build_net,
]


@pytest.mark.parametrize("function", TRAINING_PATH, ids=lambda f: f.__qualname__)
def test_training_path_functions_take_at_most_five_parameters(function: object) -> None:
    assert len(inspect.signature(function).parameters) <= 5
