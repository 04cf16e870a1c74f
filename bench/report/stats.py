"""The statistics behind every table, stated once (see the package docstring): cell summaries, paired tests
against the baselines and against each column's best with Holm's correction, win/tie/loss counts, the
Wilcoxon reachability floors, and label efficiency.

Why apart from the tables: these functions return plain DataFrames (significance.csv, win_tie_loss.csv and
efficiency.csv are written from them as they are), so the numbers can be checked against scipy and pandas
without going through any rendering.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from bench.registry import UserError
from bench.report.schema import (
    BASELINE,
    BASELINE_ORDER,
    KEY,
    METRIC,
    TESTS,
    baseline_recipe,
    baselines_of,
    cell_key,
    method_rank,
    row_sort_key,
)
from bench.report.text import frac_label, frac_range
from bench.report.verdicts import VERDICTS, StatsPlan, judge, t_ci

EFFICIENCY_LEVELS = (0.90, 0.95)

# ---------------------------------------------------------------- intervals, Holm, Wilcoxon's floors


def check_test_args(test: str, alpha: float) -> None:
    """Refuse an unknown test or an alpha outside (0, 1) with one line, before anything is read or written."""
    if test not in TESTS:
        raise UserError(f"test '{test}' is not one of: {', '.join(TESTS)}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")


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


# ---------------------------------------------------------------- per cell and paired tests


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: n, mean, sample std (NaN for n=1), 95% t half-width."""
    from scipy import stats as st

    g = df.groupby(KEY, sort=False)[METRIC]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    tq = out["n"].map(lambda n: st.t.ppf(0.975, n - 1) if n > 1 else math.nan)
    out["ci95"] = tq * out["std"] / np.sqrt(out["n"])
    return out


def pair_test(x: np.ndarray, y: np.ndarray, test: str) -> tuple[float, float, str]:
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


def paired_difference(mine: pd.Series, base: pd.Series, test: str) -> dict[str, Any]:
    """mine - base over the seeds both have (the pairing: seed s = the same labelled subset)."""
    seeds = sorted(set(mine.index) & set(base.index))
    x, y = mine.loc[seeds].to_numpy(float), base.loc[seeds].to_numpy(float)
    d = _differences(mine, base)
    stat, p, reason = pair_test(x, y, test)
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
    """A comparison's verdict after Holm: "better" / "worse" (significant, by the sign of the mean difference),
    "ns", or "untested" (no p)."""
    if not math.isfinite(p_adj):
        return "untested"
    if p_adj < alpha:
        return "better" if diff > 0 else "worse"
    return "ns"


def _differences(mine: pd.Series, base: pd.Series) -> np.ndarray:
    """mine - base, seed by seed, over the seeds both have."""
    seeds = sorted(set(mine.index) & set(base.index))
    return mine.loc[seeds].to_numpy(float) - base.loc[seeds].to_numpy(float)


TEST_COLUMNS = [
    *KEY,
    "baseline_method",
    "baseline",
    "family",
    "test",
    "n_pairs",
    "seeds",
    "diff_mean",
    "diff_std",
    "ci_low",
    "ci_high",
    "statistic",
    "p",
    "p_holm",
    "margin",
    "p_tost",
    "p_tost_holm",
    "verdict",
    "family_mdd80",
    "reason",
]


