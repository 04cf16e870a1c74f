"""Reports: `runs.csv` + the Optuna storage -> tables, plots, label efficiency and `report.html`;
and `compare(a, b)` for two experiments side by side.

Why this module only reads: a report has to be rebuildable at any time from the two things a
sweep leaves behind (the runs table and the Optuna storage), so it never writes to them, never
reruns anything, and computes every number and every figure in memory before it writes a single
file (bad input leaves nothing half-written, and a failed report leaves the last good one).

Statistics, stated once so every output says the same thing:
- a cell is (backbone, recipe, method, fraction); its value is the mean +- sample std (ddof=1)
  of `test_accuracy` over seeds, with n; n=1 has no std ("–") and is never tested;
- each method is compared with `finetune` of the same backbone at the same fraction, paired by
  seed (seed s = the same labelled subset for every method), with a paired t-test (default) or
  Wilcoxon's signed-rank test; the p-values of all comparisons in the experiment form one family
  and are Holm-corrected together; a mark needs at least 2 paired seeds;
- the baseline is `finetune` of the same recipe when it exists, else `finetune` of another recipe
  of the same backbone (`tuned` first); the tables name the baseline used.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import os
import re
import subprocess
import textwrap
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomllib

from bench.registry import UserError, did_you_mean

BASELINE = "finetune"
METRIC = "test_accuracy"
RUNS_CSV = "runs.csv"
JOURNAL = "optuna.journal"
REQUIRED = ("backbone", "method", "recipe", "fraction", "seed", METRIC)
KEY = ["backbone", "recipe", "method", "fraction"]
TESTS = ("ttest", "wilcoxon")
TEST_NAMES = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
# Display order (the registry's order in bench/methods.py); copied here so a report never imports
# torch. Methods not listed follow alphabetically.
METHOD_ORDER = ("finetune", "linear_probe", "lp_ft", "seed_sft", "sft", "sft-mlp", "sft-side")
RECIPE_ORDER = ("tuned", "seed")
UP, DOWN = "↑", "↓"
EFFICIENCY_LEVELS = (0.90, 0.95)
PNG_DPI = 110


# ---------------------------------------------------------------- small helpers


def _atomic_write(path: Path, data: bytes) -> None:
    """Temporary file beside `path`, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), text.encode())


def _method_rank(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m), "") if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def _recipe_rank(r: str) -> tuple[int, str]:
    return (RECIPE_ORDER.index(r), "") if r in RECIPE_ORDER else (len(RECIPE_ORDER), r)


def row_sort_key(row: tuple[str, str, str]) -> tuple:
    """Rows are (backbone, recipe, method): backbone, then method in registry order, then recipe."""
    b, r, m = row
    return (b, _method_rank(m), _recipe_rank(r))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def frac_label(f: float) -> str:
    """Column header of a label fraction: 0.01 -> '1%'."""
    return f"{100 * f:.4g}%"


def pct(x: float) -> str:
    """The one rounding every table uses: accuracy as a percentage with 2 decimals."""
    return f"{100 * x:.2f}"


def tex_escape(text: str) -> str:
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(repl.get(c, c) for c in text)


def t_interval(values: Iterable[float]) -> tuple[float, float]:
    """95% Student-t interval of the mean: honest for 3-5 seeds, where a bootstrap is too narrow.
    One value: (x, x), i.e. no band."""
    from scipy import stats

    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (math.nan, math.nan)
    m = float(v.mean())
    if len(v) < 2:
        return (m, m)
    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return (m - h, m + h)


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaN (untested) stays NaN and is not counted in m."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


# ---------------------------------------------------------------- finding and loading results


def experiments_in(results_dir: Path) -> list[str]:
    if not results_dir.is_dir():
        return []
    return sorted(p.name for p in results_dir.iterdir() if (p / RUNS_CSV).is_file())


def find_experiment_dir(results_dir: Path, experiment: str | None = None) -> Path:
    """`--results-dir R --experiment E` -> R/E; without E: R itself if it holds runs.csv, or its only experiment."""
    results_dir = Path(results_dir)
    if experiment:
        cand = results_dir / experiment
        if (cand / RUNS_CSV).is_file():
            return cand
        names = experiments_in(results_dir)
        listed = f"; experiments there: {', '.join(names)}" if names else "; run `python cli.py sweep` first"
        raise UserError(f"no runs table at {cand / RUNS_CSV}{did_you_mean(experiment, names)}{listed}")
    if (results_dir / RUNS_CSV).is_file():
        return results_dir
    names = experiments_in(results_dir)
    if len(names) == 1:
        return results_dir / names[0]
    if not names:
        raise UserError(
            f"no experiment with a {RUNS_CSV} under {results_dir}; run `python cli.py sweep` first or pass --results-dir"
        )
    raise UserError(f"{results_dir} holds several experiments ({', '.join(names)}); choose one with --experiment")


def resolve_experiment(arg: str | Path, results_dir: Path, experiment: str | None = None) -> Path:
    """For `compare`: an experiment folder, an experiment name under --results-dir, or a results
    folder (with --experiment, or holding exactly one experiment)."""
    p = Path(arg)
    if (p / RUNS_CSV).is_file():
        return p
    if (Path(results_dir) / str(arg) / RUNS_CSV).is_file():
        return Path(results_dir) / str(arg)
    if p.is_dir():
        return find_experiment_dir(p, experiment)
    names = experiments_in(Path(results_dir))
    raise UserError(
        f"'{arg}' is neither an experiment folder (with {RUNS_CSV}) nor an experiment under {results_dir}"
        f"{did_you_mean(str(arg), names)}" + (f"; experiments there: {', '.join(names)}" if names else "")
    )


