"""What a report reads and in which order it shows it: the runs table's columns, a cell's key, the baselines
every method is compared with, and the display order of methods and recipes.

Why a module of its own: every other part of the report (loading, statistics, tables, plots, compare) needs
these few names, and they must agree; kept here, none of those modules has to import another for them. The
method order and kinds are the registry's (bench/models/kinds.py), which imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields

import pandas as pd

from bench.models.kinds import METHODS, MethodKind
from bench.records import RunsRow

BASELINE = "finetune"
# Protocol v2: every sft* method is also compared with the two simpler methods it contains.
EXTRA_BASELINES = ("linear_probe", "lp_ft")
BASELINE_ORDER = (BASELINE, *EXTRA_BASELINES)
METRIC = "test_accuracy"
RUNS_CSV = "runs.csv"
JOURNAL = "optuna.journal"
REQUIRED = ("backbone", "method", "recipe", "fraction", "seed", METRIC)  # the least a runs table must have
# runs.csv's text columns, from the row type the sweep writes: read as text even when a value looks
# numeric (a run id or a commit of digits only, an experiment named "1").
STR_COLUMNS = tuple(f.name for f in fields(RunsRow) if f.type == "str")
KEY = ["backbone", "recipe", "method", "fraction"]
TESTS = ("ttest", "wilcoxon")
TEST_NAMES = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
# Display order: the registry's (bench/models/kinds.py, torch-free). Methods not listed follow alphabetically.
METHOD_ORDER = tuple(METHODS.names())
RECIPE_ORDER = ("tuned", "article")
# The methods that start from the same linear probe on the same seeds (sft's linear branch is lp_ft with a
# doubled head step): comparisons among them are correlated, and the notes say so where two of them ran.
PROBE_INITIALISED = tuple(n for n in METHODS.names() if METHODS.get(n).kind is MethodKind.FROM_PROBE)


def method_rank(m: str) -> tuple[int, str]:
    """Sort key of a method: the registry's order, unknown methods after it alphabetically."""
    return (METHOD_ORDER.index(m), "") if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def recipe_rank(r: str) -> tuple[int, str]:
    """Sort key of a recipe: `tuned`, then `article`, then any other alphabetically."""
    return (RECIPE_ORDER.index(r), "") if r in RECIPE_ORDER else (len(RECIPE_ORDER), r)


def row_sort_key(row: tuple[str, str, str]) -> tuple:
    """Rows are (backbone, recipe, method): backbone, then method in registry order, then recipe."""
    b, r, m = row
    return (b, method_rank(m), recipe_rank(r))


def cell_key(b: str, r: str, m: str, f: float) -> tuple:
    """Sort key of a cell (backbone, recipe, method, fraction): its row's order, then the fraction."""
    return (*row_sort_key((b, r, m)), f)


def is_sft(method: str) -> bool:
    """The supervision-branch family (`sft`, `sft-mlp`, `sft-side`, their frozen rows); not `article_sft`,
    the article's literal model, which has no probe inside it."""
    return method.startswith("sft")


def baselines_of(method: str) -> tuple[str, ...]:
    """What a method is compared with: `finetune` always; an sft* method also with the two simpler
    methods it contains (its f starts as the linear probe; lp_ft is that probe fine-tuned)."""
    out = () if method == BASELINE else (BASELINE,)
    return out + (EXTRA_BASELINES if is_sft(method) else ())


def baseline_recipe(df: pd.DataFrame, backbone: str, recipe: str, method: str = BASELINE) -> str | None:
    """Which run of baseline `method` a (backbone, recipe) row is compared with: same recipe, else `tuned`,
    else any; None where the backbone has no such run."""
    have = set(df.loc[(df["method"] == method) & (df["backbone"] == backbone), "recipe"])
    for r in (recipe, *RECIPE_ORDER, *sorted(have)):
        if r in have:
            return r
    return None


def probe_caveat(methods: Iterable[str], of: str) -> str | None:
    """The caveat that probe-initialised methods' `of` (verdicts, comparisons) are correlated, naming only the
    ones among `methods`; None where fewer than two ran (then there is nothing to be correlated). Why it names
    only those: a note that lists lp_ft under a grid without lp_ft sends the reader looking for a missing row."""
    have = set(methods)
    present = [m for m in PROBE_INITIALISED if m in have]
    if len(present) < 2:
        return None
    twin = ", and sft (linear branch) is lp_ft with a doubled head step" if {"sft", "lp_ft"} <= have else ""
    return (
        f"The probe-initialised methods ({', '.join(present)}) start from the same linear probe on the same seeds{twin}: "
        f"their {of} are correlated, not independent evidence."
    )
