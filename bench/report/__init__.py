"""Reports: `runs.csv` + the Optuna storage -> tables, plots, label efficiency and `report.html`;
and `compare(a, b)` for two experiments side by side.

Why this module only reads: a report has to be rebuildable at any time from the two things a
sweep leaves behind (the runs table and the Optuna storage), so it never writes to them, never
reruns anything, and computes every number and every figure in memory before it writes a single
file (bad input leaves nothing half-written, and a failed report leaves the last good one).

Statistics, stated once so every output says the same thing:
- a cell is (backbone, recipe, method, fraction); its value is the mean +- sample std (ddof=1)
  of `test_accuracy` over seeds, with n; n=1 has no std ("–") and is never tested;
- baselines (protocol v2): each method is compared with `finetune` of the same backbone at the
  same fraction, and every `sft*` method (not `seed_sft`) also with `linear_probe` and `lp_ft`,
  the two simpler methods it contains, where the experiment has them; paired by seed (seed s =
  the same labelled subset for every method), with a paired t-test (default) or Wilcoxon's
  signed-rank test; the p-values of all these comparisons form one family, Holm-corrected together;
  a mark needs at least 2 paired seeds;
- a baseline is the baseline method of the same recipe when it exists, else of another recipe of
  the same backbone (`tuned` first); significance.csv names the one used;
- "not significantly worse than the best": in each (backbone, fraction) column every cell is also
  tested against the cell with the best mean (same test, paired, two-sided); these comparisons are
  a second Holm family, and a cell where it does not reject gets a dagger. Not rejecting is not
  evidence of equality: with few seeds the test has little power, and the notes say so;
- Wilcoxon is refused (one line, nothing written) where the largest number of paired seeds n
  cannot reach alpha at all: its smallest two-sided exact p is 2/2^n.

Protocol labels: results written before protocol version 2 (no `protocol` column) are read as
protocol v1 and labelled so; v2 results say whether the search ran per seed or was shared, and
whether any run's step budget fell below the protocol's floor (`min_steps`, default 500).
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
# Protocol v2: every sft* method is also compared with the two simpler methods it contains.
EXTRA_BASELINES = ("linear_probe", "lp_ft")
BASELINE_ORDER = (BASELINE, *EXTRA_BASELINES)
METRIC = "test_accuracy"
RUNS_CSV = "runs.csv"
JOURNAL = "optuna.journal"
REQUIRED = ("backbone", "method", "recipe", "fraction", "seed", METRIC)
KEY = ["backbone", "recipe", "method", "fraction"]
TESTS = ("ttest", "wilcoxon")
TEST_NAMES = {"ttest": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
# Display order (the registry's order in bench/models/methods.py); copied here so a report never imports
# torch. Methods not listed follow alphabetically.
METHOD_ORDER = (
    "finetune",
    "linear_probe",
    "lp_ft",
    "seed_sft",
    "sft",
    "sft-mlp",
    "sft-side",
    "sft-mlp-frozen",
    "sft-side-frozen",
)
RECIPE_ORDER = ("tuned", "seed")
UP, DOWN, DAGGER = "↑", "↓", "†"
DEFAULT_MIN_STEPS = 500  # the protocol's floor on the optimiser-step budget (methods.md, version 2)
SEARCH_MODE_TEXT = {
    "per_seed": "per-seed search: the spread over seeds includes selection noise",
    "shared": "shared search: seed 0's hyperparameters reused for every seed; the spread leaves selection noise out",
}
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


# Unicode the tables use, as LaTeX that pdflatex compiles without extra packages (a raw "↑" halts
# pdflatex; "<" and ">" in text mode print as inverted punctuation in the default OT1 encoding).
TEX_UNICODE = {
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "†": r"$^{\dagger}$",
    "α": r"$\alpha$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "<": r"$<$",
    ">": r"$>$",
    "−": r"$-$",
    "×": r"$\times$",
    "–": "--",
    "—": "---",
    "…": r"\dots{}",
    "’": "'",
}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text: specials escaped, the tables' Unicode as math (see TEX_UNICODE)."""
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
        **TEX_UNICODE,
    }
    return "".join(repl.get(c, c) for c in text)


def tex_note(text: str) -> str:
    """A Markdown-ish note (with `code`) as LaTeX text: code spans in \\texttt, the rest escaped."""
    parts = text.split("`")
    return "".join(f"\\texttt{{{tex_escape(p)}}}" if i % 2 else tex_escape(p) for i, p in enumerate(parts))


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


def signed_rank_floor(n: int) -> float:
    """The smallest two-sided exact p Wilcoxon's signed-rank test can give with n paired seeds
    (all differences non-zero and of one sign): 2 / 2^n, capped at 1."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


def rank_sum_floor(n_a: int, n_b: int) -> float:
    """The smallest two-sided exact p of the Mann-Whitney U test with samples of n_a and n_b (complete
    separation): 2 / C(n_a + n_b, n_a), capped at 1."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a)) if n_a > 0 and n_b > 0 else 1.0


def check_wilcoxon_reachable(n: int, alpha: float, where: str = "this experiment") -> None:
    """Refuse `--test wilcoxon` where it cannot reject at all: a report whose every comparison is "ns"
    by construction would read as evidence of no difference. One line naming n, the floor and the remedy."""
    floor = signed_rank_floor(n)
    if floor > alpha:
        raise UserError(
            f"--test wilcoxon cannot reach α = {alpha:g} in {where}: the largest number of paired seeds is n = {n}, "
            f"and the smallest two-sided exact p of the signed-rank test is 2/2^{n} = {floor:.3g} > {alpha:g}; "
            f"use --test ttest, or run at least {wilcoxon_min_seeds(alpha)} seeds"
        )


def wilcoxon_min_seeds(alpha: float) -> int:
    """The fewest paired seeds with which the signed-rank test can reject at alpha (2/2^n <= alpha)."""
    return max(1, math.ceil(1 - math.log2(alpha) - 1e-12))


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


def thread_notes(df: pd.DataFrame) -> list[str]:
    """One note per cell whose CPU runs used different torch thread counts: CPU results depend on it
    slightly (the order of reductions) and the run id does not include it, so the report says so."""
    if "threads" not in df.columns:
        return []
    cpu = df if "device_type" not in df.columns else df[df["device_type"] == "cpu"]
    cpu = cpu[pd.to_numeric(cpu["threads"], errors="coerce").notna()]
    notes = []
    for key, g in cpu.groupby(["backbone", "method", "recipe", "fraction"], sort=True):
        counts = sorted({int(t) for t in pd.to_numeric(g["threads"])})
        if len(counts) > 1:
            b, m, r, f = key
            notes.append(
                f"{b}/{m}/{r}/{f:g}: its CPU runs used different torch thread counts ({', '.join(map(str, counts))}); "
                "CPU results depend slightly on it and the run id does not include it (runs.csv column threads)."
            )
    return notes


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


# ---------------------------------------------------------------- protocol