def load_runs(experiment_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and check runs.csv; return the table (one row per cell and seed) and notes about it."""
    path = Path(experiment_dir) / RUNS_CSV
    if not path.is_file():
        raise UserError(f"no runs table at {path}; run `python cli.py sweep` first")
    try:
        df = pd.read_csv(path, dtype={"run_id": str, "study": str, "predictions": str, "git_commit": str})
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; no finished runs to report yet") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; is it a runs table written by the sweep?")
    if df.empty:
        raise UserError(f"{path} has no rows; no finished runs to report yet")
    for col in ("backbone", "method", "recipe"):
        if df[col].isna().any():
            raise UserError(f"{path}: {int(df[col].isna().sum())} row(s) have no {col}")
        df[col] = df[col].astype(str)
    for col in ("fraction", "seed", METRIC):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = int(num.isna().sum())
        if bad:
            raise UserError(f"{path}: {bad} row(s) have a missing or non-numeric {col}")
        df[col] = num
    if ((df["fraction"] <= 0) | (df["fraction"] > 1)).any():
        raise UserError(f"{path}: fractions must lie in (0, 1]")
    if ((df[METRIC] < 0) | (df[METRIC] > 1)).any():
        raise UserError(f"{path}: {METRIC} must be a fraction in [0, 1]")
    df["seed"] = df["seed"].astype(int)
    df["fraction"] = df["fraction"].astype(float)
    notes = []
    order = df["finished_at"].astype(str) if "finished_at" in df.columns else pd.Series(range(len(df)), index=df.index)
    df = df.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
    dup = df.duplicated([*KEY, "seed"], keep="last")
    if dup.any():
        notes.append(
            f"{int(dup.sum())} row(s) of runs.csv repeat a (backbone, recipe, method, fraction, seed) already present; "
            "the latest by finished_at is used."
        )
        df = df[~dup]
    return df.reset_index(drop=True), notes


def experiment_name(df: pd.DataFrame, experiment_dir: Path) -> str:
    if "experiment" in df.columns:
        names = df["experiment"].dropna().astype(str).unique()
        if len(names) == 1:
            return str(names[0])
    return Path(experiment_dir).resolve().name


# ---------------------------------------------------------------- statistics


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: n, mean, sample std (NaN for n=1), 95% t half-width."""
    from scipy import stats as st

    g = df.groupby(KEY, sort=False)[METRIC]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    tq = out["n"].map(lambda n: st.t.ppf(0.975, n - 1) if n > 1 else math.nan)
    out["ci95"] = tq * out["std"] / np.sqrt(out["n"])
    return out


def baseline_recipe(df: pd.DataFrame, backbone: str, recipe: str) -> str | None:
    """Which `finetune` a (backbone, recipe) row is compared with: same recipe, else `tuned`, else any."""
    have = set(df.loc[(df["method"] == BASELINE) & (df["backbone"] == backbone), "recipe"])
    for r in (recipe, *RECIPE_ORDER, *sorted(have)):
        if r in have:
            return r
    return None


def _test_pairs(x: np.ndarray, y: np.ndarray, test: str) -> tuple[float, float, str]:
    """(statistic, p, reason-if-untested) of x against y, paired."""
    from scipy import stats as st

    if len(x) < 2:
        return math.nan, math.nan, f"{len(x)} paired seed(s); a test needs at least 2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            r = st.ttest_rel(x, y) if test == "ttest" else st.wilcoxon(x, y)
        except ValueError as exc:
            return math.nan, math.nan, f"test undefined ({exc})"
    stat, p = float(r.statistic), float(r.pvalue)
    if not math.isfinite(p):
        return stat, math.nan, "test undefined (all paired differences equal)"
    if np.ptp(x - y) == 0:  # scipy's answer, kept: t is infinite, so p = 0; said so beside it
        return stat, p, "all paired differences equal (zero variance)"
    return stat, p, ""


def mark_of(diff: float, p_adj: float, alpha: float) -> str:
    if not math.isfinite(p_adj):
        return "untested"
    if p_adj < alpha:
        return "better" if diff > 0 else "worse"
    return "ns"


def paired_tests(df: pd.DataFrame, test: str = "ttest", alpha: float = 0.05) -> pd.DataFrame:
    """Every (backbone, recipe, method != baseline, fraction) against its `finetune`, paired by seed, Holm over all."""
    rows = []
    acc = {k: g.set_index("seed")[METRIC] for k, g in df.groupby(KEY, sort=False)}
    for (b, r, m, f), series in acc.items():
        base_r = baseline_recipe(df, b, r)
        if base_r is None or (m == BASELINE and r == base_r):
            continue
        row = dict(backbone=b, recipe=r, method=m, fraction=f, baseline=f"{BASELINE}/{base_r}", test=test)
        base = acc.get((b, base_r, BASELINE, f))
        if base is None:
            row.update(n_pairs=0, diff_mean=math.nan, diff_std=math.nan, statistic=math.nan, p=math.nan)
            row["reason"] = f"no {BASELINE}/{base_r} at this fraction"
            rows.append(row)
            continue
        seeds = sorted(set(series.index) & set(base.index))
        x, y = series.loc[seeds].to_numpy(float), base.loc[seeds].to_numpy(float)
        d = x - y
        stat, p, reason = _test_pairs(x, y, test)
        row.update(
            n_pairs=len(seeds),
            seeds=" ".join(map(str, seeds)),
            diff_mean=float(d.mean()) if len(d) else math.nan,
            diff_std=float(d.std(ddof=1)) if len(d) > 1 else math.nan,
            statistic=stat,
            p=p,
            reason=reason,
        )
        rows.append(row)
    cols = [*KEY, "baseline", "test", "n_pairs", "seeds", "diff_mean", "diff_std", "statistic", "p", "p_holm", "mark", "reason"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "mark")])
    if len(out):
        order = [
            (*row_sort_key((b, r, m)), f)
            for b, r, m, f in out[["backbone", "recipe", "method", "fraction"]].itertuples(index=False)
        ]
        out = out.iloc[sorted(range(len(out)), key=order.__getitem__)].reset_index(drop=True)
    out["seeds"] = out["seeds"].fillna("")
    out["p_holm"] = holm(out["p"]) if len(out) else []
    out["mark"] = [mark_of(d, q, alpha) for d, q in zip(out["diff_mean"], out["p_holm"], strict=True)]
    return out[cols]


def win_tie_loss(tests: pd.DataFrame) -> pd.DataFrame:
    """Per method: cells significantly better (win), not significantly different (tie), worse (loss), untested."""
    rows = []
    for m in sorted(tests["method"].unique(), key=_method_rank) if len(tests) else []:
        t = tests[tests["method"] == m]
        c = t["mark"].value_counts()
        rows.append(
            dict(
                method=m,
                win=int(c.get("better", 0)),
                tie=int(c.get("ns", 0)),
                loss=int(c.get("worse", 0)),
                untested=int(c.get("untested", 0)),
                higher_mean=int((t["diff_mean"] > 0).sum()),
                lower_mean=int((t["diff_mean"] < 0).sum()),
            )
        )
    return pd.DataFrame(rows, columns=["method", "win", "tie", "loss", "untested", "higher_mean", "lower_mean"])


# ---------------------------------------------------------------- label efficiency


def fraction_to_reach(fractions: Iterable[float], accs: Iterable[float], target: float) -> tuple[float, str]:
    """The smallest label fraction at which the accuracy curve, linear in log10(fraction) between the
    measured fractions, first reaches `target`. Returns (fraction, bound): bound "=" (interpolated or
    measured), "<=" (already reached at the smallest measured fraction: no extrapolation below it),
    ">" (never reached; the fraction returned is the largest measured), "n/a" (no points)."""
    pts = sorted(zip(fractions, accs, strict=True))
    if not pts:
        return math.nan, "n/a"
    if pts[0][1] >= target:
        return pts[0][0], "<="
    for (f0, a0), (f1, a1) in zip(pts, pts[1:], strict=False):
        if a0 < target <= a1:
            l0, l1 = math.log10(f0), math.log10(f1)
            return 10 ** (l0 + (target - a0) / (a1 - a0) * (l1 - l0)), "="
    return pts[-1][0], ">"


def auc_log_fraction(fractions: Iterable[float], accs: Iterable[float]) -> float:
    """Area under accuracy vs log10(fraction) (trapezoids), divided by the width of the log10 range:
    the curve's average accuracy over the range, comparable across ranges of different width. NaN
    with fewer than 2 fractions."""
    pts = sorted(zip(fractions, accs, strict=True))
    if len(pts) < 2:
        return math.nan
    lx = np.log10([p[0] for p in pts])
    ay = np.array([p[1] for p in pts])
    return float(np.sum((ay[1:] + ay[:-1]) / 2 * np.diff(lx)) / (lx[-1] - lx[0]))


