"""The Optuna search of each backbone, as three figures (rows: method, columns: label fraction): each trial's
value and the best so far, the validation curves the trials reported, and the hyperparameter importances.

Why beside the results: the final numbers are only as good as the search that chose their hyperparameters; a
flat history, curves pruned too early or importances computed from two trials say so at a glance. A study
that cannot give importances is a note of the report, never a failed report.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.report.figure import Figure, _emit
from bench.report.load import StudyInfo
from bench.report.schema import method_rank, recipe_rank
from bench.report.text import frac_label, slug

# One grid per backbone and figure (rows: method, columns: fraction): each trial's value and the best so far;
# the validation curves the trials reported (x: optimiser step from protocol v2 on, the pruner's clock);
# importances. A per-seed search has one study per seed and cell: one colour per seed, and the importances
# pool the seeds' complete trials (each seed's study alone has too few trials).


def _importances(group: list[StudyInfo], done_state: Any) -> tuple[dict[str, float], str]:
    """Optuna's importances of one cell: its study, or (per-seed search) an in-memory study holding the
    complete trials of all its seeds' studies. ({}, why) where Optuna cannot give them."""
    import optuna

    study = group[0].study
    if len(group) > 1:
        try:
            study = optuna.create_study(direction=group[0].study.direction)
            study.add_trials([t for s in group for t in s.trials if t.state == done_state and t.value is not None])
        except Exception as exc:  # e.g. the seeds' studies searched different spaces
            return {}, f"cannot pool the seeds' studies ({type(exc).__name__}: {exc})"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # the parameters in a fixed order: Optuna gathers them into a set, whose order (and so the order of
            # the evaluator's floating-point sums, and the figure's bytes) otherwise changes with PYTHONHASHSEED
            complete = [t for t in study.get_trials(deepcopy=False) if t.state == done_state]
            names = sorted(set.intersection(*(set(t.params) for t in complete))) if complete else None
            imp = optuna.importance.get_param_importances(study, params=names)
        except Exception as exc:  # an evaluator that cannot fit this study is a note, not a failed report
            return {}, f"{type(exc).__name__}: {exc}"
    if caught and imp:  # e.g. PED-ANOVA: "quantiles select the same set of trials ... will be equal"
        return {}, f"Optuna: {str(caught[0].message).split('. ')[0]}"
    return imp, "no searched parameter varies"


def _draw_history(ah: Any, group: list[StudyInfo], per_seed: bool, seed_colour: dict) -> tuple[int, int]:
    """A cell's trials in the history panel: complete ones as dots with the best so far, pruned ones as x at
    their last reported value. Returns (complete, pruned) counted over the cell's studies."""
    import optuna

    done_state, pruned_state = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    n_done = n_pruned = 0
    for s in group:
        colour = seed_colour[s.seed] if s.seed is not None else "tab:blue"
        done = [t for t in s.trials if t.state == done_state and t.value is not None]
        pruned = [t for t in s.trials if t.state == pruned_state]
        n_done, n_pruned = n_done + len(done), n_pruned + len(pruned)
        if done:
            xs, ys = [t.number for t in done], [100 * t.value for t in done]
            ah.scatter(xs, ys, s=12, color=colour)
            ah.step(xs, np.maximum.accumulate(ys), where="post", color=colour if per_seed else "tab:red", lw=1)
        pv = [(t.number, 100 * t.intermediate_values[max(t.intermediate_values)]) for t in pruned if t.intermediate_values]
        if pv:
            ah.scatter(*zip(*pv, strict=True), s=12, marker="x", color=colour if per_seed else "grey")
    return n_done, n_pruned


def _draw_curves(ac: Any, group: list[StudyInfo], seed_colour: dict) -> None:
    """A cell's validation curves: every complete and pruned trial's reported values, pruned ones dashed
    and ending in x."""
    import optuna

    done_state, pruned_state = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    for s in group:
        colour = seed_colour[s.seed] if s.seed is not None else "tab:blue"
        done = [t for t in s.trials if t.state == done_state and t.value is not None]
        pruned = [t for t in s.trials if t.state == pruned_state]
        for t in [*done, *pruned]:
            if not t.intermediate_values:
                continue
            xs = sorted(t.intermediate_values)
            ys = [100 * t.intermediate_values[k] for k in xs]
            ac.plot(xs, ys, "-" if t.state == done_state else "--", color=colour, lw=0.8, alpha=0.8)
            if t.state == pruned_state:
                ac.plot(xs[-1], ys[-1], "x", color=colour, ms=4)