@dataclass
class ProtocolInfo:
    """What protocol produced a runs table, read from its columns so that old folders stay readable:
    no `protocol` column means protocol v1 (budgets in epochs, one shared search, BatchNorm in batch
    statistics whenever the backbone trained). Every table's notes and report.html say the version,
    the search mode and any run whose step budget fell below the protocol's floor."""

    versions: dict[int, int]  # protocol version -> number of runs
    search_modes: dict[str, int]  # "per_seed" / "shared" -> runs (searched recipes only)
    unsearched: int  # runs with no search (the seed recipe: search_mode "")
    short: list[tuple[int, int, int]]  # (steps, floor, runs) below the floor
    n_runs: int
    has_steps: bool

    @property
    def v1(self) -> bool:
        return 1 in self.versions

    @property
    def label(self) -> str:
        if len(self.versions) == 1:
            return f"protocol v{next(iter(self.versions))}"
        return "mixed protocols (" + ", ".join(f"v{v}: {n} runs" for v, n in sorted(self.versions.items())) + ")"

    @property
    def step_unit(self) -> str:
        """What the x axis of a trial's intermediate values counts: optimiser steps from v2 on."""
        return "epoch" if self.versions and max(self.versions) < 2 else "step"

    def search_label(self) -> str:
        modes = sorted(self.search_modes)
        if not modes:
            if self.v1:
                return (
                    "shared search (protocol v1): the first seed's hyperparameters reused for every seed; the spread "
                    "leaves selection noise out"
                )
            return "no search recorded (fixed hyperparameters only)"
        if len(modes) == 1:
            return SEARCH_MODE_TEXT.get(modes[0], f"search mode '{modes[0]}'")
        return "mixed search modes: " + "; ".join(f"{SEARCH_MODE_TEXT.get(m, m)} ({self.search_modes[m]} runs)" for m in modes)

    def short_lines(self) -> list[str]:
        return [
            f"protocol minimum not met: {steps} steps < {floor} ({n} of {self.n_runs} runs)" for steps, floor, n in self.short
        ]

    def lines(self) -> list[str]:
        """The protocol's notes, as every table and report.html states them."""
        if self.v1 and len(self.versions) == 1:
            head = (
                "Protocol v1 (results written before protocol version 2 of methods.md): budgets in epochs, "
                "BatchNorm in batch-statistics mode whenever the backbone trained; not comparable with protocol-v2 "
                "results."
            )
        elif self.v1:
            head = f"{self.label[0].upper()}{self.label[1:]}: rows from different protocols are not comparable."
        else:
            head = f"Protocol v{max(self.versions)}: step budgets, one BatchNorm policy and one search space for every method."
        out = [head, f"Search: {self.search_label()}."]
        if self.unsearched and self.search_modes:
            out.append(f"{self.unsearched} run(s) of the seed recipe use fixed hyperparameters (no search).")
        return out + self.short_lines()


def protocol_info(df: pd.DataFrame) -> ProtocolInfo:
    """Read the protocol columns of a runs table (absent columns: protocol v1, nothing more known)."""
    n = len(df)
    if "protocol" in df.columns:
        ver = pd.to_numeric(df["protocol"], errors="coerce").fillna(1).astype(int)
    else:
        ver = pd.Series(1, index=df.index)
    versions = {int(v): int(c) for v, c in ver.value_counts().sort_index().items()}
    modes: dict[str, int] = {}
    unsearched = 0
    if "search_mode" in df.columns:
        sm = df["search_mode"].fillna("").astype(str).str.strip()
        unsearched = int((sm == "").sum())
        modes = {str(m): int(c) for m, c in sm[sm != ""].value_counts().sort_index().items()}
    short: list[tuple[int, int, int]] = []
    has_steps = "steps" in df.columns and pd.to_numeric(df["steps"], errors="coerce").notna().any()
    if has_steps:
        steps = pd.to_numeric(df["steps"], errors="coerce")
        floor = (
            pd.to_numeric(df["min_steps"], errors="coerce").fillna(DEFAULT_MIN_STEPS)
            if "min_steps" in df.columns
            else pd.Series(DEFAULT_MIN_STEPS, index=df.index)
        )
        low = steps.notna() & (steps < floor)
        if low.any():
            pairs = pd.DataFrame({"steps": steps[low].astype(int), "floor": floor[low].astype(int)})
            for (st_, fl), c in pairs.value_counts().sort_index().items():
                short.append((int(st_), int(fl), int(c)))
    return ProtocolInfo(versions, modes, unsearched, short, n, bool(has_steps))


# ---------------------------------------------------------------- statistics


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: n, mean, sample std (NaN for n=1), 95% t half-width."""
    from scipy import stats as st

    g = df.groupby(KEY, sort=False)[METRIC]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    tq = out["n"].map(lambda n: st.t.ppf(0.975, n - 1) if n > 1 else math.nan)
    out["ci95"] = tq * out["std"] / np.sqrt(out["n"])
    return out


def baseline_recipe(df: pd.DataFrame, backbone: str, recipe: str, method: str = BASELINE) -> str | None:
    """Which run of baseline `method` a (backbone, recipe) row is compared with: same recipe, else `tuned`,
    else any; None where the backbone has no such run."""
    have = set(df.loc[(df["method"] == method) & (df["backbone"] == backbone), "recipe"])
    for r in (recipe, *RECIPE_ORDER, *sorted(have)):
        if r in have:
            return r
    return None


def is_sft(method: str) -> bool:
    """The supervision-branch family (`sft`, `sft-mlp`, `sft-side`, their frozen rows); not `seed_sft`,
    the article's literal model, which has no probe inside it."""
    return method.startswith("sft")


def baselines_of(method: str) -> tuple[str, ...]:
    """What a method is compared with: `finetune` always; an sft* method also with the two simpler
    methods it contains (its f starts as the linear probe; lp_ft is that probe fine-tuned)."""
    out = () if method == BASELINE else (BASELINE,)
    return out + (EXTRA_BASELINES if is_sft(method) else ())


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


def _paired(mine: pd.Series, base: pd.Series, test: str) -> dict[str, Any]:
    """mine - base over the seeds both have (the pairing: seed s = the same labelled subset)."""
    seeds = sorted(set(mine.index) & set(base.index))
    x, y = mine.loc[seeds].to_numpy(float), base.loc[seeds].to_numpy(float)
    d = x - y
    stat, p, reason = _test_pairs(x, y, test)
    return dict(
        n_pairs=len(seeds),
        seeds=" ".join(map(str, seeds)),
        diff_mean=float(d.mean()) if len(d) else math.nan,
        diff_std=float(d.std(ddof=1)) if len(d) > 1 else math.nan,
        statistic=stat,
        p=p,
        reason=reason,
    )


def mark_of(diff: float, p_adj: float, alpha: float) -> str:
    if not math.isfinite(p_adj):
        return "untested"
    if p_adj < alpha:
        return "better" if diff > 0 else "worse"
    return "ns"


def _cell_key(b: str, r: str, m: str, f: float) -> tuple:
    return (*row_sort_key((b, r, m)), f)


TEST_COLUMNS = [
    *KEY,
    "baseline_method",
    "baseline",
    "test",
    "n_pairs",
    "seeds",
    "diff_mean",
    "diff_std",
    "statistic",
    "p",
    "p_holm",
    "mark",
    "reason",
]


def paired_tests(df: pd.DataFrame, test: str = "ttest", alpha: float = 0.05) -> pd.DataFrame:
    """Every cell against each of its baselines (`baselines_of`) of the same backbone and fraction, paired
    by seed; all comparisons of the experiment form one family, Holm-corrected together.

    `finetune`: a row for every cell of a backbone that has finetune (untested, with the reason, at a
    fraction finetune lacks). `linear_probe` / `lp_ft` for sft*: only where the backbone has that method."""
    rows = []
    acc = {k: g.set_index("seed")[METRIC] for k, g in df.groupby(KEY, sort=False)}
    for (b, r, m, f), series in acc.items():
        for bm in baselines_of(m):
            base_r = baseline_recipe(df, b, r, bm)
            if base_r is None:
                continue
            row: dict[str, Any] = dict(backbone=b, recipe=r, method=m, fraction=f, baseline_method=bm, baseline=f"{bm}/{base_r}")
            row["test"] = test
            base = acc.get((b, base_r, bm, f))
            if base is None:
                row.update(n_pairs=0, seeds="", diff_mean=math.nan, diff_std=math.nan, statistic=math.nan, p=math.nan)
                row["reason"] = f"no {bm}/{base_r} at this fraction"
            else:
                row.update(_paired(series, base, test))
            rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in TEST_COLUMNS if c not in ("p_holm", "mark")])
    if len(out):
        order = [
            (*_cell_key(b, r, m, f), BASELINE_ORDER.index(bm))
            for b, r, m, f, bm in out[[*KEY, "baseline_method"]].itertuples(index=False)
        ]
        out = out.iloc[sorted(range(len(out)), key=order.__getitem__)].reset_index(drop=True)
    out["seeds"] = out["seeds"].fillna("")
    out["p_holm"] = holm(out["p"]) if len(out) else []
    out["mark"] = [mark_of(d, q, alpha) for d, q in zip(out["diff_mean"], out["p_holm"], strict=True)]
    return out[TEST_COLUMNS]