def label_efficiency(df: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, recipe, method): fraction needed for 90% / 95% of full-label `finetune` accuracy,
    and the normalised area under the accuracy-log-fraction curve.

    The reference is the baseline `finetune` (see `baseline_recipe`) at fraction 1.0. Without a
    full-label run it is `finetune` at the largest fraction it has, and the `reference` column says
    so (`full_label` False); without any `finetune` for the backbone the row is n/a with a reason."""
    rows = []
    keys = sorted({(b, r, m) for b, r, m in stats[["backbone", "recipe", "method"]].itertuples(index=False)}, key=row_sort_key)
    for b, r, m in keys:
        mine = stats[(stats["backbone"] == b) & (stats["recipe"] == r) & (stats["method"] == m)].sort_values("fraction")
        all_fracs = sorted(stats.loc[stats["backbone"] == b, "fraction"].unique())
        row: dict[str, Any] = dict(backbone=b, recipe=r, method=m, fractions=" ".join(f"{f:g}" for f in mine["fraction"]))
        row["auc"] = auc_log_fraction(mine["fraction"], mine["mean"])
        row["auc_range"] = f"{mine['fraction'].min():g}-{mine['fraction'].max():g}"
        row["auc_partial"] = len(mine) < len(all_fracs)
        base_r = baseline_recipe(df, b, r)
        ref = stats[(stats["backbone"] == b) & (stats["recipe"] == base_r) & (stats["method"] == BASELINE)] if base_r else None
        if ref is None or ref.empty:
            row.update(reference="n/a", full_label=False, reference_accuracy=math.nan, note=f"no {BASELINE} for {b}")
            for q in EFFICIENCY_LEVELS:
                row[f"frac{round(q * 100)}"], row[f"frac{round(q * 100)}_bound"] = math.nan, "n/a"
            rows.append(row)
            continue
        ref_row = ref.sort_values("fraction").iloc[-1]
        full = math.isclose(float(ref_row["fraction"]), 1.0)
        row.update(
            reference=f"{BASELINE}/{base_r} @ {frac_label(float(ref_row['fraction']))}",
            reference_fraction=float(ref_row["fraction"]),
            full_label=full,
            reference_accuracy=float(ref_row["mean"]),
            note="" if full else f"no full-label {BASELINE}: relative to {BASELINE} at {frac_label(float(ref_row['fraction']))}",
        )
        for q in EFFICIENCY_LEVELS:
            key = f"frac{round(q * 100)}"
            row[key], row[f"{key}_bound"] = fraction_to_reach(mine["fraction"], mine["mean"], q * float(ref_row["mean"]))
        rows.append(row)
    cols = [
        "backbone",
        "recipe",
        "method",
        "reference",
        "reference_fraction",
        "full_label",
        "reference_accuracy",
        "frac90",
        "frac90_bound",
        "frac95",
        "frac95_bound",
        "auc",
        "auc_range",
        "auc_partial",
        "fractions",
        "note",
    ]
    return pd.DataFrame(rows).reindex(columns=cols)


def fmt_needed(value: float, bound: str) -> str:
    if bound == "n/a" or not math.isfinite(value):
        return "n/a"
    v = frac_label(value)
    return {"=": v, "<=": f"≤{v}", ">": f">{v}"}[bound]


# ---------------------------------------------------------------- tables


@dataclass
class Tables:
    """The accuracy and efficiency tables in one model, rendered to Markdown, LaTeX, CSV and HTML
    from the same strings, so the numbers cannot drift apart between formats."""

    experiment: str
    rows: list[tuple[str, str, str]]  # (backbone, recipe, method)
    fractions: list[float]
    cells: pd.DataFrame  # tidy: one row per present cell with display fields
    efficiency: pd.DataFrame
    show_recipe: bool
    test: str
    alpha: float
    n_tests: int

    # -- accuracy table
    def _cell(self, row: tuple[str, str, str], f: float) -> dict | None:
        key = (*row, f)
        return self.index.get(key)

    def __post_init__(self) -> None:
        self.index = {(c["backbone"], c["recipe"], c["method"], c["fraction"]): c for c in self.cells.to_dict("records")}

    def _head(self) -> list[str]:
        return ["backbone", "method", *(["recipe"] if self.show_recipe else [])]

    def _labels(self, row: tuple[str, str, str]) -> list[str]:
        b, r, m = row
        return [b, m, *([r] if self.show_recipe else [])]

    def cell_md(self, c: dict | None) -> str:
        if c is None:
            return "—"
        std = "–" if c["n"] < 2 else pct(c["std"])
        core = f"{pct(c['mean'])} ± {std}"
        if c["bold"]:
            core = f"**{core}**"
        mark = {"better": f" {UP}", "worse": f" {DOWN}"}.get(c["mark"], "")
        return f"{core} (n={c['n']}){mark}"

    def cell_tex(self, c: dict | None) -> str:
        if c is None:
            return "---"
        std = "--" if c["n"] < 2 else pct(c["std"])
        core = f"{pct(c['mean'])} $\\pm$ {std}"
        if c["bold"]:
            core = f"\\textbf{{{core}}}"
        mark = {"better": "$^{\\uparrow}$", "worse": "$^{\\downarrow}$"}.get(c["mark"], "")
        return f"{core}{mark} {{\\scriptsize ({c['n']})}}"

    def cell_html(self, c: dict | None) -> str:
        if c is None:
            return "—"
        std = "–" if c["n"] < 2 else pct(c["std"])
        core = f"{pct(c['mean'])} ± {std}"
        if c["bold"]:
            core = f"<b>{core}</b>"
        mark = {"better": f"<sup>{UP}</sup>", "worse": f"<sup>{DOWN}</sup>"}.get(c["mark"], "")
        return f"{core}{mark} <small>(n={c['n']})</small>"

    def accuracy_notes(self) -> list[str]:
        test = TEST_NAMES[self.test]
        return [
            "Test accuracy (%) per cell: mean ± sample std over seeds, (n) = number of seeds; – : one seed, no std; — : not run.",
            "Bold: the best mean (as shown) in the column within each backbone.",
            f"{UP} / {DOWN}: significantly higher / lower than the row's `{BASELINE}` baseline ({test} over paired seeds, "
            f"Holm-corrected over all {self.n_tests} comparisons of this experiment, α = {self.alpha:g}); no mark: not "
            "significant, the baseline itself, or untested (fewer than 2 paired seeds); see tables/significance.csv.",
        ]

    def accuracy_markdown(self) -> str:
        head = [*self._head(), *(frac_label(f) for f in self.fractions)]
        lines = [f"| {' | '.join(head)} |", f"|{'|'.join(['---'] * len(self._head()) + ['---:'] * len(self.fractions))}|"]
        for row in self.rows:
            cells = [self.cell_md(self._cell(row, f)) for f in self.fractions]
            lines.append(f"| {' | '.join([f'`{x}`' if i == 1 else x for i, x in enumerate(self._labels(row))] + cells)} |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"{n}  " for n in self.accuracy_notes()).rstrip() + "\n"

    def accuracy_latex(self) -> str:
        nl = len(self._head())
        lines = [
            "% Needs \\usepackage{booktabs}. Generated by `python cli.py report`; numbers as in accuracy.csv.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{Test accuracy (\\%) on CIFAR-10, experiment {tex_escape(self.experiment)}: mean $\\pm$ std over seeds "
            f"(number of seeds in parentheses). Bold: best in the column per backbone. $^{{\\uparrow}}$/$^{{\\downarrow}}$: "
            f"significantly higher/lower than {BASELINE} ({TEST_NAMES[self.test]}, Holm-corrected over "
            f"{self.n_tests} comparisons, $\\alpha={self.alpha:g}$). --: one seed; ---: not run.}}",
            f"\\label{{tab:accuracy-{slug(self.experiment)}}}",
            f"\\begin{{tabular}}{{{'l' * nl}{'r' * len(self.fractions)}}}",
            "\\toprule",
            " & ".join([*(tex_escape(h) for h in self._head()), *(tex_escape(frac_label(f)) for f in self.fractions)]) + " \\\\",
            "\\midrule",
        ]
        prev = None
        for row in self.rows:
            if prev is not None and row[0] != prev:
                lines.append("\\midrule")
            labels = [tex_escape(x) for x in self._labels(row)]
            if row[0] == prev:
                labels[0] = ""
            prev = row[0]
            cells = [self.cell_tex(self._cell(row, f)) for f in self.fractions]
            lines.append(" & ".join(labels + cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        return "\n".join(lines)

    def accuracy_csv(self) -> str:
        """Tidy: one line per cell; accuracy_mean/std/ci95 as fractions at full precision (the other formats show
        them as percentages rounded to 2 decimals), plus the comparison with the baseline behind the mark."""
        out = self.cells.rename(columns={"mean": "accuracy_mean", "std": "accuracy_std", "ci95": "accuracy_ci95"})
        return out.to_csv(index=False, lineterminator="\n")

    def accuracy_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in [*self._head(), *(frac_label(f) for f in self.fractions)])
        body = []
        for row in self.rows:
            lab = "".join(f"<td>{html.escape(x)}</td>" for x in self._labels(row))
            cells = "".join(f'<td class="num">{self.cell_html(self._cell(row, f))}</td>' for f in self.fractions)
            body.append(f"<tr>{lab}{cells}</tr>")
        notes = "".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in self.accuracy_notes())
        return (
            f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table><ul class="notes">{notes}</ul>'
        )

    # -- efficiency table
    def _eff_rows(self) -> list[tuple[list[str], dict]]:
        out = []
        for e in self.efficiency.to_dict("records"):
            out.append((self._labels((e["backbone"], e["recipe"], e["method"])), e))
        return out

    @staticmethod
    def _eff_values(e: dict) -> list[str]:
        auc = "n/a" if not math.isfinite(e["auc"]) else pct(e["auc"]) + ("*" if e["auc_partial"] else "")
        ref = (
            e["reference"] if not math.isfinite(e["reference_accuracy"]) else f"{e['reference']} ({pct(e['reference_accuracy'])})"
        )
        if e["reference"] != "n/a" and not e["full_label"]:
            ref += " [not full-label]"
        return [ref, fmt_needed(e["frac90"], e["frac90_bound"]), fmt_needed(e["frac95"], e["frac95_bound"]), auc, e["auc_range"]]

    EFF_HEAD = ("reference (acc. %)", "labels for 90%", "labels for 95%", "AUC (%)", "AUC range")

    def efficiency_notes(self) -> list[str]:
        return [
            f"Labels for 90% / 95%: the label fraction at which the method's mean accuracy first reaches 90% / 95% of the "
            f"reference (the row's `{BASELINE}` baseline at the full label set), interpolated linearly on the log10-fraction "
            "axis between measured fractions; ≤x: reached already at the smallest measured fraction x; >x: not reached "
            "up to the largest measured fraction x.",
            "[not full-label]: the experiment has no fraction-1 run of the baseline, so the reference is the baseline at its "
            "largest fraction (stated in the reference column).",
            "AUC: area under mean accuracy (%) against log10(fraction), divided by the width of the log10 range (the curve's "
            "average accuracy over that range); * : the method lacks some of the backbone's fractions, so its range differs "
            "and its AUC is not comparable with the other rows.",
        ]

    def efficiency_markdown(self) -> str:
        head = [*self._head(), *self.EFF_HEAD]
        lines = [f"| {' | '.join(head)} |", f"|{'|'.join(['---'] * len(head))}|"]
        for labels, e in self._eff_rows():
            labels = [f"`{x}`" if i == 1 else x for i, x in enumerate(labels)]
            lines.append(f"| {' | '.join(labels + self._eff_values(e))} |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"{n}  " for n in self.efficiency_notes()).rstrip() + "\n"

    def efficiency_latex(self) -> str:
        head = [*self._head(), *self.EFF_HEAD]
        lines = [
            "% Needs \\usepackage{booktabs}. Generated by `python cli.py report`; numbers as in efficiency.csv.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{Label efficiency, experiment {tex_escape(self.experiment)}: label fraction needed to reach "
            f"90\\% / 95\\% of the reference accuracy ({BASELINE} at the full label set, else at its largest fraction), "
            "interpolated on the log-fraction axis; AUC: mean accuracy (\\%) over the log10-fraction range "
            "(*: partial range).}",
            f"\\label{{tab:efficiency-{slug(self.experiment)}}}",
            f"\\begin{{tabular}}{{{'l' * len(self._head())}lrrrl}}",
            "\\toprule",
            " & ".join(tex_escape(h) for h in head) + " \\\\",
            "\\midrule",
        ]
        prev = None
        for labels, e in self._eff_rows():
            if prev is not None and labels[0] != prev:
                lines.append("\\midrule")
            tl = [tex_escape(x) for x in labels]
            if labels[0] == prev:
                tl[0] = ""
            prev = labels[0]
            vals = [tex_escape(v).replace("≤", "$\\le$").replace(">", "$>$") for v in self._eff_values(e)]
            lines.append(" & ".join(tl + vals) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        return "\n".join(lines)

    def efficiency_csv(self) -> str:
        return self.efficiency.to_csv(index=False, lineterminator="\n")

    def efficiency_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in [*self._head(), *self.EFF_HEAD])
        body = []
        for labels, e in self._eff_rows():
            cells = "".join(f"<td>{html.escape(x)}</td>" for x in labels)
            cells += "".join(f'<td class="num">{html.escape(v)}</td>' for v in self._eff_values(e))
            body.append(f"<tr>{cells}</tr>")
        notes = "".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in self.efficiency_notes())
        return (
            f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table><ul class="notes">{notes}</ul>'
        )


def build_tables(
    experiment: str, df: pd.DataFrame, stats: pd.DataFrame, tests: pd.DataFrame, eff: pd.DataFrame, test: str, alpha: float
) -> Tables:
    cells = stats.merge(tests[[*KEY, "baseline", "n_pairs", "diff_mean", "p", "p_holm", "mark", "reason"]], on=KEY, how="left")
    is_base = cells["baseline"].isna()
    cells["baseline"] = cells["baseline"].fillna("")
    # A row without a comparison is either the baseline itself or a row whose backbone has no finetune.
    cells["mark"] = cells["mark"].where(~is_base, np.where(cells["method"] == BASELINE, "baseline", "no baseline"))
    cells["reason"] = cells["reason"].fillna("")
    cells["n_pairs"] = cells["n_pairs"].fillna(0).astype(int)
    cells["n"] = cells["n"].astype(int)
    shown = cells["mean"].map(pct).astype(float)
    best = shown.groupby([cells["backbone"], cells["fraction"]]).transform("max")
    cells["bold"] = shown == best
    rows = sorted({(b, r, m) for b, r, m in cells[["backbone", "recipe", "method"]].itertuples(index=False)}, key=row_sort_key)
    order = {row: i for i, row in enumerate(rows)}
    cells = cells.assign(_o=[order[(b, r, m)] for b, r, m in cells[["backbone", "recipe", "method"]].itertuples(index=False)])
    cells = cells.sort_values(["_o", "fraction"]).drop(columns="_o").reset_index(drop=True)
    cells.insert(4, "column", cells["fraction"].map(frac_label))
    tab = Tables(
        experiment=experiment,
        rows=rows,
        fractions=sorted(cells["fraction"].unique()),
        cells=cells,
        efficiency=eff,
        show_recipe=df["recipe"].nunique() > 1,
        test=test,
        alpha=alpha,
        n_tests=int(np.isfinite(tests["p"]).sum()) if len(tests) else 0,
    )
    return tab


# ---------------------------------------------------------------- Optuna


@dataclass
class StudyInfo:
    name: str
    backbone: str
    method: str
    recipe: str
    fraction: float
    trials: list  # FrozenTrial
    study: Any  # optuna.Study (for importances)


def storage_location(experiment_dir: Path, storage: str | None) -> str:
    """`storage` argument, else the `storage` of the experiment's config.toml, else R/E/optuna.journal."""
    if storage:
        return storage
    cfg = Path(experiment_dir) / "config.toml"
    if cfg.is_file():
        try:
            loc = str(tomllib.loads(cfg.read_text()).get("storage", "") or "")
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            loc = ""
        if loc:
            return loc
    return str(Path(experiment_dir) / JOURNAL)


