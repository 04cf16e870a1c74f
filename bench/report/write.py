"""The report writer: `write_report` computes everything of one experiment in memory, then writes tables/,
plots/ and report.html, each file atomically.

Why in this order: a report must never leave a half-written folder. Bad input (an unreadable runs.csv, a
Wilcoxon test that cannot reach alpha) stops it before any file is touched; a reader never sees half a file
(temporary file, then rename); and outputs of an earlier report that this one no longer produces are removed,
so the folder always describes the current runs.csv.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.files import atomic_write_bytes
from bench.registry import UserError
from bench.report.figure import Figure
from bench.report.html import render_html
from bench.report.load import experiment_name, load_runs, load_studies, thread_notes
from bench.report.origin import provenance
from bench.report.plots import make_plots
from bench.report.protocol import protocol_info
from bench.report.render import to_csv, to_latex, to_markdown
from bench.report.schema import BASELINE, baseline_recipe
from bench.report.stats import (
    best_tests,
    check_test_args,
    check_wilcoxon_reachable,
    label_efficiency,
    largest_pairing,
    paired_tests,
    signed_rank_floor,
    summarise,
    win_tie_loss,
)
from bench.report.tables import Tables, build_tables, compute_table
from bench.report.text import DOWN, UP


def _atomic_write(path: Path, data: bytes) -> None:
    """Temporary file beside `path` (created exclusively: bench/files.py), then rename: a reader never sees half a file."""
    atomic_write_bytes(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    """`_atomic_write` for text (UTF-8): compare's Markdown file, written the same safe way as the report."""
    _atomic_write(Path(path), text.encode())


@dataclass
class ReportResult:
    """What one report wrote (its folder, report.html, every file) and what the CLI prints: notes, win/tie/loss."""

    experiment_dir: Path
    html: Path
    files: list[Path]
    notes: list[str]
    win_tie_loss: pd.DataFrame
    seconds: float
    removed: list[Path] = field(default_factory=list)

    def __str__(self) -> str:  # what the sweep prints after "report:"
        return f"{self.html} ({len(self.files)} files in {self.seconds:.1f} s)"


def _check_wilcoxon(tests: pd.DataFrame, best: pd.DataFrame, alpha: float, notes: list[str]) -> None:
    """Refuse a Wilcoxon report that cannot reject anywhere (UserError, before anything is drawn or written: a
    refused report leaves the folder as it was); note where Holm's correction makes every rejection impossible."""
    n_max = largest_pairing(tests, best)
    check_wilcoxon_reachable(n_max, alpha)
    m = int(np.isfinite(tests["p"]).sum()) if len(tests) else 0
    if m > 1 and signed_rank_floor(n_max) * m >= alpha:
        notes.append(
            f"Wilcoxon with at most {n_max} paired seeds: its smallest p, {signed_rank_floor(n_max):.3g}, times the "
            f"{m} comparisons of the Holm family is {signed_rank_floor(n_max) * m:.3g} ≥ α = {alpha:g}, so no "
            "comparison with a baseline can be significant; the paired t-test (--test ttest) can."
        )