def _draw_importances(ai: Any, group: list[StudyInfo], title: str, n_done: int, name: str, grid: SearchGrid) -> None:
    """A cell's hyperparameter importances as bars, or the reason there are none (also a note)."""
    import optuna

    per_seed, notes = grid.per_seed, grid.notes
    # two lines: beside the long parameter names a one-line title ran past the figure's right edge
    ai.set_title(f"{title}\n({n_done} complete{', pooled' if per_seed else ''})", fontsize=7)
    if n_done < 2:
        ai.set_axis_off()
        ai.text(0.5, 0.5, f"fewer than 2 complete trials ({n_done})", ha="center", va="center", fontsize=7)
        notes.append(f"Study {name}: fewer than 2 complete trials ({n_done}), so no importances.")
        return
    imp, why = _importances(group, optuna.trial.TrialState.COMPLETE)
    if not imp:
        ai.set_axis_off()
        ai.text(0.5, 0.5, "no importances:\n" + textwrap.fill(why, 40), ha="center", va="center", fontsize=6)
        notes.append(f"Study {name}: no hyperparameter importances ({why}).")
        return
    names = list(imp)[::-1]
    ai.barh(names, [imp[k] for k in names], color="tab:green")
    ai.set_xlabel("importance (sums to 1)", fontsize=7)
    ai.tick_params(labelsize=6)


@dataclass
class SearchGrid:
    """What every panel of one backbone's three search figures shares."""

    labeler: Callable[[str, str], str]
    per_seed: bool  # any study of the backbone is one seed's (per-seed search)
    seed_colour: dict[int, Any]
    unit: str  # what the curves' x axis counts
    notes: list[str]
    seeds_shown: set[int] = field(default_factory=set)


def _draw_search_cell(
    axes: tuple[Any, Any, Any], b: str, cell: tuple[str, str, float], group: list[StudyInfo], grid: SearchGrid
) -> None:
    """One cell (recipe, method, fraction) of a backbone in the three search figures: history, curves, importances."""
    from matplotlib.ticker import MaxNLocator

    (ah, ac, ai), (r, m, f) = axes, cell
    title = f"{grid.labeler(m, r)} @ {frac_label(f)}"
    if not group:
        for ax in axes:
            ax.set_axis_off()
            ax.set_title(title + ": no study", fontsize=7)
        return
    per_seed = grid.per_seed
    grid.seeds_shown.update(s.seed for s in group if s.seed is not None)
    n_done, n_pruned = _draw_history(ah, group, per_seed, grid.seed_colour)
    studies_txt = (f" in {len(group)} seeds' studies" if len(group) > 1 else " in 1 seed's study") if per_seed else ""
    cell_name = f"{b}/{m}/{r}/{f:g}" + (f" (pooled over {len(group)} seeds' studies)" if per_seed else "")
    if n_done + n_pruned == 0:  # studies that have not finished a trial yet: a message, not blank 0-1 axes
        for ax in (ah, ac):
            ax.set_axis_off()
            ax.set_title(f"{title}: no finished trial yet{studies_txt if ax is ah else ''}", fontsize=7)
        _draw_importances(ai, group, title, 0, group[0].name if not per_seed else cell_name, grid)
        return
    _draw_curves(ac, group, grid.seed_colour)
    ah.set_title(f"{title}\n{n_done} complete, {n_pruned} pruned{studies_txt}", fontsize=7)
    ah.xaxis.set_major_locator(MaxNLocator(integer=True))
    ah.set_xlabel("trial (within its study)" if per_seed else "trial", fontsize=7)
    ah.set_ylabel("val. accuracy (%)", fontsize=7)
    ah.tick_params(labelsize=6)
    ac.set_title(title, fontsize=7)
    ac.xaxis.set_major_locator(MaxNLocator(integer=True))
    ac.set_xlabel(grid.unit, fontsize=7)
    ac.set_ylabel("val. accuracy (%)", fontsize=7)
    ac.tick_params(labelsize=6)
    _draw_importances(ai, group, title, n_done, group[0].name if not per_seed else cell_name, grid)