def load_studies(experiment_dir: Path, experiment: str, storage: str | None, notes: list[str]) -> list[StudyInfo]:
    """The search studies of this experiment (names "{experiment}/..."), read-only."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loc = storage_location(experiment_dir, storage)
    try:
        if "://" in loc:
            store: Any = optuna.storages.RDBStorage(loc, skip_table_creation=True)
        else:
            if not Path(loc).is_file():
                notes.append(f"No Optuna storage at {loc}: hyperparameter importances and optimisation histories are omitted.")
                return []
            store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(loc))
        summaries = store.get_all_studies()
    except Exception as exc:  # a damaged or unreachable storage must not cost the whole report
        notes.append(f"Could not read the Optuna storage {loc} ({type(exc).__name__}: {exc}); its plots are omitted.")
        return []
    out = []
    prefix = f"{experiment}/"
    for s in summaries:
        if not s.study_name.startswith(prefix):
            continue
        a = s.user_attrs
        parts = s.study_name[len(prefix) :].split("/")
        try:
            b, m, r, f = (
                (a["backbone"], a["method"], a["recipe"], float(a["fraction"]))
                if "backbone" in a
                else (*parts[:3], float(parts[3]))
            )
        except (KeyError, IndexError, ValueError):
            notes.append(f"Study '{s.study_name}' names no cell; skipped.")
            continue
        study = optuna.load_study(study_name=s.study_name, storage=store)
        out.append(StudyInfo(s.study_name, str(b), str(m), str(r), f, study.get_trials(deepcopy=False), study))
    return out


def search_seconds(studies: list[StudyInfo]) -> float:
    total = 0.0
    for s in studies:
        for t in s.trials:
            if t.datetime_start and t.datetime_complete:
                total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total


# ---------------------------------------------------------------- plots


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    png: bytes
    pdf: bytes


def _render(fig: Any, name: str, title: str, caption: str) -> Figure:
    """PNG and PDF bytes of a figure (a seaborn grid or a matplotlib figure), then close it.

    One layout pass here, none in savefig (bbox_inches="tight" would draw every figure twice per
    format); a seaborn grid lays itself out, keeping its legend outside the panels."""
    import matplotlib.pyplot as plt

    figure = getattr(fig, "figure", fig)
    figure.set_dpi(PNG_DPI)  # lay out at the PNG's resolution, so text metrics are measured once for both
    fig.tight_layout()
    # tight_layout leaves a placeholder layout engine behind, which makes every savefig draw the figure
    # twice; the layout is done, so drop it.
    figure.set_layout_engine(None)
    fig = figure
    png, pdf = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI)
    fig.savefig(pdf, format="pdf", metadata={"CreationDate": None})
    plt.close(fig)
    return Figure(name, title, caption, png.getvalue(), pdf.getvalue())


def _palette(labels: list[str]) -> dict[str, Any]:
    import seaborn as sns

    colours = sns.color_palette("tab10", max(10, len(labels)))
    return {lab: colours[i] for i, lab in enumerate(labels)}


def _log_fraction_axis(ax: Any, fractions: list[float]) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: frac_label(v)))
    if len(fractions) == 1:
        ax.set_xlim(fractions[0] / 2, min(1.0, fractions[0]) * 2)


def make_plots(
    experiment_dir: Path, df: pd.DataFrame, tests: pd.DataFrame, studies: list[StudyInfo], labeler: Callable, notes: list[str]
) -> list[Figure]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    figs: list[Figure] = []
    d = df.assign(label=[labeler(m, r) for m, r in zip(df["method"], df["recipe"], strict=True)], accuracy=100 * df[METRIC])
    order = sorted(d["label"].unique(), key=lambda lab: _method_rank(lab.split(" ")[0]))
    pal = _palette(order)
    backbones = sorted(d["backbone"].unique())
    fractions = sorted(d["fraction"].unique())
    wrap = min(3, len(backbones))

    # 1. accuracy against label fraction
    g = sns.relplot(
        data=d, x="fraction", y="accuracy", hue="label", hue_order=order, palette=pal, col="backbone", col_order=backbones,
        col_wrap=wrap, kind="line", marker="o", errorbar=t_interval, height=3.4, aspect=1.25, facet_kws={"sharey": False},
    )  # fmt: skip
    for ax in g.axes.flat:
        _log_fraction_axis(ax, fractions)
    g.set_axis_labels("label fraction (log scale)", "test accuracy (%)")
    g.set_titles("{col_name}")
    g.legend.set_title("method")
    figs.append(
        _render(
            g,
            "accuracy_vs_fraction",
            "Accuracy against label fraction",
            "Mean test accuracy over seeds; band: 95% t-interval of the mean (none where a cell has one seed).",
        )
    )

    # 2. paired gain over finetune
    pairs = []
    acc = {k: grp.set_index("seed")[METRIC] for k, grp in d.groupby(KEY, sort=False)}
    for t in tests.itertuples(index=False):
        base_r = t.baseline.split("/", 1)[1]
        base = acc.get((t.backbone, base_r, BASELINE, t.fraction))
        mine = acc[(t.backbone, t.recipe, t.method, t.fraction)]
        if base is None:
            continue
        for s in sorted(set(mine.index) & set(base.index)):
            pairs.append(
                dict(backbone=t.backbone, label=labeler(t.method, t.recipe), fraction=t.fraction, gain=100 * (mine[s] - base[s]))
            )
    if pairs:
        pdf = pd.DataFrame(pairs)
        lab_order = [lab for lab in order if lab in set(pdf["label"])]
        bb = sorted(pdf["backbone"].unique())
        g = sns.relplot(
            data=pdf, x="fraction", y="gain", hue="label", hue_order=lab_order, palette=pal, col="backbone", col_order=bb,
            col_wrap=min(3, len(bb)), kind="line", marker="o", errorbar=t_interval, err_style="bars", height=3.4, aspect=1.25,
            facet_kws={"sharey": False},
        )  # fmt: skip
        for ax in g.axes.flat:
            _log_fraction_axis(ax, sorted(pdf["fraction"].unique()))
            ax.axhline(0, color="black", lw=0.8)
        g.set_axis_labels("label fraction (log scale)", f"accuracy − {BASELINE} (points)")
        g.set_titles("{col_name}")
        g.legend.set_title("method")
        figs.append(
            _render(
                g,
                "gain_over_finetune",
                f"Paired gain over {BASELINE}",
                f"Mean over seeds of (method − {BASELINE}) on the same seed; bars: 95% t-interval of the mean paired "
                "difference (none with one pair).",
            )
        )
    else:
        notes.append(f"No method shares a seed with a {BASELINE} run, so the paired-gain plot is omitted.")

    # 3. accuracy against compute
    tcol = next((c for c in ("wall_seconds", "train_seconds") if c in d.columns and d[c].notna().any()), None)
    if tcol:
        dc = d[d[tcol].notna() & (d[tcol] > 0)].assign(fraction_label=lambda x: x["fraction"].map(frac_label))
        g = sns.relplot(
            data=dc, x=tcol, y="accuracy", hue="label", hue_order=order, palette=pal, style="fraction_label",
            style_order=[frac_label(f) for f in fractions], col="backbone", col_order=backbones, col_wrap=wrap, height=3.4,
            aspect=1.25, facet_kws={"sharey": False, "sharex": False}, s=40, alpha=0.85,
        )  # fmt: skip
        for ax in g.axes.flat:
            ax.set_xscale("log")
        for text in g.legend.texts:
            text.set_text({"label": "method", "fraction_label": "label fraction"}.get(text.get_text(), text.get_text()))
        g.set_axis_labels(f"{tcol.replace('_', ' ')} per run (log scale)", "test accuracy (%)")
        g.set_titles("{col_name}")
        figs.append(
            _render(
                g,
                "accuracy_vs_compute",
                "Accuracy against compute",
                f"One point per final run: test accuracy against its {tcol.replace('_', ' ')} (search trials not included).",
            )
        )
    else:
        notes.append("runs.csv has no wall_seconds or train_seconds: the accuracy-against-compute plot is omitted.")

    # 4. Optuna: history and importances, one grid per backbone (rows: method, columns: fraction)
    import optuna
    from matplotlib.ticker import MaxNLocator

    for b in sorted({s.backbone for s in studies}):
        mine = [s for s in studies if s.backbone == b]
        rows = sorted({(s.recipe, s.method) for s in mine}, key=lambda rm: (_method_rank(rm[1]), _recipe_rank(rm[0])))
        cols = sorted({s.fraction for s in mine})
        by = {(s.recipe, s.method, s.fraction): s for s in mine}
        size = (3.0 * len(cols), 2.4 * len(rows))
        fh, axh = plt.subplots(len(rows), len(cols), figsize=size, squeeze=False)
        fi, axi = plt.subplots(len(rows), len(cols), figsize=size, squeeze=False)
        for i, (r, m) in enumerate(rows):
            for j, f in enumerate(cols):
                s = by.get((r, m, f))
                ah, ai = axh[i][j], axi[i][j]
                title = f"{labeler(m, r)} @ {frac_label(f)}"
                if s is None:
                    for ax in (ah, ai):
                        ax.set_axis_off()
                        ax.set_title(title + ": no study", fontsize=7)
                    continue
                done = [t for t in s.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
                pruned = [t for t in s.trials if t.state == optuna.trial.TrialState.PRUNED]
                ah.set_title(f"{title}\n{len(done)} complete, {len(pruned)} pruned", fontsize=7)
                ah.xaxis.set_major_locator(MaxNLocator(integer=True))
                ai.set_title(f"{title} ({len(done)} complete)", fontsize=7)
                if done:
                    xs = [t.number for t in done]
                    ys = [100 * t.value for t in done]
                    ah.scatter(xs, ys, s=12, color="tab:blue", label="complete")
                    ah.step(xs, np.maximum.accumulate(ys), where="post", color="tab:red", lw=1, label="best so far")
                pv = [
                    (t.number, 100 * t.intermediate_values[max(t.intermediate_values)]) for t in pruned if t.intermediate_values
                ]
                if pv:
                    ah.scatter(*zip(*pv, strict=True), s=12, marker="x", color="grey", label="pruned (last value)")
                ah.set_xlabel("trial", fontsize=7)
                ah.set_ylabel("val. accuracy (%)", fontsize=7)
                ah.tick_params(labelsize=6)
                if i == 0 and j == 0:
                    ah.legend(fontsize=6)
                if len(done) < 2:
                    ai.set_axis_off()
                    ai.text(0.5, 0.5, f"fewer than 2 complete trials ({len(done)})", ha="center", va="center", fontsize=7)
                    notes.append(f"Study {s.name}: fewer than 2 complete trials ({len(done)}), so no importances.")
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        imp = optuna.importance.get_param_importances(s.study)
                    except Exception as exc:  # an evaluator that cannot fit this study is a note, not a failed report
                        imp, why = {}, f"{type(exc).__name__}: {exc}"
                    else:
                        why = "no searched parameter varies"
                if caught and imp:  # e.g. PED-ANOVA: "quantiles select the same set of trials ... will be equal"
                    imp, why = {}, f"Optuna: {str(caught[0].message).split('. ')[0]}"
                if not imp:
                    ai.set_axis_off()
                    ai.text(0.5, 0.5, "no importances:\n" + textwrap.fill(why, 40), ha="center", va="center", fontsize=6)
                    notes.append(f"Study {s.name}: no hyperparameter importances ({why}).")
                    continue
                names = list(imp)[::-1]
                ai.barh(names, [imp[k] for k in names], color="tab:green")
                ai.set_xlabel("importance (sums to 1)", fontsize=7)
                ai.tick_params(labelsize=6)
        for fig, kind, title, cap in (
            (
                fh,
                "optuna_history",
                f"Optimisation history, {b}",
                "Validation accuracy of each trial (x: pruned, at its last reported epoch) and the best so far.",
            ),
            (
                fi,
                "optuna_importance",
                f"Hyperparameter importances, {b}",
                "optuna.importance.get_param_importances (Optuna's default evaluator) over the complete trials of each "
                "cell's study; with few trials these are rough.",
            ),
        ):
            figs.append(_render(fig, f"{kind}_{slug(b)}", title, cap))

    # 5. confusion matrices: best run of each method at the smallest fraction, per backbone
    classes = [c[4:] for c in df.columns if c.startswith("acc_")]
    for b in backbones:
        sub = df[df["backbone"] == b]
        fmin = sub["fraction"].min()
        at = sub[sub["fraction"] == fmin]
        rows = sorted(
            {(r, m) for r, m in at[["recipe", "method"]].itertuples(index=False)},
            key=lambda rm: (_method_rank(rm[1]), _recipe_rank(rm[0])),
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
            rel = best.get("predictions")
            path = Path(experiment_dir) / str(rel) if isinstance(rel, str) and rel else None
            if path is None or not path.is_file():
                ax.set_axis_off()
                ax.set_title(title, fontsize=8)
                ax.text(0.5, 0.5, "predictions file missing", ha="center", va="center", fontsize=8)
                notes.append(
                    f"Confusion matrix of {b}/{labeler(m, r)}: predictions file {path or '(none in runs.csv)'} is missing."
                )
                continue
            try:
                p = pd.read_csv(path, usecols=["label", "prediction"])
            except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "unreadable predictions", ha="center", va="center", fontsize=8)
                notes.append(f"Confusion matrix of {b}/{labeler(m, r)}: cannot read {path} ({exc}).")
                continue
            names = classes or [str(i) for i in range(int(max(p["label"].max(), p["prediction"].max())) + 1)]
            k = len(names)
            lab, pr = p["label"].to_numpy(int), p["prediction"].to_numpy(int)
            cm = np.bincount(lab * k + pr, minlength=k * k).reshape(k, k).astype(float)
            acc_pred = float((lab == pr).mean())
            if abs(acc_pred - float(best[METRIC])) > 1e-4:
                notes.append(
                    f"Run {best.get('run_id', '?')}: its predictions give accuracy {pct(acc_pred)}%, runs.csv says "
                    f"{pct(best[METRIC])}%."
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
        fig.suptitle(f"{b}, label fraction {frac_label(fmin)}", fontsize=9)
        figs.append(
            _render(
                fig,
                f"confusion_{slug(b)}",
                f"Confusion matrices, {b} at {frac_label(fmin)}",
                "Best run (highest test accuracy) of each method at the smallest label fraction; rows: true class, "
                "cells: % of that class's test images.",
            )
        )
    return figs


# ---------------------------------------------------------------- provenance


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha or "unknown"


def provenance(experiment_dir: Path, df: pd.DataFrame, studies: list[StudyInfo]) -> list[tuple[str, str]]:
    """What produced these results (from runs.csv, one record's versions, the storage) and what built the report."""

    def uniq(col: str) -> str:
        if col not in df.columns:
            return "not recorded"
        vals = df[col].dropna().astype(str)
        vals = vals[vals != ""]
        c = vals.value_counts()
        return ", ".join(f"{v} ({n} runs)" if len(c) > 1 else v for v, n in c.items()) or "not recorded"

    items = [
        ("git commit of the runs", uniq("git_commit")),
        ("device", uniq("device")),
        ("device type", uniq("device_type")),
        ("precision", uniq("precision")),
        ("torch", uniq("torch_version")),
    ]
    rec_dir = Path(experiment_dir) / "records"
    if "run_id" in df.columns:
        for rid in df["run_id"].dropna().astype(str):
            path = rec_dir / f"{rid}.json"
            if path.is_file():
                try:
                    prov = json.loads(path.read_text()).get("provenance", {})
                except (OSError, json.JSONDecodeError):
                    continue
                vers = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v)
                items.append(("python / packages (first run's record)", f"{prov.get('python', '?')}; {vers}"))
                break
    if "finished_at" in df.columns and df["finished_at"].notna().any():
        fa = df["finished_at"].dropna().astype(str)
        items.append(("runs finished", f"{fa.min()} … {fa.max()}"))
    final = float(df["wall_seconds"].sum()) if "wall_seconds" in df.columns else math.nan
    search = search_seconds(studies)
    total = (0 if math.isnan(final) else final) + search
    items.append(
        (
            "total compute (wall)",
            f"{total / 3600:.2f} h = final runs {final / 3600:.2f} h ({len(df)} runs) + search trials {search / 3600:.2f} h "
            f"({sum(len(s.trials) for s in studies)} trials in {len(studies)} studies)",
        )
    )
    vers = []
    for pkg in ("pandas", "scipy", "seaborn", "matplotlib", "optuna"):
        try:
            vers.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    items.append(
        (
            "report built",
            f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, commit {_git_commit()}, {', '.join(vers)}",
        )
    )
    return items