BEST_COLUMNS = [*KEY, "best", "n_pairs", "diff_mean", "p", "p_holm", "vs_best", "reason"]


def best_tests(df: pd.DataFrame, test: str = "ttest", alpha: float = 0.05) -> pd.DataFrame:
    """Per (backbone, fraction) column: every cell against the column's best-mean cell, paired by seed,
    two-sided; Holm over all these comparisons of the experiment (a family of its own, apart from the
    baseline comparisons: the question differs).

    vs_best: "best" (the cell with the highest mean; on an exact tie the first in display order),
    "not worse" (the test does not reject, or rejects in the cell's favour on the seeds both share),
    "worse", or "untested" (fewer than 2 paired seeds, or the test is undefined)."""
    acc = {k: g.set_index("seed")[METRIC] for k, g in df.groupby(KEY, sort=False)}
    rows = []
    for (b, f), grp in df.groupby(["backbone", "fraction"], sort=True):
        present = {(r, m) for r, m in grp[["recipe", "method"]].itertuples(index=False)}
        cells = sorted(present, key=lambda rm: row_sort_key((b, *rm)))
        means = {rm: float(acc[(b, rm[0], rm[1], f)].mean()) for rm in cells}
        top = max(means.values())
        best = next(rm for rm in cells if means[rm] == top)
        best_label = f"{best[1]}/{best[0]}"
        for r, m in cells:
            row: dict[str, Any] = dict(backbone=b, recipe=r, method=m, fraction=f, best=best_label, _is_best=(r, m) == best)
            if (r, m) == best:
                row.update(n_pairs=0, diff_mean=0.0, p=math.nan, reason="the column's best mean")
            else:
                t = _paired(acc[(b, r, m, f)], acc[(b, *best, f)], test)
                row.update({k: t[k] for k in ("n_pairs", "diff_mean", "p", "reason")})
            rows.append(row)
    out = pd.DataFrame(rows, columns=[*(c for c in BEST_COLUMNS if c not in ("p_holm", "vs_best")), "_is_best"])
    out["p_holm"] = holm(out["p"]) if len(out) else []
    marks = []
    for rec in out.to_dict("records"):
        if rec["_is_best"]:
            marks.append("best")
        elif not math.isfinite(rec["p_holm"]):
            marks.append("untested")
        else:
            marks.append("worse" if rec["p_holm"] < alpha and rec["diff_mean"] < 0 else "not worse")
    out["vs_best"] = marks
    return out[BEST_COLUMNS]


def largest_pairing(*frames: pd.DataFrame) -> int:
    """The largest number of paired seeds over the comparisons in `frames` (0 without any)."""
    ns = [int(f["n_pairs"].max()) for f in frames if len(f) and f["n_pairs"].notna().any()]
    return max(ns, default=0)


WTL_COLUMNS = ["method", "baseline", "win", "tie", "loss", "untested", "higher_mean", "lower_mean"]


def win_tie_loss(tests: pd.DataFrame) -> pd.DataFrame:
    """Per (method, baseline method): cells significantly better (win), not significantly different (tie),
    worse (loss), untested; and higher/lower by mean alone."""
    rows = []
    if len(tests):
        pairs = {(m, bm) for m, bm in tests[["method", "baseline_method"]].itertuples(index=False)}
        for m, bm in sorted(pairs, key=lambda p: (_method_rank(p[0]), BASELINE_ORDER.index(p[1]))):
            t = tests[(tests["method"] == m) & (tests["baseline_method"] == bm)]
            c = t["mark"].value_counts()
            rows.append(
                dict(
                    method=m,
                    baseline=bm,
                    win=int(c.get("better", 0)),
                    tie=int(c.get("ns", 0)),
                    loss=int(c.get("worse", 0)),
                    untested=int(c.get("untested", 0)),
                    higher_mean=int((t["diff_mean"] > 0).sum()),
                    lower_mean=int((t["diff_mean"] < 0).sum()),
                )
            )
    return pd.DataFrame(rows, columns=WTL_COLUMNS)


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


def _tex_notes(lines: list[str]) -> list[str]:
    """Notes typeset under a tabular, inside its table float (the protocol labels travel with the table)."""
    if not lines:
        return []
    body = "\\par\n".join(tex_note(n) for n in lines)
    return ["\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\footnotesize\\raggedright", body, "\\end{minipage}"]


def _md_notes(lines: list[str]) -> str:
    return "\n".join(f"{n}  " for n in lines).rstrip() + "\n"


def _html_notes(lines: list[str]) -> str:
    return '<ul class="notes">' + "".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in lines) + "</ul>"