def _data_notes(df: pd.DataFrame, eff: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    """Notes on what the runs lack: a backbone without finetune, a reference that is not full-label, mixed
    thread counts, untested comparisons."""
    notes = []
    for b in sorted(df["backbone"].unique()):
        if baseline_recipe(df, b, "tuned") is None:
            notes.append(f"{b}: no {BASELINE} runs, so no {UP}/{DOWN} marks, gains over {BASELINE} or label efficiency for it.")
    for e in eff.to_dict("records"):
        if e["note"] and e["method"] == BASELINE:
            notes.append(f"{e['backbone']}/{e['recipe']}: {e['note']} (label efficiency).")
    notes += thread_notes(df)
    untested = tests[tests["mark"] == "untested"]
    if len(untested):
        notes.append(
            f"{len(untested)} comparison(s) with a baseline untested: " + "; ".join(sorted(set(untested["reason"]))) + "."
        )
    return notes


def _outputs(
    exp_dir: Path, tables: Tables, tests: pd.DataFrame, wtl: pd.DataFrame, compute: pd.DataFrame, figs: list[Figure]
) -> dict[Path, bytes]:
    """Every file of tables/ and plots/ with its bytes, in the order they are written."""
    outputs: dict[Path, bytes] = {}
    tdir, pdir = exp_dir / "tables", exp_dir / "plots"
    for model in tables.models():
        outputs[tdir / f"{model.stem}.md"] = to_markdown(model).encode()
        outputs[tdir / f"{model.stem}.tex"] = to_latex(model).encode()
        outputs[tdir / f"{model.stem}.csv"] = to_csv(model.frame).encode()
    outputs[tdir / "significance.csv"] = to_csv(tests).encode()
    outputs[tdir / "win_tie_loss.csv"] = to_csv(wtl).encode()
    outputs[tdir / "compute.csv"] = to_csv(compute).encode()
    for f in figs:
        outputs[pdir / f"{f.name}.png"] = f.png
        outputs[pdir / f"{f.name}.pdf"] = f.pdf
    return outputs


def _write(exp_dir: Path, outputs: dict[Path, bytes]) -> list[Path]:
    """Write `outputs` atomically, then remove what an earlier report left in tables/ and plots/ that this one
    no longer produces; returns the removed files."""
    for path, data in outputs.items():
        _atomic_write(path, data)
    removed = []
    for folder in (exp_dir / "tables", exp_dir / "plots"):
        for p in folder.iterdir():
            if p.suffix in (".md", ".tex", ".csv", ".png", ".pdf") and p not in outputs:
                p.unlink()
                removed.append(p)
    return removed


def write_report(experiment_dir: Path, *, test: str = "ttest", alpha: float = 0.05, storage: str | None = None) -> ReportResult:
    """Build every table, plot and report.html of one experiment from runs.csv and the Optuna storage.

    Called by the sweep at its end (`write_report(results_dir / experiment)`) and by `cli.py report`.
    Everything is computed in memory first, then written file by file atomically; outputs of an
    earlier report that this one no longer produces (a backbone dropped from the table) are removed
    from tables/ and plots/, so the folder always describes the current runs.csv."""
    t0 = time.perf_counter()
    check_test_args(test, alpha)
    exp_dir = Path(experiment_dir)
    df, notes = load_runs(exp_dir)
    if not os.access(exp_dir, os.W_OK):
        raise UserError(f"cannot write the report into {exp_dir}: the folder is not writable")
    name = experiment_name(df, exp_dir)
    info = protocol_info(df)
    stats = summarise(df)
    tests = paired_tests(df, test, alpha)
    best = best_tests(df, test, alpha)
    if test == "wilcoxon":
        _check_wilcoxon(tests, best, alpha, notes)
    eff = label_efficiency(df, stats)
    tables = build_tables(name, df, stats, tests, eff, test, alpha, best, info)
    notes[:0] = info.lines()
    notes += _data_notes(df, eff, tests)
    multi = df["recipe"].nunique() > 1

    def labeler(m: str, r: str) -> str:
        """A method's name in plots, with its recipe where the experiment has more than one."""
        return f"{m} ({r})" if multi else m

    studies = load_studies(exp_dir, name, storage, notes)
    figs = make_plots(exp_dir, df, tests, studies, labeler, notes, info.step_unit)
    wtl = win_tie_loss(tests)
    compute = compute_table(df)
    page = render_html(name, exp_dir, df, tables, tests, wtl, figs, studies, provenance(exp_dir, df, studies), notes, compute)
    outputs = _outputs(exp_dir, tables, tests, wtl, compute, figs)
    removed = _write(exp_dir, outputs)
    html_path = exp_dir / "report.html"
    _atomic_write(html_path, page.encode())
    return ReportResult(exp_dir, html_path, [*outputs, html_path], notes, wtl, time.perf_counter() - t0, removed)
