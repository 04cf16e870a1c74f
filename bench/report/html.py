"""report.html: one self-contained page (figures inlined as PNG) with the summary, the protocol, provenance,
every table, the comparisons, the plots and the notes of one experiment.

Why one file with everything inlined: it can be mailed, archived or opened from a copied results folder
without the tables/ and plots/ beside it, and it states how every number on it was computed.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from bench.report.figure import Figure
from bench.report.grid import WHY_MISSING, Completeness
from bench.report.load import StudyInfo
from bench.report.protocol import protocol_info
from bench.report.render import frame_html, to_html
from bench.report.schema import BASELINE, EXTRA_BASELINES, TEST_NAMES, is_sft, method_rank, recipe_rank
from bench.report.tables import Tables
from bench.report.text import DAGGER, fmt_p, frac_label, name_list, points

CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.t{border-collapse:collapse;margin:.5em 0;font-size:.9em}
table.t th,table.t td{border-top:1px solid #ddd;padding:.25em .6em;text-align:left}
table.t thead th{border-bottom:2px solid #444}td.num{text-align:right;white-space:nowrap}
ul.notes{font-size:.85em;color:#444}figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em}
.wtl{font-size:1.1em}
.incomplete{background:#fff4d6;border:1px solid #e0b64a;padding:.6em 1em;margin:1em 0}.incomplete ul{margin:.3em 0}
"""


def _compared_with(methods: set[str]) -> str:
    """Which baselines the methods of this experiment are compared with, naming only those it ran: finetune, and
    for sft* the simpler methods it contains (linear_probe, lp_ft) where present."""
    extra = [bm for bm in EXTRA_BASELINES if bm in methods]
    if extra and any(is_sft(m) for m in methods):
        return f"each method against {BASELINE}, and every sft* method also against {name_list(extra)}"
    return f"each method against {BASELINE}"


def _probe_steps_item(methods: set[str]) -> str:
    """The sentence on budgets in optimiser steps; the probe's steps only where a method that starts from it ran."""
    probed = sorted((m for m in methods if is_sft(m) or m == "lp_ft"), key=method_rank)
    probe = (
        f"; the head-only linear-probe steps that start {name_list(probed)} are compute beside S, shown apart in the table below"
        if probed
        else ""
    )
    return (
        "Budgets in optimiser steps: S per cell (the same for every method of a (backbone, fraction) cell, search "
        f"trials and final runs alike){probe}."
    )


def _protocol_items(df: pd.DataFrame, tables: Tables, studies: list[StudyInfo], has_steps: bool) -> list[str]:
    """The protocol as this experiment ran it: backbones, methods, fractions, seeds, search and tests; every
    method a sentence names is one this experiment ran."""
    methods = set(df["method"])
    fr = ", ".join(frac_label(f) for f in sorted(df["fraction"].unique()))
    seeds = sorted(df["seed"].unique())
    trials = sorted({sum(1 for t in s.trials if t.state.is_finished()) for s in studies})
    per_seed = any(s.seed is not None for s in studies)
    studies_txt = "study (one per seed and cell: per-seed search)" if per_seed else "study"
    protocol = [
        f"Backbones: {', '.join(sorted(df['backbone'].unique()))}.",
        f"Methods: {', '.join(sorted(df['method'].unique(), key=method_rank))}; "
        f"recipes: {', '.join(sorted(df['recipe'].unique(), key=recipe_rank))}.",
        f"Label fractions (per class, nested for a seed): {fr}. Seeds: {', '.join(map(str, seeds))} (paired: seed s draws "
        "the same labelled subset for every method).",
        "Tuned cells: hyperparameters chosen by Optuna on a validation split carved from the labelled subset only "
        + (f"({', '.join(map(str, trials))} finished trials per {studies_txt})" if trials else "(no study found in the storage)")
        + "; then one final run per seed on the whole labelled subset, evaluated once on the test set.",
        f"Comparisons: {_compared_with(methods)}, of the "
        f"same backbone and fraction, {TEST_NAMES[tables.test]} over paired seeds with a 95% confidence interval per "
        "difference, and two one-sided tests against the equivalence margin; the primary family (declared before the "
        "grid ran) and the secondary family are Holm-corrected each within itself, "
        f"α = {tables.alpha:g}; one verdict per comparison (better, worse, equivalent, inconclusive). "
        + (
            f"{DAGGER} in the accuracy table: not significantly worse than the column's best (its own Holm family of "
            f"{tables.n_best_tests})."
            if tables.n_best_tests
            else f"No {DAGGER} in the accuracy table: no cell shares 2 or more seeds with its column's best."
        ),
    ]
    if has_steps:
        protocol.append(_probe_steps_item(methods))
    return protocol


