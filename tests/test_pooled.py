"""Protocol v3's selection (../shared/docs/methods.md): a pooled search (one choice per cell, each
candidate scored by its mean validation accuracy over the first seeds), the candidates asked first
(each method's defaults, then the experiment's), the pruning floor, and the `defaults` recipe.

Why: the v2 study's per-seed searches of 3 trials on 100 validation images chose on margins of 2-3
images, and a median pruner with one reference decided 87 of 100 prunings. These tests show that
the pooled score is exactly the mean of the per-seed scores a per-seed search would have seen, that
every seed's final run gets the one choice, and that nothing is pruned against fewer than
max(4, trials / 3) finished trials.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from bench.records import Cell
from bench.registry import UserError
from bench.sweep.experiment import resolve

CPU = torch.device("cpu")

POOLED = {
    "backbones": ["tiny"],
    "methods": ["finetune", "linear_probe", "sft-mlp-frozen"],
    "fractions": [0.2],
    "seeds": 3,
    "trials": 3,
    "steps": 4,
    "search": {"mode": "pooled", "pool": 2, "candidates": [{"backbone_lr_mult": 0.1}], "startup_trials": 1},
    "hparams": {"batch_size": 32},
}


def experiment(tmp_path: Path, data_dir: Path, **changes: object):  # noqa: ANN201
    raw = {**POOLED, **changes, "name": "p", "data_dir": str(data_dir), "results_dir": str(tmp_path / "results")}
    return resolve(raw)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path):  # noqa: ANN201
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    tmp = tmp_path_factory.mktemp("pooled")
    exp = experiment(tmp, synthetic_dir)
    data = get_data(synthetic_dir)
    sweep = Sweep(exp, data, CPU)
    status = sweep.run()
    return exp, data, sweep, status


def test_one_search_per_cell_scored_over_the_pooled_seeds(pooled) -> None:  # noqa: ANN001
    from bench.train.run import execute

    exp, data, sweep, status = pooled
    assert status.complete
    cells = {cs.cell.method: cs for cs in status.cells}
    assert set(cells["finetune"].searches) == {0} and not cells["linear_probe"].searches
    study = optuna.load_study(study_name="p/tiny/finetune/tuned/0.2", storage=sweep.storage)
    assert study.user_attrs["search_mode"] == "pooled" and study.user_attrs["pool"] == [0, 1]
    trials = sorted(study.trials, key=lambda t: t.user_attrs["slot"])
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # the pooled score of a candidate is the mean of what each seed's own trial of it scores
    t = trials[1]
    cfg = sweep.config(cells["finetune"].cell, 0, t.user_attrs["hparams"], "trial", pool=exp.pool_seeds)
    assert cfg.pool == (0, 1) and cfg.run_id == t.user_attrs["run_id"]
    alone = [execute(sweep.config(cells["finetune"].cell, s, t.user_attrs["hparams"], "trial"), data, CPU) for s in (0, 1)]
    assert math.isclose(t.value, (alone[0].val_accuracy + alone[1].val_accuracy) / 2, rel_tol=0, abs_tol=1e-12)


def test_the_defaults_then_the_candidates_are_asked_first(pooled) -> None:  # noqa: ANN001
    from bench.sweep.search import candidate_params, default_params

    exp, data, sweep, status = pooled
    study = optuna.load_study(study_name="p/tiny/finetune/tuned/0.2", storage=sweep.storage)
    by_slot = {t.user_attrs["slot"]: t for t in study.trials}
    first = default_params(exp, "finetune")
    assert by_slot[0].params == first and first["backbone_lr_mult"] == 1.0
    assert by_slot[1].params == {**first, "backbone_lr_mult": 0.1}  # the gentle-backbone candidate
    assert by_slot[2].params not in (by_slot[0].params, by_slot[1].params)  # then the sampler
    # a frozen row has no backbone rate: the candidate changes nothing, so its slot goes to the sampler
    assert len(candidate_params(exp, "sft-mlp-frozen")) == 1 and len(candidate_params(exp, "finetune")) == 2


def test_every_seed_retrains_the_one_choice_of_its_cell(pooled) -> None:  # noqa: ANN001
    exp, data, sweep, status = pooled
    for cs in status.cells:
        assert set(cs.finals) == {0, 1, 2}, cs.cell
        if not cs.searches:
            continue
        best = cs.searches[0].best_hparams
        for seed, rec in cs.finals.items():
            assert all(rec.hparams[k] == v for k, v in best.items()), (cs.cell, seed)
            assert rec.search_mode == "pooled" and rec.study == "p/tiny/" + cs.cell.method + "/tuned/0.2"
    # seed 2 never scored a candidate, and still gets the cell's choice
    assert status.cells[0].finals[2].hparams == {**status.cells[0].finals[0].hparams}


def test_the_reports_selection_table_keeps_what_the_sweep_retrained(pooled) -> None:  # noqa: ANN001
    """bench/report/selection.py reads each search's choice back from the storage with its own tie rule; it must
    be the one the sweep retrained every seed with (here 4-step trials of a tiny net, where ties happen)."""
    from bench.report import selection
    from bench.report.load import load_studies
    from bench.subsets import split_sizes

    exp, data, sweep, status = pooled
    found = {c.method: c for c in selection.choices(load_studies(exp.out_dir, exp.name, None, []), exp.out_dir)}
    searched = [cs for cs in status.cells if cs.searches]
    assert set(found) == {cs.cell.method for cs in searched}
    for cs in searched:
        ss, c = cs.searches[0], found[cs.cell.method]
        assert c.best == ss.best_value and c.candidates == 3 and c.seeds == (0, 1)
        assert c.images == 2 * split_sizes(0.2, exp.val_fraction, per_class=300)[1]  # as recorded: synthetic has 300 a class
        study = optuna.load_study(study_name=f"p/tiny/{cs.cell.method}/tuned/0.2", storage=sweep.storage)
        defaults = next(t for t in study.trials if t.user_attrs["slot"] == 0).user_attrs["hparams"]
        assert (c.kept == "defaults") == (ss.best_hparams == defaults), (c.kept, ss.best_hparams)
        # each pooled seed's score is recorded beside their mean, and the table counts where the kept one led
        for t in study.trials:
            if t.state == TrialState.COMPLETE:
                assert len(t.user_attrs["fold_val_accuracy"]) == 2
                assert math.isclose(sum(t.user_attrs["fold_val_accuracy"]) / 2, t.value, abs_tol=1e-12)
        assert c.ahead is not None and c.ahead[1] == 2


def test_nothing_is_pruned_against_fewer_than_the_floor(tmp_path: Path, synthetic_dir: Path) -> None:
    from bench.sweep.search import FloorPruner, pruner

    exp = experiment(tmp_path, synthetic_dir, trials=30)
    assert exp.pruner_startup_trials() == 10 == exp.pruning_floor(30)  # max(4, 30 / 3)
    assert experiment(tmp_path, synthetic_dir, trials=3).pruner_startup_trials() == 4
    with pytest.raises(UserError, match=r"at least max\(4, trials / 3\) = 4 finished trials"):
        experiment(tmp_path, synthetic_dir, search={**POOLED["search"], "pruner_startup_trials": 2})
    # the wrapper asks its inner pruner only from the floor on
    calls: list[int] = []

    class Always(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            calls.append(trial.number)
            return True

    study = optuna.create_study(direction="maximize")
    floor = FloorPruner(Always(), 2)
    for n in range(3):
        trial = study.ask()
        assert floor.prune(study, study.get_trials()[-1]) == (n >= 2)
        study.tell(trial, 0.5)
    assert calls == [2]
    sweep_exp = experiment(tmp_path, synthetic_dir, search={**POOLED["search"], "pruner": "halving"})
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    cfg = Sweep(sweep_exp, get_data(synthetic_dir), CPU, read_only=True).config(sweep_exp.cells()[0], 0, {}, "trial", (0, 1))
    p = pruner(sweep_exp, cfg)
    assert isinstance(p, FloorPruner) and p.floor == 4
    assert isinstance(p.inner, optuna.pruners.SuccessiveHalvingPruner)


def test_the_defaults_recipe_trains_each_methods_defaults_without_a_search(tmp_path: Path, synthetic_dir: Path) -> None:
    from bench.models.hparams import HParams
    from bench.models.kinds import METHODS
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    exp = experiment(tmp_path, synthetic_dir, methods=["finetune"], recipes=["tuned", "defaults"], seeds=2)
    status = Sweep(exp, get_data(synthetic_dir), CPU).run()
    cells = {cs.cell.recipe: cs for cs in status.cells}
    assert not cells["defaults"].searches and cells["defaults"].trials_budget == 0
    want = HParams().update(**METHODS.get("finetune").defaults).update(batch_size=32, steps=4)
    for rec in cells["defaults"].finals.values():
        assert HParams(**rec.hparams) == want and rec.recipe == "defaults" and rec.search_mode == ""
    assert Cell("tiny", "finetune", "defaults", 0.2) in exp.cells()
    # the defaults recipe at the tuned cells' resolution (not the article's 32 px)
    assert exp.resolution_override(Cell("tiny", "finetune", "defaults", 0.2)) == exp.resolution_for("tiny")


def test_bad_pool_and_candidates_are_one_line_errors(tmp_path: Path, synthetic_dir: Path) -> None:
    search = POOLED["search"]
    cases = [
        ({"search": {**search, "pool": 5}}, "pools more seeds than the experiment has"),
        ({"search": {**search, "pool": 0}}, "search.pool must be a positive number of seeds"),
        ({"search": {**search, "candidates": [{"lr": -1}]}}, "search.candidates[0]: lr must be >= 0"),
        ({"search": {**search, "candidates": [{"steps": 9}]}}, "the step budget is one per cell"),
        ({"search": {**search, "candidates": [{}]}}, "is empty"),
        ({"search": {**search, "first_trial": "sampled"}}, "always has each method's defaults"),
        ({"stats": {"primary": ["sft finetune"]}}, 'is not "METHOD vs BASELINE"'),
        ({"stats": {"margin": 2}}, "stats.margin must be an accuracy fraction"),
        ({"probe": {"folds": 1}}, "probe folds must be an integer >= 2"),
        ({"probe": {"l2_grid": [0.1, -1]}}, "l2_grid must be distinct positive numbers"),
    ]
    for changes, message in cases:
        with pytest.raises(UserError) as exc:
            experiment(tmp_path, synthetic_dir, **changes)
        assert message in str(exc.value), (changes, str(exc.value))
        assert "\n" not in str(exc.value)