def paired_tests(df: pd.DataFrame, test: str = "ttest", alpha: float = 0.05, plan: StatsPlan | None = None) -> pd.DataFrame:
    """Every cell against each of its baselines (`baselines_of`) of the same backbone and fraction, paired
    by seed, judged as protocol v3 says (bench/report/verdicts.py): the experiment's primary family and the
    secondary one, each Holm-corrected within itself, a 95% CI per difference, TOST against the declared
    margin, and one verdict (better, worse, equivalent, inconclusive, untested).

    `finetune`: a row for every cell of a backbone that has finetune (untested, with the reason, at a
    fraction finetune lacks). `linear_probe` / `lp_ft` for sft*: only where the backbone has that method."""
    plan = plan or StatsPlan(alpha=alpha)
    rows = []
    diffs: list[np.ndarray] = []
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
                diffs.append(np.array([]))
            else:
                row.update(paired_difference(series, base, test))
                diffs.append(_differences(series, base))
            rows.append(row)
    base_cols = ["backbone", "recipe", "method", "fraction", "baseline_method", "baseline", "test", "n_pairs", "seeds"]
    base_cols += ["diff_mean", "diff_std", "statistic", "p", "reason"]
    out = pd.DataFrame(rows, columns=base_cols)
    if len(out):
        order = [
            (*cell_key(b, r, m, f), BASELINE_ORDER.index(bm))
            for b, r, m, f, bm in out[[*KEY, "baseline_method"]].itertuples(index=False)
        ]
        perm = sorted(range(len(out)), key=order.__getitem__)
        out = out.iloc[perm].reset_index(drop=True)
        diffs = [diffs[i] for i in perm]
    out["seeds"] = out["seeds"].fillna("")
    out = judge(out, dict(enumerate(diffs)), plan)
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
                t = paired_difference(acc[(b, r, m, f)], acc[(b, *best, f)], test)
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


WTL_COLUMNS = ["method", "baseline", "family", *VERDICTS, "higher_mean", "lower_mean"]


def win_tie_loss(tests: pd.DataFrame) -> pd.DataFrame:
    """Per (method, baseline method): how many cells got each verdict (protocol v3: better, worse,
    equivalent within the margin, inconclusive, untested), the comparison's family, and higher/lower by
    mean alone (which is not evidence: the verdicts are)."""
    rows = []
    if len(tests):
        pairs = {(m, bm) for m, bm in tests[["method", "baseline_method"]].itertuples(index=False)}
        for m, bm in sorted(pairs, key=lambda p: (method_rank(p[0]), BASELINE_ORDER.index(p[1]))):
            t = tests[(tests["method"] == m) & (tests["baseline_method"] == bm)]
            c = t["verdict"].value_counts()
            row: dict[str, Any] = dict(method=m, baseline=bm, family="/".join(sorted(set(t["family"]))))
            row.update({v: int(c.get(v, 0)) for v in VERDICTS})
            row.update(higher_mean=int((t["diff_mean"] > 0).sum()), lower_mean=int((t["diff_mean"] < 0).sum()))
            rows.append(row)
    return pd.DataFrame(rows, columns=WTL_COLUMNS)


GAIN_COLUMNS = ["backbone", "method", "fraction", "n_pairs", "seeds", "diff_mean", "diff_std", "ci_low", "ci_high", "p"]


def tuning_gain(df: pd.DataFrame, test: str = "ttest") -> pd.DataFrame:
    """What the search added (protocol v3): per (backbone, method, fraction) run under both the `tuned` and the
    `defaults` recipe, tuned - defaults over paired seeds, with its 95% CI and unadjusted p (descriptive: a
    secondary question). Where the search chose the defaults, the two runs are the same training and the
    difference is exactly 0."""
    rows = []
    acc = {k: g.set_index("seed")[METRIC] for k, g in df.groupby(KEY, sort=False)}
    for (b, r, m, f), tuned in acc.items():
        base = acc.get((b, "defaults", m, f))
        if r != "tuned" or base is None:
            continue
        d = _differences(tuned, base)
        t = paired_difference(tuned, base, test)
        lo, hi = t_ci(d)
        rows.append(
            {
                **{k: t[k] for k in ("n_pairs", "seeds", "diff_mean", "diff_std", "p")},
                "backbone": b,
                "method": m,
                "fraction": f,
                "ci_low": lo,
                "ci_high": hi,
            }
        )
    out = pd.DataFrame(rows, columns=GAIN_COLUMNS)
    if len(out):
        out = out.iloc[
            sorted(range(len(out)), key=lambda i: cell_key(out["backbone"][i], "tuned", out["method"][i], out["fraction"][i]))
        ]
    return out.reset_index(drop=True)


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
        row["auc_range"] = frac_range(mine["fraction"].min(), mine["fraction"].max())
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
