"""The report's selection table (bench/report/selection.py): how firmly each search chose.

Why: protocol v2's searches were decided by 2-3 of 100 validation images and a reviewer had to find it;
study64's 1% choices were each within one standard error of the other candidate, and its `sft` against
`lp_ft` verdict compared sft's defaults with lp_ft's gentle backbone. The report must say both itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from bench.data.splits import label_split, scored_images
from bench.report import selection
from bench.report.load import StudyInfo
from bench.subsets import split_sizes

DEFAULTS = {"lr": 0.001, "backbone_lr_mult": 1.0}
GENTLE = {"lr": 0.001, "backbone_lr_mult": 0.1}


@pytest.mark.parametrize("fraction", [0.01, 0.1, 1.0])
def test_split_sizes_are_what_label_split_draws_from_cifar10s_balanced_classes(fraction: float) -> None:
    labels = torch.arange(10).repeat_interleave(5000)
    split = label_split(labels, fraction, seed=3)
    assert split_sizes(fraction) == (len(split.train), len(split.val))
    # what a trial records: the pooled seeds' validation images, or every labelled image under k-fold scoring
    assert scored_images(labels, fraction, (0, 1, 2)) == 3 * len(split.val)
    assert scored_images(labels, fraction, (0,), folds=5) == len(split.labelled)


def _study(method: str, fraction: float, scores: list[tuple[int, float, dict]], pool: tuple[int, ...] = (0, 1, 2)) -> StudyInfo:
    """A search study as the sweep leaves it: trials in creation order, each with its slot and hparams."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("search_mode", "pooled")
    study.set_user_attr("pool", list(pool))
    study.set_user_attr("settings", {"val_fraction": 0.2, "cv_folds": 1})
    for slot, value, hp in scores:
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"slot": slot, "hparams": hp}))
    return StudyInfo(f"e/b/{method}/tuned/{fraction}", "b", method, "tuned", fraction, study.trials, study, None, "pooled")


def test_each_choice_is_read_as_the_sweep_made_it_with_its_standard_error(tmp_path: Path) -> None:
    found = selection.choices(
        [
            # study64's 1% lp_ft: the gentle candidate by 3 of 300 images
            _study("lp_ft", 0.01, [(0, 0.62667, DEFAULTS), (1, 0.63667, GENTLE)]),
            # a tie goes to the lowest slot, whichever trial was created first
            _study("finetune", 0.01, [(1, 0.61, GENTLE), (0, 0.61, DEFAULTS)]),
            _study("sft", 0.1, [(0, 0.81, DEFAULTS), (1, 0.772, GENTLE)]),
        ],
        tmp_path,
    )
    by = {c.method: c for c in found}
    lp = by["lp_ft"]
    assert lp.kept == "backbone_lr_mult=0.1" and lp.images == 300 and lp.seeds == (0, 1, 2)
    assert lp.se == pytest.approx(math.sqrt(0.63667 * 0.36333 / 300)) and lp.gap_images == pytest.approx(3.0)
    assert lp.reading == "within one standard error"
    assert by["finetune"].kept == "defaults" and by["finetune"].gap == 0
    assert by["sft"].images == 3000 and by["sft"].reading == "decided"  # 3.8 points, 5 standard errors
    assert [c.method for c in found] == ["finetune", "lp_ft", "sft"]  # the report's row order


def _tests(method: str, baseline: str, fraction: float = 0.01) -> pd.DataFrame:
    row = dict(backbone="b", recipe="tuned", method=method, fraction=fraction, baseline_method=baseline,
               baseline=f"{baseline}/tuned", family="primary")  # fmt: skip
    return pd.DataFrame([row])