@dataclass
class Tables:
    """The accuracy, sft-vs-baselines and efficiency tables in one model, rendered to Markdown, LaTeX, CSV
    and HTML from the same strings, so the numbers cannot drift apart between formats."""

    experiment: str
    rows: list[tuple[str, str, str]]  # (backbone, recipe, method)
    fractions: list[float]
    cells: pd.DataFrame  # tidy: one row per present cell with display fields
    efficiency: pd.DataFrame
    show_recipe: bool
    test: str
    alpha: float
    n_tests: int  # tested comparisons with baselines (the Holm family behind ↑/↓)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)  # every comparison with a baseline
    n_best_tests: int = 0  # tested comparisons with the column's best (the Holm family behind †)
    protocol: ProtocolInfo | None = None

    def __post_init__(self) -> None:
        self.index = {(c["backbone"], c["recipe"], c["method"], c["fraction"]): c for c in self.cells.to_dict("records")}
        recs = self.tests.to_dict("records") if len(self.tests) else []
        self.test_index = {(t["backbone"], t["recipe"], t["method"], t["fraction"], t["baseline_method"]): t for t in recs}

    # -- shared pieces
    def _cell(self, row: tuple[str, str, str], f: float) -> dict | None:
        return self.index.get((*row, f))

    def _head(self) -> list[str]:
        return ["backbone", "method", *(["recipe"] if self.show_recipe else [])]

    def _labels(self, row: tuple[str, str, str]) -> list[str]:
        b, r, m = row
        return [b, m, *([r] if self.show_recipe else [])]

    def protocol_notes(self) -> list[str]:
        return self.protocol.lines() if self.protocol else []

    def _family(self) -> str:
        return (
            f"Holm-corrected over all {self.n_tests} comparisons with baselines in this experiment, α = {self.alpha:g}: "
            f"every method against `{BASELINE}`, every sft* method also against `linear_probe` and `lp_ft`"
        )

    # -- accuracy table
    @staticmethod
    def _dagger(c: dict) -> bool:
        return c.get("vs_best") == "not worse"

    def cell_md(self, c: dict | None) -> str:
        if c is None:
            return "—"
        std = "–" if c["n"] < 2 else pct(c["std"])
        core = f"{pct(c['mean'])} ± {std}"
        if c["bold"]:
            core = f"**{core}**"
        mark = {"better": f" {UP}", "worse": f" {DOWN}"}.get(c["mark"], "")
        return f"{core}{DAGGER if self._dagger(c) else ''} (n={c['n']}){mark}"

    def cell_tex(self, c: dict | None) -> str:
        if c is None:
            return "---"
        std = "--" if c["n"] < 2 else pct(c["std"])
        core = f"{pct(c['mean'])} $\\pm$ {std}"
        if c["bold"]:
            core = f"\\textbf{{{core}}}"
        sup = ("\\dagger" if self._dagger(c) else "") + {"better": "\\uparrow", "worse": "\\downarrow"}.get(c["mark"], "")
        return f"{core}{f'$^{{{sup}}}$' if sup else ''} {{\\scriptsize ({c['n']})}}"

    def cell_html(self, c: dict | None) -> str:
        if c is None:
            return "—"
        std = "–" if c["n"] < 2 else pct(c["std"])
        core = f"{pct(c['mean'])} ± {std}"
        if c["bold"]:
            core = f"<b>{core}</b>"
        sup = (DAGGER if self._dagger(c) else "") + {"better": UP, "worse": DOWN}.get(c["mark"], "")
        return f"{core}{f'<sup>{sup}</sup>' if sup else ''} <small>(n={c['n']})</small>"

    def accuracy_notes(self) -> list[str]:
        test = TEST_NAMES[self.test]
        return [
            "Test accuracy (%) per cell: mean ± sample std over seeds, (n) = number of seeds; – : one seed, no std; — : not run.",
            "Bold: the best mean (as shown) in the column within each backbone.",
            f"{DAGGER}: not significantly worse than the column's best-mean cell ({test}, two-sided, over paired seeds, "
            f"Holm-corrected over all {self.n_best_tests} such comparisons of this experiment, α = {self.alpha:g}); no "
            f"{DAGGER}: the best cell itself, significantly worse, or untested (fewer than 2 paired seeds). Not rejecting "
            "is not evidence of equality: with few seeds these tests have little power.",
            f"{UP} / {DOWN}: significantly higher / lower than the row's `{BASELINE}` baseline ({test} over paired seeds, "
            f"{self._family()}); no mark: not significant, the baseline itself, or untested (fewer than 2 paired seeds); "
            "see tables/significance.csv and tables/sft_vs_baselines.md.",
            *self.protocol_notes(),
        ]

    def accuracy_markdown(self) -> str:
        head = [*self._head(), *(frac_label(f) for f in self.fractions)]
        lines = [f"| {' | '.join(head)} |", f"|{'|'.join(['---'] * len(self._head()) + ['---:'] * len(self.fractions))}|"]
        for row in self.rows:
            cells = [self.cell_md(self._cell(row, f)) for f in self.fractions]
            lines.append(f"| {' | '.join([f'`{x}`' if i == 1 else x for i, x in enumerate(self._labels(row))] + cells)} |")
        return "\n".join(lines) + "\n\n" + _md_notes(self.accuracy_notes())

    def accuracy_latex(self) -> str:
        nl = len(self._head())
        lines = [
            "% Needs \\usepackage{booktabs}. Generated by `python cli.py report`; numbers as in accuracy.csv.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{Test accuracy (\\%) on CIFAR-10, experiment {tex_escape(self.experiment)}: mean $\\pm$ std over seeds "
            f"(number of seeds in parentheses). Bold: best in the column per backbone. $^{{\\dagger}}$: not significantly "
            f"worse than the column's best ({TEST_NAMES[self.test]}, Holm over {self.n_best_tests} comparisons). "
            f"$^{{\\uparrow}}$/$^{{\\downarrow}}$: significantly higher/lower than {BASELINE} ({TEST_NAMES[self.test]}, "
            f"Holm-corrected over {self.n_tests} comparisons with baselines, $\\alpha={self.alpha:g}$). --: one seed; "
            "---: not run.}",
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
        lines += ["\\bottomrule", "\\end{tabular}", *_tex_notes(self.protocol_notes()), "\\end{table}", ""]
        return "\n".join(lines)

    def accuracy_csv(self) -> str:
        """Tidy: one line per cell; accuracy_mean/std/ci95 as fractions at full precision (the other formats show
        them as percentages rounded to 2 decimals), the comparison with `finetune` behind the arrow, the one with
        the column's best behind the dagger (vs_best_*), and the cell's step budget where runs.csv records it."""
        out = self.cells.rename(columns={"mean": "accuracy_mean", "std": "accuracy_std", "ci95": "accuracy_ci95"})
        return out.to_csv(index=False, lineterminator="\n")

    def accuracy_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in [*self._head(), *(frac_label(f) for f in self.fractions)])
        body = []
        for row in self.rows:
            lab = "".join(f"<td>{html.escape(x)}</td>" for x in self._labels(row))
            cells = "".join(f'<td class="num">{self.cell_html(self._cell(row, f))}</td>' for f in self.fractions)
            body.append(f"<tr>{lab}{cells}</tr>")
        return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>' + _html_notes(
            self.accuracy_notes()
        )

    # -- sft* against each of its baselines
    def sft_rows(self) -> list[tuple[str, str, str, float]]:
        """The sft* cells, in display order: (backbone, recipe, method, fraction)."""
        return [
            (c["backbone"], c["recipe"], c["method"], c["fraction"]) for c in self.cells.to_dict("records") if is_sft(c["method"])
        ]

    def sft_baselines(self) -> list[str]:
        have = {k[4] for k in self.test_index if is_sft(k[2])}
        return [bm for bm in BASELINE_ORDER if bm in have or bm == BASELINE]

    def _sft_head(self) -> list[str]:
        return [*self._head(), "fraction", *(f"vs {bm}" for bm in self.sft_baselines())]

    def _sft_labels(self, key: tuple[str, str, str, float]) -> list[str]:
        b, r, m, f = key
        return [*self._labels((b, r, m)), frac_label(f)]

    def _sft_test(self, key: tuple[str, str, str, float], bm: str) -> dict | None:
        t = self.test_index.get((*key, bm))
        return t if t is not None and t["n_pairs"] > 0 else None

    def sft_cell_md(self, t: dict | None) -> str:
        if t is None:
            return "—"
        mark = {"better": f" {UP}", "worse": f" {DOWN}"}.get(t["mark"], "")
        return f"{100 * t['diff_mean']:+.2f}{mark} (n={t['n_pairs']})"

    def sft_cell_tex(self, t: dict | None) -> str:
        if t is None:
            return "---"
        mark = {"better": "^{\\uparrow}", "worse": "^{\\downarrow}"}.get(t["mark"], "")
        return f"${100 * t['diff_mean']:+.2f}{mark}$ {{\\scriptsize ({t['n_pairs']})}}"

    def sft_notes(self) -> list[str]:
        names = [f"`{bm}`" for bm in self.sft_baselines()]
        base = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        out = [
            f"Each sft* cell against {base} of the same backbone and fraction: mean paired difference (method − baseline, "
            "accuracy points) over the seeds both share, (n) = paired seeds; the baseline of the same recipe, else the "
            "`tuned` one (tables/significance.csv names it).",
            f"{UP} / {DOWN}: significantly higher / lower ({TEST_NAMES[self.test]}, {self._family()}); no mark: not "
            "significant, or untested (fewer than 2 paired seeds); —: no paired run of that baseline (not run at this "
            "fraction, or no seed in common).",
        ]
        if not self.sft_rows():
            out.insert(0, "No sft* method in this experiment: the table is empty.")
        return out + self.protocol_notes()

    def sft_markdown(self) -> str:
        head = self._sft_head()
        nl = len(self._head()) + 1
        lines = [f"| {' | '.join(head)} |", f"|{'|'.join(['---'] * nl + ['---:'] * (len(head) - nl))}|"]
        for key in self.sft_rows():
            labels = [f"`{x}`" if i == 1 else x for i, x in enumerate(self._sft_labels(key))]
            cells = [self.sft_cell_md(self._sft_test(key, bm)) for bm in self.sft_baselines()]
            lines.append(f"| {' | '.join(labels + cells)} |")
        return "\n".join(lines) + "\n\n" + _md_notes(self.sft_notes())

    def sft_latex(self) -> str:
        head = self._sft_head()
        nl = len(self._head()) + 1
        lines = [
            "% Needs \\usepackage{booktabs}. Generated by `python cli.py report`; numbers as in sft_vs_baselines.csv.",
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{sft* against its baselines, experiment {tex_escape(self.experiment)}: mean paired difference in "
            "test accuracy (points, method minus baseline; paired seeds in parentheses). "
            f"$^{{\\uparrow}}$/$^{{\\downarrow}}$: significantly higher/lower ({TEST_NAMES[self.test]}, Holm-corrected over "
            f"{self.n_tests} comparisons with baselines, $\\alpha={self.alpha:g}$). ---: baseline not run.}}",
            f"\\label{{tab:sft-vs-baselines-{slug(self.experiment)}}}",
            f"\\begin{{tabular}}{{{'l' * nl}{'r' * (len(head) - nl)}}}",
            "\\toprule",
            " & ".join(tex_escape(h) for h in head) + " \\\\",
            "\\midrule",
        ]
        prev = None
        for key in self.sft_rows():
            if prev is not None and key[0] != prev:
                lines.append("\\midrule")
            labels = [tex_escape(x) for x in self._sft_labels(key)]
            if key[0] == prev:
                labels[0] = ""
            prev = key[0]
            cells = [self.sft_cell_tex(self._sft_test(key, bm)) for bm in self.sft_baselines()]
            lines.append(" & ".join(labels + cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", *_tex_notes(self.protocol_notes()), "\\end{table}", ""]
        return "\n".join(lines)

    def sft_csv(self) -> str:
        """Wide: one line per sft* cell; per baseline method its run (method/recipe), paired seeds, mean paired
        difference (fraction, not points), Holm-adjusted p and mark."""
        recs = []
        for key in self.sft_rows():
            rec: dict[str, Any] = dict(zip(KEY, key, strict=True), column=frac_label(key[3]))
            for bm in self.sft_baselines():
                t = self.test_index.get((*key, bm))
                rec[f"{bm}_baseline"] = t["baseline"] if t else ""
                rec[f"{bm}_n_pairs"] = int(t["n_pairs"]) if t else 0
                rec[f"{bm}_diff_mean"] = t["diff_mean"] if t else math.nan
                rec[f"{bm}_p_holm"] = t["p_holm"] if t else math.nan
                rec[f"{bm}_mark"] = t["mark"] if t else "no baseline"
            recs.append(rec)
        cols = [*KEY, "column"] + [
            f"{bm}_{x}" for bm in self.sft_baselines() for x in ("baseline", "n_pairs", "diff_mean", "p_holm", "mark")
        ]
        return pd.DataFrame(recs, columns=cols).to_csv(index=False, lineterminator="\n")

    def sft_html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._sft_head())
        body = []
        for key in self.sft_rows():
            cells = "".join(f"<td>{html.escape(x)}</td>" for x in self._sft_labels(key))
            cells += "".join(
                f'<td class="num">{html.escape(self.sft_cell_md(self._sft_test(key, bm)))}</td>' for bm in self.sft_baselines()
            )
            body.append(f"<tr>{cells}</tr>")
        return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>' + _html_notes(
            self.sft_notes()
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
            *self.protocol_notes(),
        ]

    def efficiency_markdown(self) -> str:
        head = [*self._head(), *self.EFF_HEAD]
        lines = [f"| {' | '.join(head)} |", f"|{'|'.join(['---'] * len(head))}|"]
        for labels, e in self._eff_rows():
            labels = [f"`{x}`" if i == 1 else x for i, x in enumerate(labels)]
            lines.append(f"| {' | '.join(labels + self._eff_values(e))} |")
        return "\n".join(lines) + "\n\n" + _md_notes(self.efficiency_notes())

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
            lines.append(" & ".join(tl + [tex_escape(v) for v in self._eff_values(e)]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", *_tex_notes(self.protocol_notes()), "\\end{table}", ""]
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
        return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>' + _html_notes(
            self.efficiency_notes()
        )


def _per_cell(values: pd.Series) -> Any:
    """A per-run quantity summarised per cell: the value when every seed agrees (the normal case: the
    step budget is one per cell), else "min-max" so that a disagreement shows instead of averaging away."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return math.nan
    lo, hi = int(v.min()), int(v.max())
    return lo if lo == hi else f"{lo}-{hi}"


def build_tables(
    experiment: str,
    df: pd.DataFrame,
    stats: pd.DataFrame,
    tests: pd.DataFrame,
    eff: pd.DataFrame,
    test: str,
    alpha: float,
    best: pd.DataFrame | None = None,
    protocol: ProtocolInfo | None = None,
) -> Tables:
    """One model for every table: cell statistics, the `finetune` comparison behind ↑/↓, the comparison with
    the column's best behind †, and the cell's step budget (when runs.csv records one)."""
    ft = tests[tests["baseline_method"] == BASELINE] if len(tests) else tests
    cols = [*KEY, "baseline", "n_pairs", "diff_mean", "p", "p_holm", "mark", "reason"]
    cells = stats.merge(ft[cols] if len(ft) else pd.DataFrame(columns=cols), on=KEY, how="left")
    is_base = cells["baseline"].isna()
    cells["baseline"] = cells["baseline"].fillna("")
    # A row without a comparison is either the baseline itself or a row whose backbone has no finetune.
    cells["mark"] = cells["mark"].where(~is_base, np.where(cells["method"] == BASELINE, "baseline", "no baseline"))
    cells["reason"] = cells["reason"].fillna("")
    cells["n_pairs"] = cells["n_pairs"].fillna(0).astype(int)
    cells["n"] = cells["n"].astype(int)
    if best is not None and len(best):
        vb = best[[*KEY, "best", "vs_best", "n_pairs", "diff_mean", "p", "p_holm"]].rename(
            columns={
                "best": "best_cell",
                "n_pairs": "vs_best_n_pairs",
                "diff_mean": "vs_best_diff",
                "p": "vs_best_p",
                "p_holm": "vs_best_p_holm",
            }
        )
        cells = cells.merge(vb, on=KEY, how="left")
    for col in ("steps", "probe_steps"):
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            per = df.groupby(KEY, sort=False)[col].agg(_per_cell).rename(col).reset_index()
            cells = cells.merge(per, on=KEY, how="left")
    shown = cells["mean"].map(pct).astype(float)
    top = shown.groupby([cells["backbone"], cells["fraction"]]).transform("max")
    cells["bold"] = shown == top
    rows = sorted({(b, r, m) for b, r, m in cells[["backbone", "recipe", "method"]].itertuples(index=False)}, key=row_sort_key)
    order = {row: i for i, row in enumerate(rows)}
    cells = cells.assign(_o=[order[(b, r, m)] for b, r, m in cells[["backbone", "recipe", "method"]].itertuples(index=False)])
    cells = cells.sort_values(["_o", "fraction"]).drop(columns="_o").reset_index(drop=True)
    cells.insert(4, "column", cells["fraction"].map(frac_label))
    return Tables(
        experiment=experiment,
        rows=rows,
        fractions=sorted(cells["fraction"].unique()),
        cells=cells,
        efficiency=eff,
        show_recipe=df["recipe"].nunique() > 1,
        test=test,
        alpha=alpha,
        n_tests=int(np.isfinite(tests["p"]).sum()) if len(tests) else 0,
        tests=tests,
        n_best_tests=int(np.isfinite(best["p"]).sum()) if best is not None and len(best) else 0,
        protocol=protocol,
    )


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
    seed: int | None = None  # per-seed search (protocol v2): the seed whose subset this study searched
    search_mode: str = ""


SEED_PART = re.compile(r"^seed(-?\d+)$")


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
    """The search studies of this experiment, read-only: "{experiment}/{backbone}/{method}/{recipe}/{fraction}"
    (one per cell: shared search, and protocol v1) and ".../seed{s}" (one per cell and seed: per-seed search).
    The study's user_attrs win over its name where both are present."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loc = storage_location(experiment_dir, storage)
    try:
        if "://" in loc:
            from bench.sweep.storage import with_password

            store: Any = optuna.storages.RDBStorage(with_password(loc), skip_table_creation=True)
        else:
            if not Path(loc).is_file():
                notes.append(f"No Optuna storage at {loc}: hyperparameter importances and optimisation histories are omitted.")
                return []
            store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(loc))
        summaries = store.get_all_studies()
    except Exception as exc:  # a damaged or unreachable storage must not cost the whole report
        from bench.sweep.storage import masked

        why = str(exc).replace(loc, masked(loc))  # a URL's password is never written into the report
        notes.append(f"Could not read the Optuna storage {masked(loc)} ({type(exc).__name__}: {why}); its plots are omitted.")
        return []
    out = []
    prefix = f"{experiment}/"
    for s in summaries:
        a = s.user_attrs
        if not s.study_name.startswith(prefix) or a.get("kind") == "final":
            continue
        parts = s.study_name[len(prefix) :].split("/")
        try:
            b, m, r, f = (
                (a["backbone"], a["method"], a["recipe"], float(a["fraction"]))
                if "backbone" in a
                else (*parts[:3], float(parts[3]))
            )
            tail = SEED_PART.match(parts[4]) if len(parts) > 4 else None
            mode = str(a.get("search_mode") or ("per_seed" if tail else ""))
            # A shared search records the seed whose subset it searched too; only a per-seed study is one seed's.
            seed = (int(a["seed"]) if a.get("seed") is not None else int(tail[1])) if mode == "per_seed" else None
        except (KeyError, IndexError, ValueError, TypeError):
            notes.append(f"Study '{s.study_name}' names no cell; skipped.")
            continue
        study = optuna.load_study(study_name=s.study_name, storage=store)
        out.append(StudyInfo(s.study_name, str(b), str(m), str(r), f, study.get_trials(deepcopy=False), study, seed, mode))
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
            imp = optuna.importance.get_param_importances(study)
        except Exception as exc:  # an evaluator that cannot fit this study is a note, not a failed report
            return {}, f"{type(exc).__name__}: {exc}"
    if caught and imp:  # e.g. PED-ANOVA: "quantiles select the same set of trials ... will be equal"
        return {}, f"Optuna: {str(caught[0].message).split('. ')[0]}"
    return imp, "no searched parameter varies"


def make_plots(
    experiment_dir: Path,
    df: pd.DataFrame,
    tests: pd.DataFrame,
    studies: list[StudyInfo],
    labeler: Callable,
    notes: list[str],
    step_unit: str = "step",
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
    for t in tests[tests["baseline_method"] == BASELINE].itertuples(index=False) if len(tests) else []:
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

    # 4. Optuna, one grid per backbone (rows: method, columns: fraction): each trial's value and the best so
    #    far; the validation curves the trials reported (x: optimiser step from protocol v2 on, the pruner's
    #    clock); importances. A per-seed search has one study per seed and cell: one colour per seed, and
    #    the importances pool the seeds' complete trials (each seed's study alone has too few trials).
    import optuna
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    done_state, pruned_state = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    all_seeds = sorted({s.seed for s in studies if s.seed is not None})
    seed_colour = dict(zip(all_seeds, sns.color_palette("tab10", max(10, len(all_seeds))), strict=False))
    unit = "optimiser step" if step_unit == "step" else step_unit
    for b in sorted({s.backbone for s in studies}):
        mine = [s for s in studies if s.backbone == b]
        rows = sorted({(s.recipe, s.method) for s in mine}, key=lambda rm: (_method_rank(rm[1]), _recipe_rank(rm[0])))
        cols = sorted({s.fraction for s in mine})
        by: dict[tuple[str, str, float], list[StudyInfo]] = {}
        for s in mine:
            by.setdefault((s.recipe, s.method, s.fraction), []).append(s)
        for group in by.values():
            group.sort(key=lambda s: (s.seed is None, s.seed if s.seed is not None else 0))
        per_seed = any(s.seed is not None for s in mine)
        size = (3.0 * len(cols), 2.4 * len(rows))
        fh, axh = plt.subplots(len(rows), len(cols), figsize=size, squeeze=False)
        fc, axc = plt.subplots(len(rows), len(cols), figsize=size, squeeze=False)
        fi, axi = plt.subplots(len(rows), len(cols), figsize=size, squeeze=False)
        seeds_shown: set[int] = set()
        for i, (r, m) in enumerate(rows):
            for j, f in enumerate(cols):
                group = by.get((r, m, f), [])
                ah, ac, ai = axh[i][j], axc[i][j], axi[i][j]
                title = f"{labeler(m, r)} @ {frac_label(f)}"
                if not group:
                    for ax in (ah, ac, ai):
                        ax.set_axis_off()
                        ax.set_title(title + ": no study", fontsize=7)
                    continue
                n_done = n_pruned = 0
                for s in group:
                    colour = seed_colour[s.seed] if s.seed is not None else "tab:blue"
                    if s.seed is not None:
                        seeds_shown.add(s.seed)
                    done = [t for t in s.trials if t.state == done_state and t.value is not None]
                    pruned = [t for t in s.trials if t.state == pruned_state]
                    n_done, n_pruned = n_done + len(done), n_pruned + len(pruned)
                    if done:
                        xs, ys = [t.number for t in done], [100 * t.value for t in done]
                        ah.scatter(xs, ys, s=12, color=colour)
                        ah.step(xs, np.maximum.accumulate(ys), where="post", color=colour if per_seed else "tab:red", lw=1)
                    pv = [
                        (t.number, 100 * t.intermediate_values[max(t.intermediate_values)])
                        for t in pruned
                        if t.intermediate_values
                    ]
                    if pv:
                        ah.scatter(*zip(*pv, strict=True), s=12, marker="x", color=colour if per_seed else "grey")
                    for t in [*done, *pruned]:
                        if not t.intermediate_values:
                            continue
                        xs = sorted(t.intermediate_values)
                        ys = [100 * t.intermediate_values[k] for k in xs]
                        ac.plot(xs, ys, "-" if t.state == done_state else "--", color=colour, lw=0.8, alpha=0.8)
                        if t.state == pruned_state:
                            ac.plot(xs[-1], ys[-1], "x", color=colour, ms=4)
                studies_txt = f" in {len(group)} seeds' studies" if per_seed else ""
                ah.set_title(f"{title}\n{n_done} complete, {n_pruned} pruned{studies_txt}", fontsize=7)
                ah.xaxis.set_major_locator(MaxNLocator(integer=True))
                ah.set_xlabel("trial (within its study)" if per_seed else "trial", fontsize=7)
                ah.set_ylabel("val. accuracy (%)", fontsize=7)
                ah.tick_params(labelsize=6)
                ac.set_title(title, fontsize=7)
                ac.xaxis.set_major_locator(MaxNLocator(integer=True))
                ac.set_xlabel(unit, fontsize=7)
                ac.set_ylabel("val. accuracy (%)", fontsize=7)
                ac.tick_params(labelsize=6)
                cell = f"{b}/{m}/{r}/{f:g}" + (f" (pooled over {len(group)} seeds' studies)" if per_seed else "")
                name = group[0].name if not per_seed else cell
                ai.set_title(f"{title} ({n_done} complete{', pooled' if per_seed else ''})", fontsize=7)
                if n_done < 2:
                    ai.set_axis_off()
                    ai.text(0.5, 0.5, f"fewer than 2 complete trials ({n_done})", ha="center", va="center", fontsize=7)
                    notes.append(f"Study {name}: fewer than 2 complete trials ({n_done}), so no importances.")
                    continue
                imp, why = _importances(group, done_state)
                if not imp:
                    ai.set_axis_off()
                    ai.text(0.5, 0.5, "no importances:\n" + textwrap.fill(why, 40), ha="center", va="center", fontsize=6)
                    notes.append(f"Study {name}: no hyperparameter importances ({why}).")
                    continue
                names = list(imp)[::-1]
                ai.barh(names, [imp[k] for k in names], color="tab:green")
                ai.set_xlabel("importance (sums to 1)", fontsize=7)
                ai.tick_params(labelsize=6)
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
        axh[0][0].legend(handles=[*hist_keys, pruned_key], fontsize=6)
        axc[0][0].legend(handles=[*keys, Line2D([], [], ls="--", color="grey", lw=0.8, label="pruned (x: stopped)")], fontsize=6)
        how = (
            "per-seed search: one study per seed and cell, one colour per seed"
            if per_seed
            else "one study per cell (shared search)"
        )
        for fig, kind, title, cap in (
            (
                fh,
                "optuna_history",
                f"Optimisation history, {b}",
                f"Validation accuracy of each trial (x: pruned, at the value of its last reported {step_unit}) and the best "
                f"so far; {how}.",
            ),
            (
                fc,
                "optuna_curves",
                f"Validation curves of the search trials, {b}",
                f"The validation accuracy each trial reported against the {unit} it reported at (the pruner's clock); "
                f"dashed, ending in x: pruned trials; {how}.",
            ),
            (
                fi,
                "optuna_importance",
                f"Hyperparameter importances, {b}",
                "optuna.importance.get_param_importances (Optuna's default evaluator) over the complete trials of each "
                + (
                    "cell, pooled over its seeds' studies (per-seed search; each alone has too few trials)"
                    if per_seed
                    else "cell's study"
                )
                + "; with few trials these are rough.",
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


COMPUTE_FIELDS = (  # runs.csv column -> compute-table header; only those the runs table has are shown
    ("steps", "steps S"),
    ("probe_steps", "probe steps"),
    ("hp_epochs", "epochs (v1)"),
    ("hp_probe_epochs", "probe epochs (v1)"),
    ("augment", "augment"),
    ("bn", "BN"),
    ("search_mode", "search"),
    ("n_train", "labelled images"),
)


def _values(col: pd.Series) -> str:
    """A column's values within one cell, as text: one value, or "a-b" for numbers, or "a / b" otherwise."""
    v = col.dropna()
    v = v[v.astype(str).str.strip() != ""]
    if v.empty:
        return ""
    num = pd.to_numeric(v, errors="coerce")
    if num.notna().all() and v.map(lambda x: not isinstance(x, bool | np.bool_)).all():
        lo, hi = num.min(), num.max()
        show = (lambda x: f"{int(x)}") if (num == num.round()).all() else (lambda x: f"{x:g}")
        return show(lo) if lo == hi else f"{show(lo)}-{show(hi)}"
    return " / ".join(sorted({str(x).lower() if isinstance(x, bool | np.bool_) else str(x) for x in v}))


def compute_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: runs, the optimiser-step budget S and the head-only probe steps beside it (protocol v2; the
    epochs for protocol v1), whether training augmented, the BN policy, the search mode, and the mean
    seconds per final run: the compute a cell's numbers cost, next to the numbers."""
    fields = [(c, h) for c, h in COMPUTE_FIELDS if c in df.columns and df[c].notna().any()]
    rows = []
    for (b, r, m, f), g in df.groupby(KEY, sort=False):
        rec: dict[str, Any] = dict(backbone=b, recipe=r, method=m, fraction=frac_label(f), runs=len(g))
        for c, h in fields:
            rec[h] = _values(g[c])
        for c in ("train_seconds", "wall_seconds"):
            if c in g.columns:
                sec = pd.to_numeric(g[c], errors="coerce")
                rec[f"mean {c.replace('_', ' ')}"] = round(float(sec.mean()), 1) if sec.notna().any() else math.nan
        rows.append((_cell_key(b, r, m, f), rec))
    return pd.DataFrame([rec for _, rec in sorted(rows, key=lambda kr: kr[0])])


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
) -> str:
    esc = html.escape
    info = tables.protocol or protocol_info(df)
    fr = ", ".join(frac_label(f) for f in sorted(df["fraction"].unique()))
    seeds = sorted(df["seed"].unique())
    trials = sorted({sum(1 for t in s.trials if t.state.is_finished()) for s in studies})
    per_seed = any(s.seed is not None for s in studies)
    studies_txt = "study (one per seed and cell: per-seed search)" if per_seed else "study"
    protocol = [
        f"Backbones: {', '.join(sorted(df['backbone'].unique()))}.",
        f"Methods: {', '.join(sorted(df['method'].unique(), key=_method_rank))}; "
        f"recipes: {', '.join(sorted(df['recipe'].unique(), key=_recipe_rank))}.",
        f"Label fractions (per class, nested for a seed): {fr}. Seeds: {', '.join(map(str, seeds))} (paired: seed s draws "
        "the same labelled subset for every method).",
        "Tuned cells: hyperparameters chosen by Optuna on a validation split carved from the labelled subset only "
        + (f"({', '.join(map(str, trials))} finished trials per {studies_txt})" if trials else "(no study found in the storage)")
        + "; then one final run per seed on the whole labelled subset, evaluated once on the test set.",
        f"Comparisons: each method against {BASELINE}, and every sft* method also against linear_probe and lp_ft, of the "
        f"same backbone and fraction, {TEST_NAMES[tables.test]} over paired seeds, Holm-corrected over all "
        f"{tables.n_tests} comparisons, α = {tables.alpha:g}; {DAGGER} in the accuracy table: not significantly worse "
        f"than the column's best (its own Holm family of {tables.n_best_tests}).",
    ]
    if info.has_steps:
        protocol.append(
            "Budgets in optimiser steps: S per cell (the same for every method of a (backbone, fraction) cell, search "
            "trials and final runs alike); the head-only linear-probe steps that start sft* and lp_ft are compute "
            "beside S, shown apart in the table below."
        )
    label_items = "".join(f"<li><b>{esc(p)}</b></li>" for p in info.lines())
    compute_html = (
        "<p>Compute per cell (from runs.csv; ranges where seeds differ):</p>" + _html_table(compute)
        if compute is not None and len(compute)
        else ""
    )
    cfg = Path(experiment_dir) / "config.toml"
    cfg_html = f"<details><summary>config.toml</summary><pre>{esc(cfg.read_text())}</pre></details>" if cfg.is_file() else ""
    sft = wtl[wtl["method"] == "sft"]
    if len(sft):
        items = []
        for s in sft.itertuples(index=False):
            items.append(
                f"<li><b>sft vs {esc(s.baseline)}</b>: {s.win} win(s), {s.tie} tie(s), {s.loss} loss(es) "
                f"(significant after Holm, α = {tables.alpha:g}); {s.untested} cell(s) untested (fewer than 2 paired "
                f"seeds). By mean alone: higher in {s.higher_mean}, lower in {s.lower_mean}.</li>"
            )
        headline = f'<ul class="wtl">{"".join(items)}</ul>'
    else:
        headline = '<p class="wtl">No <code>sft</code> row with a baseline in this experiment: no win/tie/loss count.</p>'
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
        f"<p>{len(df)} final runs ({esc(info.label)}) from <code>{esc(str(Path(experiment_dir)))}/runs.csv</code> and "
        f"{len(studies)} Optuna studies. Everything on this page is computed from those two; tables are also in "
        "<code>tables/</code> (Markdown, LaTeX, CSV) and plots in <code>plots/</code> (PNG, PDF).</p>",
        "<h2>Summary</h2>",
        headline,
        _html_table(wtl) if len(wtl) else "",
        "<p>win/tie/loss per method against each of its baselines (finetune; for sft* also linear_probe and lp_ft), one "
        "count per (backbone, fraction) cell.</p>",
        '<h2>Protocol</h2><ul class="protocol">'
        + label_items
        + "".join(f"<li>{esc(p)}</li>" for p in protocol)
        + "</ul>"
        + compute_html
        + cfg_html,
        "<h2>Provenance</h2>",
        '<table class="t"><tbody>'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in prov)
        + "</tbody></table>",
        "<h2>Accuracy</h2>",
        tables.accuracy_html(),
        "<h2>sft against its baselines</h2>",
        tables.sft_html(),
        "<h2>Label efficiency</h2>",
        tables.efficiency_html(),
        "<h2>Comparisons with baselines</h2>",
        _html_table(sig, {"p": _fmt_p, "p_holm": _fmt_p}) if len(sig) else "<p>No comparison: no baseline.</p>",
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
    info = protocol_info(df)
    stats = summarise(df)
    tests = paired_tests(df, test, alpha)
    best = best_tests(df, test, alpha)
    if test == "wilcoxon":  # before anything is drawn or written: a refused report leaves the folder as it was
        n_max = largest_pairing(tests, best)
        check_wilcoxon_reachable(n_max, alpha)
        m = int(np.isfinite(tests["p"]).sum()) if len(tests) else 0
        if m > 1 and signed_rank_floor(n_max) * m >= alpha:
            notes.append(
                f"Wilcoxon with at most {n_max} paired seeds: its smallest p, {signed_rank_floor(n_max):.3g}, times the "
                f"{m} comparisons of the Holm family is {signed_rank_floor(n_max) * m:.3g} ≥ α = {alpha:g}, so no "
                "comparison with a baseline can be significant; the paired t-test (--test ttest) can."
            )
    eff = label_efficiency(df, stats)
    tables = build_tables(name, df, stats, tests, eff, test, alpha, best, info)
    notes[:0] = info.lines()
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
    multi = df["recipe"].nunique() > 1

    def labeler(m: str, r: str) -> str:
        return f"{m} ({r})" if multi else m

    studies = load_studies(exp_dir, name, storage, notes)
    figs = make_plots(exp_dir, df, tests, studies, labeler, notes, info.step_unit)
    wtl = win_tie_loss(tests)
    prov = provenance(exp_dir, df, studies)
    compute = compute_table(df)
    page = render_html(name, exp_dir, df, tables, tests, wtl, figs, studies, prov, notes, compute)

    outputs: dict[Path, bytes] = {}
    tdir, pdir = exp_dir / "tables", exp_dir / "plots"
    for stem, md, tex, csv in (
        ("accuracy", tables.accuracy_markdown(), tables.accuracy_latex(), tables.accuracy_csv()),
        ("efficiency", tables.efficiency_markdown(), tables.efficiency_latex(), tables.efficiency_csv()),
        ("sft_vs_baselines", tables.sft_markdown(), tables.sft_latex(), tables.sft_csv()),
    ):
        outputs[tdir / f"{stem}.md"] = md.encode()
        outputs[tdir / f"{stem}.tex"] = tex.encode()
        outputs[tdir / f"{stem}.csv"] = csv.encode()
    outputs[tdir / "significance.csv"] = tests.to_csv(index=False, lineterminator="\n").encode()
    outputs[tdir / "win_tie_loss.csv"] = wtl.to_csv(index=False, lineterminator="\n").encode()
    outputs[tdir / "compute.csv"] = compute.to_csv(index=False, lineterminator="\n").encode()
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
    protocol_a: ProtocolInfo | None = None
    protocol_b: ProtocolInfo | None = None

    def protocol_notes(self) -> list[str]:
        """What differs between the two sides' protocols: a v1/v2 comparison measures the change of protocol
        (BatchNorm policy, step budgets, search) as much as anything, and says so."""
        pa, pb = self.protocol_a, self.protocol_b
        if pa is None or pb is None:
            return []
        out = []
        if pa.versions != pb.versions:
            out.append(
                f"A is {pa.label} and B is {pb.label}: the protocols differ (budgets in epochs vs optimiser steps, "
                "BatchNorm policy, search), so B − A measures the change of protocol as much as any change of the "
                "methods; not a like-for-like comparison."
            )
        if pa.search_label() != pb.search_label():
            out.append(f"Search differs: A: {pa.search_label()}; B: {pb.search_label()}.")
        for side, p in (("A", pa), ("B", pb)):
            out += [f"{side}: {line}" for line in p.short_lines()]
        return out

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
        return out + self.protocol_notes()

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


def _check_compare_wilcoxon(common: list[tuple], acc_a: dict, acc_b: dict, alpha: float) -> None:
    """compare's rank tests: paired (signed-rank) where a cell has 2+ shared seeds, else unpaired (Mann-Whitney U);
    refused, like the report's, where no cell's test could reach alpha even with complete separation."""
    n_pair, floor_unpaired, sizes = 0, 1.0, (0, 0)
    for k in common:
        xa, xb = acc_a[k], acc_b[k]
        shared = len(set(xa.index) & set(xb.index))
        if shared >= 2:
            n_pair = max(n_pair, shared)
        elif len(xa) >= 2 and len(xb) >= 2 and rank_sum_floor(len(xa), len(xb)) < floor_unpaired:
            floor_unpaired, sizes = rank_sum_floor(len(xa), len(xb)), (len(xa), len(xb))
    if floor_unpaired <= alpha:
        return
    unpaired = (
        f"; unpaired cells ({sizes[0]} and {sizes[1]} seeds) cannot either (Mann-Whitney U: smallest p {floor_unpaired:.3g})"
        if sizes != (0, 0)
        else ""
    )
    if signed_rank_floor(n_pair) > alpha:
        floor = signed_rank_floor(n_pair)
        raise UserError(
            f"--test wilcoxon cannot reach α = {alpha:g} in this comparison: the largest number of paired seeds is "
            f"n = {n_pair}, and the smallest two-sided exact p of the signed-rank test is 2/2^{n_pair} = {floor:.3g} > "
            f"{alpha:g}{unpaired}; use --test ttest, or run at least {wilcoxon_min_seeds(alpha)} seeds"
        )


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
    if test == "wilcoxon":
        _check_compare_wilcoxon(common, acc_a, acc_b, alpha)
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

    pa, pb = protocol_info(da), protocol_info(db)
    prov = [("runs", str(len(da)), str(len(db))), ("protocol", pa.label, pb.label)]
    prov += [("search", pa.search_label(), pb.search_label())]
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
        pa,
        pb,
    )