def _code(text: str) -> str:
    """Escaped text with its `code` spans as <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _headline(summary: list[str]) -> str:
    """The summary: the sentences generated from the primary family's verdicts (verdicts.sentences), as they are."""
    return '<ul class="wtl">' + "".join(f"<li>{_code(s)}</li>" for s in summary) + "</ul>"


def _significance(tests: pd.DataFrame) -> str:
    """Every comparison with a baseline, as a table (differences in accuracy points, primary family first)."""
    if not len(tests):
        return "<p>No comparison: no baseline.</p>"
    sig = tests.assign(
        column=tests["fraction"].map(frac_label),
        diff=tests["diff_mean"].map(points),
        ci=[f"[{points(lo)}, {points(hi)}]" for lo, hi in zip(tests["ci_low"], tests["ci_high"], strict=True)],
        _f=tests["family"] != "primary",
    ).sort_values("_f", kind="stable")
    cols = ["family", "backbone", "recipe", "method", "column", "baseline", "n_pairs", "diff", "ci", "p_holm", "p_tost_holm"]
    sig = sig[[*cols, "verdict", "reason"]].rename(
        columns={
            "diff": "mean diff (points)",
            "ci": "95% CI",
            "column": "fraction",
            "p_tost_holm": "p TOST (Holm)",
        }
    )
    return frame_html(sig, {"p_holm": fmt_p, "p TOST (Holm)": fmt_p})


def _grid_banner(grid: Completeness | None) -> list[str]:
    """For an unfinished grid, the box at the top of the page: how much is missing and every missing cell, grouped
    by what it lacks; nothing for a complete grid (the opening line says it is complete)."""
    if grid is None or grid.complete:
        return []
    esc = html.escape
    items = "".join(f"<li>{esc(what)}: {esc(', '.join(names))}</li>" for what, names in grid.groups())
    head = grid.headline()
    return [
        f'<div class="incomplete"><p><b>{esc(head[0].upper() + head[1:])}.</b> Missing from runs.csv:</p>'
        f"<ul>{items}</ul><p>{esc(WHY_MISSING)}</p></div>"
    ]


def _holds(grid: Completeness | None) -> str:
    """What the opening line says of the grid: complete, incomplete, or unknown (no readable config.toml)."""
    if grid is None:
        return "whether the runs are the whole grid is unknown (no readable config.toml)"
    if grid.complete:
        return f"the runs are the whole grid of config.toml ({grid.cells} cells × {grid.seeds} seeds)"
    return f"the runs are {grid.runs} of the {grid.cells * grid.seeds} that config.toml's grid asks for (incomplete: see above)"


def _wtl_caption(wtl: pd.DataFrame) -> str:
    """The sentence under the verdict counts, naming the baselines they hold; nothing where there are none."""
    if not len(wtl):
        return ""
    per = {m: sorted(set(g["baseline"]), key=method_rank) for m, g in wtl.groupby("method")}
    sft_extra = sorted({b for m, bs in per.items() if is_sft(m) for b in bs if b != BASELINE}, key=method_rank)
    also = f"; for sft* also {name_list(sft_extra)}" if sft_extra else ""
    return (
        f"<p>Verdicts per method against each of its baselines ({BASELINE}{also}), one count per (backbone, fraction) "
        "cell; the family says whether the comparison is primary or secondary.</p>"
    )