# ---------------------------------------------------------------- HTML


CSS = """
body{font-family:system-ui,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.t{border-collapse:collapse;margin:.5em 0;font-size:.9em}
table.t th,table.t td{border-top:1px solid #ddd;padding:.25em .6em;text-align:left}
table.t thead th{border-bottom:2px solid #444}td.num{text-align:right;white-space:nowrap}
ul.notes{font-size:.85em;color:#444}figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em}
.wtl{font-size:1.1em}
"""


def _html_table(frame: pd.DataFrame, fmt: dict[str, Callable] | None = None) -> str:
    fmt = fmt or {}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for rec in frame.to_dict("records"):
        tds = []
        for c, v in rec.items():
            text = fmt[c](v) if c in fmt else ("" if isinstance(v, float) and math.isnan(v) else str(v))
            cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            tds.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(tds)}</tr>")
    return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _fmt_p(v: float) -> str:
    return "–" if not math.isfinite(v) else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


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
) -> str:
    esc = html.escape
    fr = ", ".join(frac_label(f) for f in sorted(df["fraction"].unique()))
    seeds = sorted(df["seed"].unique())
    trials = sorted({sum(1 for t in s.trials if t.state.is_finished()) for s in studies})
    protocol = [
        f"Backbones: {', '.join(sorted(df['backbone'].unique()))}.",
        f"Methods: {', '.join(sorted(df['method'].unique(), key=_method_rank))}; "
        f"recipes: {', '.join(sorted(df['recipe'].unique(), key=_recipe_rank))}.",
        f"Label fractions (per class, nested for a seed): {fr}. Seeds: {', '.join(map(str, seeds))} (paired: seed s draws "
        "the same labelled subset for every method).",
        "Tuned cells: hyperparameters chosen by Optuna on a validation split carved from the labelled subset only "
        + (f"({', '.join(map(str, trials))} finished trials per study)" if trials else "(no study found in the storage)")
        + "; then one final run per seed on the whole labelled subset, evaluated once on the test set.",
        f"Comparisons: each method against {BASELINE} of the same backbone and fraction, {TEST_NAMES[tables.test]} over "
        f"paired seeds, Holm-corrected over all {tables.n_tests} comparisons, α = {tables.alpha:g}.",
    ]
    cfg = Path(experiment_dir) / "config.toml"
    cfg_html = f"<details><summary>config.toml</summary><pre>{esc(cfg.read_text())}</pre></details>" if cfg.is_file() else ""
    sft = wtl[wtl["method"] == "sft"]
    if len(sft):
        s = sft.iloc[0]
        headline = (
            f'<p class="wtl"><b>sft vs {BASELINE}</b>: {s.win} win(s), {s.tie} tie(s), {s.loss} loss(es) '
            f"(significant after Holm, α = {tables.alpha:g}); {s.untested} cell(s) untested (fewer than 2 paired seeds). "
            f"By mean alone: higher in {s.higher_mean}, lower in {s.lower_mean}.</p>"
        )
    else:
        headline = (
            f'<p class="wtl">No <code>sft</code> row with a {BASELINE} baseline in this experiment: no win/tie/loss count.</p>'
        )
    sig = tests.assign(
        column=tests["fraction"].map(frac_label),
        diff=tests["diff_mean"].map(lambda v: "–" if not math.isfinite(v) else f"{100 * v:+.2f}"),
    )[["backbone", "recipe", "method", "column", "baseline", "n_pairs", "diff", "p", "p_holm", "mark", "reason"]]
    sig = sig.rename(columns={"diff": "mean diff (points)", "column": "fraction"})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>sft-bench report: {esc(experiment)}</title><style>{CSS}</style></head><body>",
        f"<h1>sft-bench report: {esc(experiment)}</h1>",
        f"<p>{len(df)} final runs from <code>{esc(str(Path(experiment_dir)))}/runs.csv</code> and {len(studies)} Optuna "
        "studies. Everything on this page is computed from those two; tables are also in <code>tables/</code> "
        "(Markdown, LaTeX, CSV) and plots in <code>plots/</code> (PNG, PDF).</p>",
        "<h2>Summary</h2>",
        headline,
        _html_table(wtl) if len(wtl) else "",
        "<p>win/tie/loss per method against its finetune baseline, one count per (backbone, fraction) cell.</p>",
        "<h2>Protocol</h2><ul>" + "".join(f"<li>{esc(p)}</li>" for p in protocol) + "</ul>" + cfg_html,
        "<h2>Provenance</h2>",
        '<table class="t"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in prov)
        + "</tbody></table>",
        "<h2>Accuracy</h2>",
        tables.accuracy_html(),
        "<h2>Label efficiency</h2>",
        tables.efficiency_html(),
        "<h2>Comparisons with finetune</h2>",
        _html_table(sig, {"p": _fmt_p, "p_holm": _fmt_p}) if len(sig) else "<p>No comparison: no finetune baseline.</p>",
        "<h2>Plots</h2>",
    ]
    for f in figs:
        b64 = base64.b64encode(f.png).decode()
        parts.append(
            f'<figure id="{esc(f.name)}"><img alt="{esc(f.title)}" src="data:image/png;base64,{b64}">'
            f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)} (plots/{esc(f.name)}.png, .pdf)</figcaption></figure>"
        )
    parts.append("<h2>Notes</h2>")
    parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>" if notes else "<p>None.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- the report


