"""The report's figures, one function per figure: accuracy against label fraction, the paired gain over
`finetune`, accuracy against compute, the confusion matrices; `make_plots` draws them all in report.html's
order, with the Optuna search figures of search_plots.py.

Why every figure goes through figure._emit: a figure becomes PNG and PDF bytes in memory, so that a report
writes nothing until everything is drawn. Omitted figures and unreadable predictions become notes of the
report, never a failed report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report.figure import Figure, _emit
from bench.report.load import StudyInfo
from bench.report.schema import BASELINE, KEY, METRIC, method_rank, recipe_rank
from bench.report.search_plots import plot_search
from bench.report.stats import t_interval
from bench.report.text import frac_label, pct, slug


def _palette(labels: list[str]) -> dict[str, Any]:
    """One tab10 colour per method label, the same in every figure."""
    import seaborn as sns

    colours = sns.color_palette("tab10", max(10, len(labels)))
    return {lab: colours[i] for i, lab in enumerate(labels)}


def _log_fraction_axis(ax: Any, fractions: list[float]) -> None:
    """A log x axis ticked exactly at the measured label fractions, labelled as percentages."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: frac_label(v)))
    if len(fractions) == 1:
        ax.set_xlim(fractions[0] / 2, min(1.0, fractions[0]) * 2)


# Tick mantissas for a log axis of seconds, coarsest first: the first set giving at least 3 ticks in view is used.
LOG_TICK_SETS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0))