def _figure(f: Figure) -> str:
    """A figure inlined as PNG, with its caption and the names of its files under plots/."""
    esc = html.escape
    b64 = base64.b64encode(f.png).decode()
    return (
        f'<figure id="{esc(f.name)}"><img alt="{esc(f.title)}" src="data:image/png;base64,{b64}">'
        f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)} (plots/{esc(f.name)}.png, .pdf)</figcaption></figure>"
    )


def _protocol_section(
    experiment_dir: Path, df: pd.DataFrame, tables: Tables, studies: list[StudyInfo], compute: pd.DataFrame | None
) -> str:
    """The Protocol section: the protocol's labels in bold, how this experiment ran, compute per cell, config.toml."""
    esc = html.escape
    info = tables.protocol or protocol_info(df)
    label_items = "".join(f"<li><b>{esc(p)}</b></li>" for p in info.lines())
    protocol = _protocol_items(df, tables, studies, info.has_steps)
    compute_html = (
        "<p>Compute per cell (from runs.csv; ranges where seeds differ):</p>" + frame_html(compute)
        if compute is not None and len(compute)
        else ""
    )
    cfg = Path(experiment_dir) / "config.toml"
    cfg_html = f"<details><summary>config.toml</summary><pre>{esc(cfg.read_text())}</pre></details>" if cfg.is_file() else ""
    return (
        '<h2>Protocol</h2><ul class="protocol">'
        + label_items
        + "".join(f"<li>{esc(p)}</li>" for p in protocol)
        + "</ul>"
        + compute_html
        + cfg_html
    )


def render_html(
    experiment: str,
    experiment_dir: Path,
    df: pd.DataFrame,
    tables: Tables,
    tests: pd.DataFrame,
    wtl: pd.DataFrame,
    figs: list[Figure],
    studies: list[StudyInfo],
    prov: list[tuple[str, str]],
    notes: list[str],
    compute: pd.DataFrame | None = None,
    summary: list[str] | None = None,
    grid: Completeness | None = None,
) -> str:
    """The whole page, from what write_report computed; nothing here computes a number of its own."""
    esc = html.escape
    info = tables.protocol or protocol_info(df)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>sft-bench report: {esc(experiment)}</title><style>{CSS}</style></head><body>",
        f"<h1>sft-bench report: {esc(experiment)}</h1>",
        *_grid_banner(grid),
        f"<p>{len(df)} final runs ({esc(info.label)}) from <code>{esc(str(Path(experiment_dir)))}/runs.csv</code> and "
        f"{len(studies)} Optuna studies; {esc(_holds(grid))}. Everything on this page is computed from those two; "
        "tables are also in <code>tables/</code> (Markdown, LaTeX, CSV) and plots in <code>plots/</code> (PNG, PDF).</p>",
        "<h2>Summary</h2>",
        "<p>Generated from the verdicts of the primary family (declared before the grid ran); it says nothing the "
        "verdicts do not (tables/summary.md holds the same sentences).</p>",
        _headline(summary or []),
        frame_html(wtl) if len(wtl) else "",
        _wtl_caption(wtl),
        _protocol_section(experiment_dir, df, tables, studies, compute),
        "<h2>Provenance</h2>",
        '<table class="t"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in prov)
        + "</tbody></table>",
        "<h2>Accuracy</h2>",
        to_html(tables.accuracy()),
        "<h2>sft against its baselines</h2>",
        f"<p>{esc(tables.sft_missing() or '')}</p>" if tables.sft_missing() else to_html(tables.sft_vs_baselines()),
        *(["<h2>What the search added (tuned − defaults)</h2>", to_html(tables.tuning_gain())] if tables.has_gain else []),
        "<h2>Label efficiency</h2>",
        to_html(tables.efficiency()),
        "<h2>Comparisons with baselines</h2>",
        _significance(tests),
        "<h2>Plots</h2>",
        *(_figure(f) for f in figs),
        *(["<h2>How firmly each search chose</h2>", to_html(tables.selection)] if tables.selection is not None else []),
        "<h2>Notes</h2>",
        "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "<p>None.</p>",
        "</body></html>\n",
    ]
    return "\n".join(parts)