@dataclass
class ReportResult:
    experiment_dir: Path
    html: Path
    files: list[Path]
    notes: list[str]
    win_tie_loss: pd.DataFrame
    seconds: float
    removed: list[Path] = field(default_factory=list)

    def __str__(self) -> str:  # what the sweep prints after "report:"
        return f"{self.html} ({len(self.files)} files in {self.seconds:.1f} s)"


def _check_args(test: str, alpha: float) -> None:
    if test not in TESTS:
        raise UserError(f"test '{test}' is not one of: {', '.join(TESTS)}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")


def write_report(experiment_dir: Path, *, test: str = "ttest", alpha: float = 0.05, storage: str | None = None) -> ReportResult:
    """Build every table, plot and report.html of one experiment from runs.csv and the Optuna storage.

    Called by the sweep at its end (`write_report(results_dir / experiment)`) and by `cli.py report`.
    Everything is computed in memory first, then written file by file atomically; outputs of an
    earlier report that this one no longer produces (a backbone dropped from the table) are removed
    from tables/ and plots/, so the folder always describes the current runs.csv."""
    t0 = time.perf_counter()
    _check_args(test, alpha)
    exp_dir = Path(experiment_dir)
    df, notes = load_runs(exp_dir)
    if not os.access(exp_dir, os.W_OK):
        raise UserError(f"cannot write the report into {exp_dir}: the folder is not writable")
    name = experiment_name(df, exp_dir)
    stats = summarise(df)
    tests = paired_tests(df, test, alpha)
    eff = label_efficiency(df, stats)
    tables = build_tables(name, df, stats, tests, eff, test, alpha)
    for b in sorted(df["backbone"].unique()):
        if baseline_recipe(df, b, "tuned") is None:
            notes.append(f"{b}: no {BASELINE} runs, so no significance marks, gains or label efficiency for it.")
    for e in eff.to_dict("records"):
        if e["note"] and e["method"] == BASELINE:
            notes.append(f"{e['backbone']}/{e['recipe']}: {e['note']} (label efficiency).")
    untested = tests[tests["mark"] == "untested"]
    if len(untested):
        notes.append(
            f"{len(untested)} comparison(s) with {BASELINE} untested: " + "; ".join(sorted(set(untested["reason"]))) + "."
        )
    multi = df["recipe"].nunique() > 1

    def labeler(m: str, r: str) -> str:
        return f"{m} ({r})" if multi else m

    studies = load_studies(exp_dir, name, storage, notes)
    figs = make_plots(exp_dir, df, tests, studies, labeler, notes)
    wtl = win_tie_loss(tests)
    prov = provenance(exp_dir, df, studies)
    page = render_html(name, exp_dir, df, tables, tests, wtl, figs, studies, prov, notes)

    outputs: dict[Path, bytes] = {}
    tdir, pdir = exp_dir / "tables", exp_dir / "plots"
    for stem, md, tex, csv in (
        ("accuracy", tables.accuracy_markdown(), tables.accuracy_latex(), tables.accuracy_csv()),
        ("efficiency", tables.efficiency_markdown(), tables.efficiency_latex(), tables.efficiency_csv()),
    ):
        outputs[tdir / f"{stem}.md"] = md.encode()
        outputs[tdir / f"{stem}.tex"] = tex.encode()
        outputs[tdir / f"{stem}.csv"] = csv.encode()
    outputs[tdir / "significance.csv"] = tests.to_csv(index=False, lineterminator="\n").encode()
    outputs[tdir / "win_tie_loss.csv"] = wtl.to_csv(index=False, lineterminator="\n").encode()
    for f in figs:
        outputs[pdir / f"{f.name}.png"] = f.png
        outputs[pdir / f"{f.name}.pdf"] = f.pdf
    for path, data in outputs.items():
        _atomic_write(path, data)
    removed = []
    for folder in (tdir, pdir):
        for p in folder.iterdir():
            if p.suffix in (".md", ".tex", ".csv", ".png", ".pdf") and p not in outputs:
                p.unlink()
                removed.append(p)
    html_path = exp_dir / "report.html"
    _atomic_write(html_path, page.encode())
    return ReportResult(exp_dir, html_path, [*outputs, html_path], notes, wtl, time.perf_counter() - t0, removed)


