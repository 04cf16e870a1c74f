"""The report writer: `write_report` computes everything of one experiment in memory, writes tables/, plots/
and report.html into a fresh staging folder beside them, then moves them into place.

Why in this order: a report must never leave a half-written folder. Bad input (an unreadable runs.csv, a
Wilcoxon test that cannot reach alpha) stops it before any file is touched; a fault of the machine while
writing (a full disk: 16 of 27 files written and no report.html, issue 19) leaves the previous report as it
was, because nothing of it is replaced before every new file is on disk; and outputs of an earlier report
that this one no longer produces go with the old folders, so the folder always describes the current runs.csv.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.files import TMP_SUFFIX, atomic_write_bytes, stale_temp, temp_path, write_new
from bench.registry import UserError
from bench.report import selection
from bench.report.compute import compute_table
from bench.report.figure import Figure
from bench.report.grid import Completeness, completeness
from bench.report.html import render_html
from bench.report.load import experiment_name, find_experiment_dir, load_runs, load_studies, thread_notes
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
    tuning_gain,
    win_tie_loss,
)
from bench.report.tables import Tables, build_tables
from bench.report.text import DOWN, UP
from bench.report.verdicts import read_plan, sentences


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
    summary: list[str] = field(default_factory=list)  # the sentences generated from the primary family's verdicts
    grid: Completeness | None = None  # config.toml's grid against runs.csv (None: no readable config.toml)

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
    untested = tests[tests["verdict"] == "untested"]
    if len(untested):
        notes.append(
            f"{len(untested)} comparison(s) with a baseline untested: " + "; ".join(sorted(set(untested["reason"]))) + "."
        )
    return notes


def _outputs(
    exp_dir: Path,
    tables: Tables,
    tests: pd.DataFrame,
    wtl: pd.DataFrame,
    compute: pd.DataFrame,
    figs: list[Figure],
    summary: list[str],
    grid: Completeness | None = None,
) -> dict[Path, bytes]:
    """Every file of tables/ and plots/ with its bytes, in the order they are written."""
    outputs: dict[Path, bytes] = {}
    tdir, pdir = exp_dir / "tables", exp_dir / "plots"
    outputs[tdir / "summary.md"] = summary_markdown(tables.experiment, summary, grid).encode()
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


REPORT_FOLDERS = ("tables", "plots")
REPORT_SUFFIXES = (".md", ".tex", ".csv", ".png", ".pdf")  # what a report writes there; anything else is kept
STAGING = ".report"


def _put(path: Path, data: bytes) -> None:
    """One file of the staging folder (new, private to this report: created exclusively)."""
    write_new(path, data)


def _clean_staging(exp_dir: Path) -> None:
    """Staging folders that killed reports left (their process is gone from this machine, or they are an hour old)."""
    for p in exp_dir.glob(f"{STAGING}.*{TMP_SUFFIX}"):
        if p.is_dir() and not p.is_symlink() and stale_temp(p, older_than=3600):
            shutil.rmtree(p, ignore_errors=True)


def _stage(exp_dir: Path, outputs: dict[Path, bytes]) -> Path:
    """Every file of the report in a fresh staging folder inside `exp_dir` (same file system: moving is a
    rename). A failure (a full disk) removes the staging folder and names the file that could not be written."""
    staging = temp_path(exp_dir / STAGING)
    path = exp_dir
    try:
        staging.mkdir()  # a random name, created here (an existing one, a planted link included, fails)
        for path, data in outputs.items():
            dest = staging / path.relative_to(exp_dir)
            dest.parent.mkdir(exist_ok=True)
            _put(dest, data)
        for name in REPORT_FOLDERS:
            (staging / name).mkdir(exist_ok=True)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    return staging


def _write(exp_dir: Path, outputs: dict[Path, bytes]) -> list[Path]:
    """Write `outputs` (tables/ and plots/, report.html) into a staging folder, then move them into place,
    under a lock so that two reports of one folder do not interleave their moves. Files of the old
    folders that a report does not write (a user's notes) move along into the new ones; report files of an
    earlier report that this one no longer produces go with the old folders. Returns those removed."""
    _clean_staging(exp_dir)
    staging = _stage(exp_dir, outputs)
    try:
        fd = os.open(exp_dir / f"{STAGING}.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return _swap(exp_dir, staging, outputs)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(exp_dir: Path, staging: Path, outputs: dict[Path, bytes]) -> list[Path]:
    """Renames only (no byte is written, so a full disk cannot stop it half-way): each old folder goes into
    the staging folder (removed with it), each new one takes its place, then report.html."""
    removed = []
    for name in REPORT_FOLDERS:
        old, new = exp_dir / name, staging / name
        if old.is_dir() and not old.is_symlink():
            for p in sorted(old.iterdir()):
                if p.suffix not in REPORT_SUFFIXES or p.name.startswith("."):
                    os.rename(p, new / p.name)
                elif p not in outputs:
                    removed.append(p)
            os.rename(old, staging / f"{name}.old")
        elif old.exists() or old.is_symlink():
            raise UserError(f"cannot write the report into {exp_dir}: {old} is not a folder; move it away")
        os.rename(new, old)
    os.replace(staging / "report.html", exp_dir / "report.html")
    return removed


def summary_markdown(experiment: str, summary: list[str], grid: Completeness | None = None) -> str:
    """tables/summary.md: the verdict sentences, one bullet each (what the README's answer is copied from); above
    them, for an unfinished grid, what is missing (a sentence copied from here must not pass for the grid's)."""
    head = (
        f"# {experiment}: what the verdicts say\n\nGenerated by `python cli.py report` from the primary family's "
        "verdicts (tables/significance.csv); nothing here says more than a verdict.\n\n"
    )
    if grid is not None and not grid.complete:
        line = grid.line(limit=None)
        head += f"**{line[0].upper()}{line[1:]}** The verdicts below describe the runs present only.\n\n"
    return head + "".join(f"- {s}\n" for s in summary)


def write_report(
    experiment_dir: Path, *, test: str = "ttest", alpha: float | None = None, storage: str | None = None
) -> ReportResult:
    """Build every table, plot and report.html of one experiment from runs.csv and the Optuna storage.

    Called by the sweep at its end (`write_report(results_dir / experiment)`) and by `cli.py report`.
    Everything is computed in memory first, then written into a staging folder and moved into place
    (`_write`): a fault while writing leaves the previous report whole; outputs of an earlier report
    that this one no longer produces (a backbone dropped from the table) are gone with it, so the
    folder always describes the current runs.csv."""
    t0 = time.perf_counter()
    exp_dir = Path(experiment_dir)
    plan = read_plan(exp_dir)
    if alpha is not None:
        plan = replace(plan, alpha=alpha)
    alpha = plan.alpha
    check_test_args(test, alpha)
    df, notes = load_runs(exp_dir)
    if not os.access(exp_dir, os.W_OK):
        raise UserError(f"cannot write the report into {exp_dir}: the folder is not writable")
    grid = completeness(exp_dir, df, notes)
    name = experiment_name(df, exp_dir)
    info = protocol_info(df)
    stats = summarise(df)
    tests = paired_tests(df, test, alpha, plan)
    best = best_tests(df, test, alpha)
    if test == "wilcoxon":
        _check_wilcoxon(tests, best, alpha, notes)
    eff = label_efficiency(df, stats)
    tables = build_tables(name, df, stats, tests, eff, test, alpha, best, info, tuning_gain(df, test))
    summary = sentences(tests, df, plan)
    if chance := info.chance_line():
        summary.append(chance)
    notes[:0] = info.lines()
    notes += _data_notes(df, eff, tests)
    if tables.sft_missing():
        notes.append(tables.sft_missing() or "")
    multi = df["recipe"].nunique() > 1

    def labeler(m: str, r: str) -> str:
        """A method's name in plots, with its recipe where the experiment has more than one."""
        return f"{m} ({r})" if multi else m

    studies = load_studies(exp_dir, name, storage, notes)
    if found := selection.choices(studies, exp_dir):
        tables.selection = selection.table(found, name)
        if close := selection.summary_line(found, tests):
            summary.append(close)
    figs = make_plots(exp_dir, df, tests, studies, labeler, notes, info.step_unit)
    notes += [f"Figure {f.name}: {p}." for f in figs for p in f.problems]
    wtl = win_tie_loss(tests)
    compute = compute_table(df)
    prov = provenance(exp_dir, df, studies)
    page = render_html(name, exp_dir, df, tables, tests, wtl, figs, studies, prov, notes, compute, summary, grid)
    outputs = _outputs(exp_dir, tables, tests, wtl, compute, figs, summary, grid)
    html_path = exp_dir / "report.html"
    removed = _write(exp_dir, {**outputs, html_path: page.encode()})
    seconds = time.perf_counter() - t0
    return ReportResult(exp_dir, html_path, [*outputs, html_path], notes, wtl, seconds, removed, summary, grid)


def write(
    results_dir: str | Path = "results",
    experiment: str | None = None,
    *,
    test: str = "ttest",
    alpha: float | None = None,
    storage: str | None = None,
) -> ReportResult:
    """The report of one experiment, found as `cli.py report` finds it: RESULTS_DIR/EXPERIMENT, or
    RESULTS_DIR itself when it holds runs.csv, or its only experiment. The Python API's entry point
    (`bench.report.write("results", "quick")`); returns what was written (`ReportResult`)."""
    return write_report(find_experiment_dir(Path(results_dir), experiment), test=test, alpha=alpha, storage=storage)