def log_ticks(lo: float, hi: float) -> list[float]:
    """A few readable ticks for a log axis from lo to hi: powers of ten where the range spans decades, 1-2-5
    steps within fewer, finer steps only for a range under a decade; at least 2 (the ends, rounded) always."""
    e0, e1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    best: list[float] = []
    for mantissas in LOG_TICK_SETS:
        ticks = [float(f"{m * 10.0**e:.12g}") for e in range(e0, e1 + 1) for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 3:
            return ticks
        best = ticks if len(ticks) > len(best) else best
    if len(best) >= 2:
        return best
    return sorted({float(f"{v:.2g}") for v in (lo * (hi / lo) ** 0.1, hi / (hi / lo) ** 0.1)})


def _log_seconds_axis(ax: Any) -> None:
    """A log x axis of seconds ticked by `log_ticks` and labelled as plain numbers (1,000 not 10^3).

    Why not matplotlib's default: under a decade its LogFormatter labels the minor ticks too, as
    "2×10^0 3×10^0 4×10^0 ...", which ran together into unreadable text in the committed reports."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.xaxis.set_minor_locator(LogLocator(subs="all"))
    ax.xaxis.set_minor_formatter(NullFormatter())


@dataclass
class PlotData:
    """What the figures of one report share: the runs with a display label and accuracy in %, the label
    order and colours (the same method has the same colour everywhere), backbones and fractions."""

    runs: pd.DataFrame
    order: list[str]
    palette: dict[str, Any]
    backbones: list[str]
    fractions: list[float]
    wrap: int
    labeler: Callable[[str, str], str]

    @classmethod
    def of(cls, df: pd.DataFrame, labeler: Callable[[str, str], str]) -> PlotData:
        """The shared frame of `df`'s runs, labelled by `labeler(method, recipe)`."""
        d = df.assign(label=[labeler(m, r) for m, r in zip(df["method"], df["recipe"], strict=True)], accuracy=100 * df[METRIC])
        order = sorted(d["label"].unique(), key=lambda lab: method_rank(lab.split(" ")[0]))
        backbones = sorted(d["backbone"].unique())
        return cls(d, order, _palette(order), backbones, sorted(d["fraction"].unique()), min(3, len(backbones)), labeler)


def make_plots(
    experiment_dir: Path,
    df: pd.DataFrame,
    tests: pd.DataFrame,
    studies: list[StudyInfo],
    labeler: Callable[[str, str], str],
    notes: list[str],
    step_unit: str = "step",
) -> list[Figure]:
    """Every figure of the report, in report.html's order; what cannot be drawn is a note appended to `notes`."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    data = PlotData.of(df, labeler)
    figs = [plot_accuracy_vs_fraction(data)]
    gain = plot_gain_over_finetune(data, tests)
    if gain:
        figs.append(gain)
    else:
        notes.append(f"No method shares a seed with a {BASELINE} run, so the paired-gain plot is omitted.")
    compute = plot_accuracy_vs_compute(data)
    if compute:
        figs.append(compute)
    else:
        notes.append("runs.csv has no positive wall_seconds or train_seconds: the accuracy-against-compute plot is omitted.")
    all_seeds = sorted({s.seed for s in studies if s.seed is not None})
    seed_colour = dict(zip(all_seeds, sns.color_palette("tab10", max(10, len(all_seeds))), strict=False))
    for b in sorted({s.backbone for s in studies}):
        figs += plot_search(b, [s for s in studies if s.backbone == b], labeler, seed_colour, notes, step_unit)
    classes = [c[4:] for c in df.columns if c.startswith("acc_")]
    for b in data.backbones:
        figs.append(plot_confusion(experiment_dir, df[df["backbone"] == b], b, classes, labeler, notes))
    return figs


# ---------------------------------------------------------------- accuracy and compute


def plot_accuracy_vs_fraction(data: PlotData) -> Figure:
    """Mean test accuracy against label fraction per backbone, with the 95% t-interval over seeds."""
    import seaborn as sns

    g = sns.relplot(
        data=data.runs, x="fraction", y="accuracy", hue="label", hue_order=data.order, palette=data.palette, col="backbone",
        col_order=data.backbones, col_wrap=data.wrap, kind="line", marker="o", errorbar=t_interval, height=3.4, aspect=1.25,
        facet_kws={"sharey": False},
    )  # fmt: skip
    for ax in g.axes.flat:
        _log_fraction_axis(ax, data.fractions)
    g.set_axis_labels("label fraction (log scale)", "test accuracy (%)")
    g.set_titles("{col_name}")
    g.legend.set_title("method")
    return _emit(
        g,
        "accuracy_vs_fraction",
        "Accuracy against label fraction",
        "Mean test accuracy over seeds; band: 95% t-interval of the mean (none where a cell has one seed).",
    )


def _paired_gains(data: PlotData, tests: pd.DataFrame) -> list[dict[str, Any]]:
    """One record per cell and seed it shares with its `finetune` baseline: the gain in accuracy points."""
    pairs = []
    acc = {k: grp.set_index("seed")[METRIC] for k, grp in data.runs.groupby(KEY, sort=False)}
    for t in tests[tests["baseline_method"] == BASELINE].itertuples(index=False) if len(tests) else []:
        base_r = t.baseline.split("/", 1)[1]
        base = acc.get((t.backbone, base_r, BASELINE, t.fraction))
        mine = acc[(t.backbone, t.recipe, t.method, t.fraction)]
        if base is None:
            continue
        for s in sorted(set(mine.index) & set(base.index)):
            gain = 100 * (mine[s] - base[s])
            pairs.append(dict(backbone=t.backbone, label=data.labeler(t.method, t.recipe), fraction=t.fraction, gain=gain))
    return pairs


def plot_gain_over_finetune(data: PlotData, tests: pd.DataFrame) -> Figure | None:
    """The paired gain over `finetune` (same seed = same labelled subset) against label fraction; None where
    no method shares a seed with a finetune run."""
    import seaborn as sns

    pairs = _paired_gains(data, tests)
    if not pairs:
        return None
    pdf = pd.DataFrame(pairs)
    lab_order = [lab for lab in data.order if lab in set(pdf["label"])]
    bb = sorted(pdf["backbone"].unique())
    g = sns.relplot(
        data=pdf, x="fraction", y="gain", hue="label", hue_order=lab_order, palette=data.palette, col="backbone", col_order=bb,
        col_wrap=min(3, len(bb)), kind="line", marker="o", errorbar=t_interval, err_style="bars", height=3.4, aspect=1.25,
        facet_kws={"sharey": False},
    )  # fmt: skip
    for ax in g.axes.flat:
        _log_fraction_axis(ax, sorted(pdf["fraction"].unique()))
        ax.axhline(0, color="black", lw=0.8)
    g.set_axis_labels("label fraction (log scale)", f"accuracy − {BASELINE} (points)")
    g.set_titles("{col_name}")
    g.legend.set_title("method")
    return _emit(
        g,
        "gain_over_finetune",
        f"Paired gain over {BASELINE}",
        f"Mean over seeds of (method − {BASELINE}) on the same seed; bars: 95% t-interval of the mean paired "
        "difference (none with one pair).",
    )


def plot_accuracy_vs_compute(data: PlotData) -> Figure | None:
    """Each final run's accuracy against its wall (else train) seconds; None where runs.csv records neither."""
    import seaborn as sns

    d = data.runs
    tcol = next((c for c in ("wall_seconds", "train_seconds") if c in d.columns and d[c].notna().any()), None)
    if not tcol:
        return None
    dc = d[d[tcol].notna() & (d[tcol] > 0)].assign(fraction_label=lambda x: x["fraction"].map(frac_label))
    if dc.empty:
        return None
    backbones = [b for b in data.backbones if b in set(dc["backbone"])]  # no panel for a backbone without timings
    g = sns.relplot(
        data=dc, x=tcol, y="accuracy", hue="label", hue_order=data.order, palette=data.palette, style="fraction_label",
        style_order=[frac_label(f) for f in data.fractions], col="backbone", col_order=backbones, col_wrap=min(3, len(backbones)),
        height=3.4, aspect=1.25, facet_kws={"sharey": False, "sharex": False}, s=40, alpha=0.85,
    )  # fmt: skip
    for ax in g.axes.flat:
        _log_seconds_axis(ax)
    for text in g.legend.texts:
        text.set_text({"label": "method", "fraction_label": "label fraction"}.get(text.get_text(), text.get_text()))
    g.set_axis_labels(f"{tcol.replace('_', ' ')} per run (log scale)", "test accuracy (%)")
    g.set_titles("{col_name}")
    return _emit(
        g,
        "accuracy_vs_compute",
        "Accuracy against compute",
        f"One point per final run: test accuracy against its {tcol.replace('_', ' ')} (search trials not included).",
    )


# ---------------------------------------------------------------- confusion matrices


def _confusion_panel(
    ax: Any, experiment_dir: Path, best: pd.Series, what: str, title: str, classes: list[str], notes: list[str]
) -> None:
    """One run's confusion matrix (rows: true class, % of that class) from its predictions file; where the file
    is missing or unreadable, the panel says so and a note names it (`what`: backbone/method)."""
    rel = best.get("predictions")
    path = Path(experiment_dir) / str(rel) if isinstance(rel, str) and rel else None
    if path is None or not path.is_file():
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
        ax.text(0.5, 0.5, "predictions file missing", ha="center", va="center", fontsize=8)
        notes.append(f"Confusion matrix of {what}: predictions file {path or '(none in runs.csv)'} is missing.")
        return
    try:
        p = pd.read_csv(path, usecols=["label", "prediction"])
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "unreadable predictions", ha="center", va="center", fontsize=8)
        notes.append(f"Confusion matrix of {what}: cannot read {path} ({exc}).")
        return
    names = classes or [str(i) for i in range(int(max(p["label"].max(), p["prediction"].max())) + 1)]
    k = len(names)
    lab, pr = p["label"].to_numpy(int), p["prediction"].to_numpy(int)
    cm = np.bincount(lab * k + pr, minlength=k * k).reshape(k, k).astype(float)
    acc_pred = float((lab == pr).mean())
    if abs(acc_pred - float(best[METRIC])) > 1e-4:
        notes.append(
            f"Run {best.get('run_id', '?')}: its predictions give accuracy {pct(acc_pred)}%, runs.csv says {pct(best[METRIC])}%."
        )
    cm = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)
    # imshow, not sns.heatmap: seaborn redraws the whole figure per heatmap to check tick overlap.
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=100)
    for (i, j), v in np.ndenumerate(cm):
        if v >= 0.5:  # empty cells stay blank: fewer texts to lay out, easier to read
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5, color="white" if v > 60 else "black")
    ax.set_xticks(range(k), names, rotation=90)
    ax.set_yticks(range(k), names)
    ax.grid(False)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("predicted", fontsize=7)
    ax.set_ylabel("true", fontsize=7)
    ax.tick_params(labelsize=6)