# ---------------------------------------------------------------- compare


@dataclass
class CompareResult:
    a: Path
    b: Path
    label_a: str
    label_b: str
    frame: pd.DataFrame
    only_a: list[str]
    only_b: list[str]
    provenance: list[tuple[str, str, str]]
    test: str
    alpha: float

    def display_rows(self) -> list[list[str]]:
        out = []
        for r in self.frame.to_dict("records"):
            mk = {"better": f" {UP}", "worse": f" {DOWN}"}.get(r["mark"], "")
            out.append(
                [
                    r["backbone"],
                    r["method"],
                    r["recipe"],
                    frac_label(r["fraction"]),
                    f"{pct(r['mean_a'])} (n={r['n_a']})",
                    f"{pct(r['mean_b'])} (n={r['n_b']})",
                    f"{100 * r['diff']:+.2f}{mk}",
                    r["kind"],
                    _fmt_p(r["p"]),
                    _fmt_p(r["p_holm"]),
                ]
            )
        return out

    HEAD = ("backbone", "method", "recipe", "fraction", "A acc. %", "B acc. %", "B − A", "test", "p", "p (Holm)")

    def notes(self) -> list[str]:
        n = int(np.isfinite(self.frame["p"]).sum())
        out = [
            f"A = {self.label_a}, B = {self.label_b}. Accuracy: mean test accuracy (%) over seeds. B − A in points; "
            f"{UP}/{DOWN}: B significantly higher/lower (Holm over {n} tested cells, α = {self.alpha:g}).",
            f"Test per cell: paired ({TEST_NAMES[self.test]}) over the seeds both sides share (same seed = same labelled "
            "subset) when there are at least 2; otherwise unpaired (Welch's t-test or Mann-Whitney U) when each side "
            "has at least 2 seeds; otherwise none.",
        ]
        if self.only_a:
            out.append(f"Only in A ({len(self.only_a)}): {', '.join(self.only_a)}.")
        if self.only_b:
            out.append(f"Only in B ({len(self.only_b)}): {', '.join(self.only_b)}.")
        return out

    def markdown(self) -> str:
        lines = [f"# {self.label_a} vs {self.label_b}", ""]
        lines += ["| | A | B |", "|---|---|---|"]
        lines += [f"| {k} | {va} | {vb} |" for k, va, vb in self.provenance]
        lines += ["", f"| {' | '.join(self.HEAD)} |", f"|{'|'.join(['---'] * 4 + ['---:'] * 6)}|"]
        lines += [f"| {' | '.join(r)} |" for r in self.display_rows()]
        lines += ["", *(f"{n}  " for n in self.notes())]
        return "\n".join(lines).rstrip() + "\n"