def _search_legends(ah: Any, ac: Any, per_seed: bool, seed_colour: dict, seeds_shown: set[int]) -> None:
    """Legends of the history and curves figures (in their first panel): seeds' colours, or complete/best/trial."""
    from matplotlib.lines import Line2D

    if per_seed:
        keys = [Line2D([], [], marker="o", ls="", color=seed_colour[s], label=f"seed {s}") for s in sorted(seeds_shown)]
        hist_keys = [*keys, Line2D([], [], color="grey", lw=1, label="best so far (per seed)")]
    else:
        keys = [Line2D([], [], color="tab:blue", lw=0.8, label="trial")]
        hist_keys = [
            Line2D([], [], marker="o", ls="", color="tab:blue", label="complete"),
            Line2D([], [], color="tab:red", lw=1, label="best so far"),
        ]
    pruned_key = Line2D([], [], marker="x", ls="", color="grey", label="pruned (last value)")
    ah.legend(handles=[*hist_keys, pruned_key], fontsize=6)
    ac.legend(handles=[*keys, Line2D([], [], ls="--", color="grey", lw=0.8, label="pruned (x: stopped)")], fontsize=6)


def _search_captions(b: str, per_seed: bool, step_unit: str, unit: str) -> list[tuple[str, str, str]]:
    """(kind, title, caption) of the history, curves and importance figures of backbone `b`."""
    how = (
        "per-seed search: one study per seed and cell, one colour per seed" if per_seed else "one study per cell (shared search)"
    )
    pooled = (
        "cell, pooled over its seeds' studies (per-seed search; each alone has too few trials)" if per_seed else "cell's study"
    )
    return [
        (
            "optuna_history",
            f"Optimisation history, {b}",
            f"Validation accuracy of each trial (x: pruned, at the value of its last reported {step_unit}) and the best "
            f"so far; {how}.",
        ),
        (
            "optuna_curves",
            f"Validation curves of the search trials, {b}",
            f"The validation accuracy each trial reported against the {unit} it reported at (the pruner's clock); "
            f"dashed, ending in x: pruned trials; {how}.",
        ),
        (
            "optuna_importance",
            f"Hyperparameter importances, {b}",
            "optuna.importance.get_param_importances (Optuna's default evaluator) over the complete trials of each "
            + pooled
            + "; with few trials these are rough.",
        ),
    ]


def plot_search(
    b: str,
    studies: list[StudyInfo],
    labeler: Callable[[str, str], str],
    seed_colour: dict,
    notes: list[str],
    step_unit: str = "step",
) -> list[Figure]:
    """The three search figures of backbone `b` (its `studies`): optimisation history, validation curves and
    hyperparameter importances, one panel per (method, fraction) cell."""
    import matplotlib.pyplot as plt

    rows = sorted({(s.recipe, s.method) for s in studies}, key=lambda rm: (method_rank(rm[1]), recipe_rank(rm[0])))
    cols = sorted({s.fraction for s in studies})
    by: dict[tuple[str, str, float], list[StudyInfo]] = {}
    for s in studies:
        by.setdefault((s.recipe, s.method, s.fraction), []).append(s)
    for group in by.values():
        group.sort(key=lambda s: (s.seed is None, s.seed if s.seed is not None else 0))
    per_seed = any(s.seed is not None for s in studies)
    unit = "optimiser step" if step_unit == "step" else step_unit
    grid = SearchGrid(labeler, per_seed, seed_colour, unit, notes)
    size = (3.0 * len(cols), 2.4 * len(rows))
    grids = [plt.subplots(len(rows), len(cols), figsize=size, squeeze=False) for _ in range(3)]
    for i, (r, m) in enumerate(rows):
        for j, f in enumerate(cols):
            axes = (grids[0][1][i][j], grids[1][1][i][j], grids[2][1][i][j])
            _draw_search_cell(axes, b, (r, m, f), by.get((r, m, f), []), grid)
    _search_legends(grids[0][1][0][0], grids[1][1][0][0], per_seed, seed_colour, grid.seeds_shown)
    captions = _search_captions(b, per_seed, step_unit, unit)
    return [_emit(fig, f"{kind}_{slug(b)}", title, cap) for (fig, _), (kind, title, cap) in zip(grids, captions, strict=True)]