def plot_confusion(
    experiment_dir: Path, sub: pd.DataFrame, b: str, classes: list[str], labeler: Callable[[str, str], str], notes: list[str]
) -> Figure:
    """Confusion matrices of backbone `b` (`sub`: its runs): the best run of each method at the smallest fraction."""
    import matplotlib.pyplot as plt

    fmin = sub["fraction"].min()
    at = sub[sub["fraction"] == fmin]
    rows = sorted(
        {(r, m) for r, m in at[["recipe", "method"]].itertuples(index=False)},
        key=lambda rm: (method_rank(rm[1]), recipe_rank(rm[0])),
    )
    ncol = min(3, len(rows))
    nrow = math.ceil(len(rows) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.set_axis_off()
    for ax, (r, m) in zip(axes.flat, rows, strict=False):
        runs = at[(at["recipe"] == r) & (at["method"] == m)].sort_values([METRIC, "seed"], ascending=[False, True])
        best = runs.iloc[0]
        title = f"{labeler(m, r)}: seed {int(best['seed'])}, {pct(best[METRIC])}%"
        _confusion_panel(ax, experiment_dir, best, f"{b}/{labeler(m, r)}", title, classes, notes)
    fig.suptitle(f"{b}, label fraction {frac_label(fmin)}", fontsize=9)
    return _emit(
        fig,
        f"confusion_{slug(b)}",
        f"Confusion matrices, {b} at {frac_label(fmin)}",
        "Best run (highest test accuracy) of each method at the smallest label fraction; rows: true class, "
        "cells: % of that class's test images.",
    )