def _label(p: Path) -> str:
    p = p.resolve()
    return f"{p.parent.name}/{p.name}"


def compare(a: Path, b: Path, *, test: str = "ttest", alpha: float = 0.05) -> CompareResult:
    """Two experiment folders side by side: per common cell, B − A and its significance."""
    from scipy import stats as st

    _check_args(test, alpha)
    da, _ = load_runs(Path(a))
    db, _ = load_runs(Path(b))
    acc_a = {k: g.set_index("seed")[METRIC] for k, g in da.groupby(KEY, sort=False)}
    acc_b = {k: g.set_index("seed")[METRIC] for k, g in db.groupby(KEY, sort=False)}

    def name(k: tuple) -> str:
        return f"{k[0]}/{k[2]}/{k[1]}@{frac_label(k[3])}"

    common = sorted(set(acc_a) & set(acc_b), key=lambda k: (*row_sort_key((k[0], k[1], k[2])), k[3]))
    if not common:
        raise UserError(f"{a} and {b} share no (backbone, recipe, method, fraction) cell; nothing to compare")
    rows = []
    for k in common:
        xa, xb = acc_a[k], acc_b[k]
        seeds = sorted(set(xa.index) & set(xb.index))
        stat, p, kind = math.nan, math.nan, "none"
        if len(seeds) >= 2:
            stat, p, _ = _test_pairs(xb.loc[seeds].to_numpy(float), xa.loc[seeds].to_numpy(float), test)
            kind = f"paired ({len(seeds)})" + (", undefined: all differences equal" if math.isnan(p) else "")
        elif len(xa) >= 2 and len(xb) >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = st.ttest_ind(xb, xa, equal_var=False) if test == "ttest" else st.mannwhitneyu(xb, xa)
            stat, p, kind = float(r.statistic), float(r.pvalue), "unpaired"
            p = p if math.isfinite(p) else math.nan
        rows.append(
            dict(
                backbone=k[0], recipe=k[1], method=k[2], fraction=k[3], n_a=len(xa), n_b=len(xb), mean_a=float(xa.mean()),
                mean_b=float(xb.mean()), diff=float(xb.mean() - xa.mean()), kind=kind, statistic=stat, p=p,
            )
        )  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["p_holm"] = holm(frame["p"])
    frame["mark"] = [mark_of(d, q, alpha) for d, q in zip(frame["diff"], frame["p_holm"], strict=True)]

    def first(d: pd.DataFrame, col: str) -> str:
        if col not in d.columns:
            return "not recorded"
        vals = d[col].dropna().astype(str).unique()
        return ", ".join(vals[:3]) + (" …" if len(vals) > 3 else "") if len(vals) else "not recorded"

    prov = [("runs", str(len(da)), str(len(db)))]
    prov += [(c, first(da, c), first(db, c)) for c in ("git_commit", "device", "torch_version", "precision")]
    return CompareResult(
        Path(a),
        Path(b),
        _label(Path(a)),
        _label(Path(b)),
        frame,
        [name(k) for k in sorted(set(acc_a) - set(acc_b))],
        [name(k) for k in sorted(set(acc_b) - set(acc_a))],
        prov,
        test,
        alpha,
    )