def test_the_summary_names_the_coin_flips_and_the_primary_comparisons_they_enter(tmp_path: Path) -> None:
    found = selection.choices(
        [
            _study("lp_ft", 0.01, [(0, 0.62667, DEFAULTS), (1, 0.63667, GENTLE)]),
            _study("sft", 0.01, [(0, 0.63, DEFAULTS), (1, 0.61333, GENTLE)]),
        ],
        tmp_path,
    )
    line = selection.summary_line(found, _tests("sft", "lp_ft"))
    assert line is not None and line.startswith("2 of 2 search choices were within one standard error")
    assert "`lp_ft` at 1%: kept backbone_lr_mult=0.1, 63.67% against 62.67%" in line
    assert "2.8 points over 300 validation images" in line and "not in the spread across seeds" in line
    assert "`sft` against `lp_ft` at 1% (defaults against backbone_lr_mult=0.1)" in line
    # the same choice on both sides: nothing to say about the comparison
    same = selection.choices([_study("lp_ft", 0.01, [(0, 0.64, DEFAULTS), (1, 0.63, GENTLE)]),
                              _study("sft", 0.01, [(0, 0.63, DEFAULTS), (1, 0.61333, GENTLE)])], tmp_path)  # fmt: skip
    assert "Primary comparisons" not in (selection.summary_line(same, _tests("sft", "lp_ft")) or "")
    one = selection.choices([_study("sft", 0.01, [(0, 0.63, DEFAULTS), (1, 0.61333, GENTLE)])], tmp_path)
    assert (selection.summary_line(one) or "").startswith("1 of 1 search choices was within one standard error")
    # every choice decided: no line
    decided = selection.choices([_study("sft", 0.1, [(0, 0.81, DEFAULTS), (1, 0.772, GENTLE)])], tmp_path)
    assert selection.summary_line(decided, _tests("sft", "lp_ft", 0.1)) is None


def test_a_per_seed_search_puts_its_noise_in_the_spread_and_says_so(tmp_path: Path) -> None:
    """Protocol v2's per-seed searches: one choice per seed, scored on 100 images at 1%."""
    studies = [_study("finetune", 0.01, [(0, 0.55, DEFAULTS), (1, 0.57, GENTLE)], pool=(s,)) for s in range(2)]
    for s, info in enumerate(studies):
        info.study.set_user_attr("search_mode", "per_seed")
        studies[s] = StudyInfo(info.name, "b", "finetune", "tuned", 0.01, info.trials, info.study, s, "per_seed")
    found = selection.choices(studies, tmp_path)
    assert [c.seeds for c in found] == [(0,), (1,)] and found[0].images == 100
    line = selection.summary_line(found, _tests("finetune", "lp_ft"))
    assert line is not None and "`finetune` at 1%, seed 0" in line and "is in the spread across seeds" in line


def test_a_pruned_search_with_one_finished_candidate_says_so(tmp_path: Path) -> None:
    info = _study("finetune", 0.01, [(0, 0.58, DEFAULTS)], pool=(0,))
    info.study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"slot": 1, "hparams": GENTLE})
    )
    info = StudyInfo(info.name, "b", "finetune", "tuned", 0.01, info.study.trials, info.study, None, "pooled")
    (c,) = selection.choices([info], tmp_path)
    assert c.reading == "one completed candidate (1 pruned)" and math.isnan(c.gap)


def test_where_trials_record_each_seeds_score_the_table_counts_where_the_kept_one_led(tmp_path: Path) -> None:
    study = _study("lp_ft", 0.01, [])
    for slot, folds, hp in [(0, [0.60, 0.64, 0.64], DEFAULTS), (1, [0.66, 0.62, 0.63], GENTLE)]:
        attrs = {"slot": slot, "hparams": hp, "fold_val_accuracy": folds}
        study.study.add_trial(optuna.trial.create_trial(value=sum(folds) / 3, user_attrs=attrs))
    info = StudyInfo(study.name, "b", "lp_ft", "tuned", 0.01, study.study.trials, study.study, None, "pooled")
    (c,) = selection.choices([info], tmp_path)
    # kept by its mean (0.6367 against 0.6267), yet ahead on one seed of three
    assert c.kept == "backbone_lr_mult=0.1" and c.ahead == (1, 3)
    model = selection.table([c], "e")
    assert "kept ahead on" in model.head and "1 of 3" in model.rows[0][1]
    assert model.tex_align == "rrrrl" and list(model.frame["ahead"]) == [1]
    # trials from before the record (study64's code): no column
    old = selection.table(selection.choices([_study("lp_ft", 0.01, [(0, 0.6, DEFAULTS), (1, 0.61, GENTLE)])], tmp_path), "e")
    assert "kept ahead on" not in old.head and old.tex_align == "rrrl"
