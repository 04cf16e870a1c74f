"""Protocol v3's statistics: the question each comparison answers, and the one verdict it gets.

Why (../shared/docs/methods.md, v3): the v2 study said "SFT does not beat fine-tuning" from
non-significance, while the 95% interval of sft - finetune at 1% was about [-3.4, +4.0]: a reader
could not tell "no difference" from "too few seeds to tell". And one Holm family of 34 comparisons
spent its power on trivially significant frozen-against-trained pairs. So here:

- The experiment declares its primary family before it runs (config.toml `[stats] primary`, default
  every sft* against `finetune` and against `lp_ft`); Holm's correction runs within it. Every other
  comparison is secondary: Holm within the secondary family, and labelled secondary wherever shown.
- Every paired difference (method - baseline over the seeds both have) gets its 95% Student-t
  confidence interval.
- Equivalence is tested, not assumed: two one-sided t-tests (TOST) against the declared margin
  (default 1 accuracy point), their p Holm-corrected within the family like the difference tests.
- One verdict per comparison: `equivalent` (TOST rejects: the difference lies within +-margin),
  `better` / `worse` (the difference test rejects, by the sign of the mean), `inconclusive` (neither),
  `untested` (fewer than 2 paired seeds). `equivalent` wins when both reject: the difference is then
  real but smaller than what the experiment declared to matter, and the sentence says so.
- The power of each family: the smallest difference a paired t-test detects with 80% power at the
  family's first Holm threshold (alpha / m) and its median observed spread (noncentral t).

The summary sentences (`sentences`) are generated from the primary family's verdicts only and never
say more than a verdict: the report and the README's answer are copied from them.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.load import read_config
from bench.report.schema import probe_caveat
from bench.report.text import fmt_p, frac_label, margin_points, pct, points

DEFAULT_PRIMARY = ("sft* vs finetune", "sft* vs lp_ft")
DEFAULT_MARGIN = 0.01
DEFAULT_ALPHA = 0.05
POWER = 0.8
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "untested")


@dataclass(frozen=True)
class StatsPlan:
    """What the experiment declared before it ran (config.toml [stats]), or the protocol's defaults for
    a folder written before protocol v3 (then `declared` is False and the report says so)."""

    primary: tuple[str, ...] = DEFAULT_PRIMARY
    margin: float = DEFAULT_MARGIN
    alpha: float = DEFAULT_ALPHA
    declared: bool = False

    def is_primary(self, method: str, baseline: str) -> bool:
        """Whether "method vs baseline" matches a declared pattern (`*` matches any run of characters)."""
        for item in self.primary:
            m, b = (p.strip() for p in item.split(" vs "))
            if fnmatch.fnmatchcase(method, m) and fnmatch.fnmatchcase(baseline, b):
                return True
        return False

    @property
    def margin_points(self) -> str:
        return margin_points(self.margin)


def read_plan(experiment_dir: Path) -> StatsPlan:
    """The [stats] table of the folder's config.toml (written by the sweep), else the defaults."""
    raw = read_config(experiment_dir).get("stats")
    if not isinstance(raw, dict):
        return StatsPlan()
    return StatsPlan(
        primary=tuple(raw.get("primary", DEFAULT_PRIMARY)),
        margin=float(raw.get("margin", DEFAULT_MARGIN)),
        alpha=float(raw.get("alpha", DEFAULT_ALPHA)),
        declared=True,
    )


# ---------------------------------------------------------------- one comparison


def t_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean paired difference (NaN with fewer than 2 pairs)."""
    from scipy import stats

    if len(d) < 2:
        return math.nan, math.nan
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    h = float(stats.t.ppf(0.5 + level / 2, len(d) - 1)) * se
    return m - h, m + h


def tost_p(d: np.ndarray, margin: float) -> float:
    """p of two one-sided paired t-tests against -margin and +margin: the larger of the two (NaN: untested).
    A p below alpha says the mean difference lies within (-margin, +margin)."""
    from scipy import stats

    n = len(d)
    if n < 2:
        return math.nan
    m, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return 0.0 if abs(m) < margin else 1.0
    se = sd / math.sqrt(n)
    p_low = float(stats.t.sf((m + margin) / se, n - 1))  # H0: diff <= -margin
    p_high = float(stats.t.cdf((m - margin) / se, n - 1))  # H0: diff >= +margin
    return max(p_low, p_high)


def mdd(n: int, sd: float, alpha: float, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired t-test at `alpha` detects with `power`, for n
    pairs with spread `sd` (noncentral t, solved exactly); NaN where it cannot be computed."""
    from scipy import optimize, stats

    if n < 2 or not math.isfinite(sd) or sd <= 0 or not 0 < alpha < 1:
        return math.nan
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def shortfall(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        got = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
        if not math.isfinite(got):  # scipy's noncentral t gives up far in the tail: power is then 0 or 1
            got = 1.0 if nc > crit else 0.0
        return got - power

    hi = sd
    while shortfall(hi) < 0 and hi < 1e6 * sd:
        hi *= 2
    return float(optimize.brentq(shortfall, 0.0, hi))


def holm(pvalues: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values; NaN stays NaN and is not counted."""
    p = pvalues.to_numpy(dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for i, idx in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (len(ok) - i) * p[idx]))
        out[idx] = running
    return pd.Series(out, index=pvalues.index)


def verdict_of(diff: float, p_holm: float, p_tost_holm: float, alpha: float) -> str:
    """The one verdict (see the module docstring): equivalent, better, worse, inconclusive or untested."""
    if not math.isfinite(p_holm) and not math.isfinite(p_tost_holm):
        return "untested"
    if math.isfinite(p_tost_holm) and p_tost_holm < alpha:
        return "equivalent"
    if math.isfinite(p_holm) and p_holm < alpha:
        return "better" if diff > 0 else "worse"
    return "inconclusive"


# ---------------------------------------------------------------- the families


def judge(tests: pd.DataFrame, diffs: dict[int, np.ndarray], plan: StatsPlan) -> pd.DataFrame:
    """`tests` (stats.paired_tests: one row per comparison, its p from the chosen test) with the v3 columns:
    family, 95% CI, TOST p, both Holm-corrected within the family, verdict, and the family's power.

    `diffs` maps a row's index to its paired differences (method - baseline, seed by seed)."""
    out = tests.copy()
    n = len(out)
    out["family"] = [
        "primary" if plan.is_primary(m, b) else "secondary" for m, b in zip(out["method"], out["baseline_method"], strict=True)
    ]
    cis = [t_ci(diffs.get(i, np.array([]))) for i in out.index]
    out["ci_low"] = [c[0] for c in cis] if n else []
    out["ci_high"] = [c[1] for c in cis] if n else []
    out["p_tost"] = [tost_p(diffs.get(i, np.array([])), plan.margin) for i in out.index] if n else []
    out["p_holm"] = np.nan
    out["p_tost_holm"] = np.nan
    for fam in ("primary", "secondary"):
        sel = out["family"] == fam
        if sel.any():
            out.loc[sel, "p_holm"] = holm(out.loc[sel, "p"])
            out.loc[sel, "p_tost_holm"] = holm(out.loc[sel, "p_tost"])
    out["verdict"] = [
        verdict_of(d, p, q, plan.alpha) for d, p, q in zip(out["diff_mean"], out["p_holm"], out["p_tost_holm"], strict=True)
    ]
    out["margin"] = plan.margin
    power = family_power(out, plan)
    out["family_mdd80"] = out["family"].map({f.family: f.mdd for f in power})
    return out


@dataclass(frozen=True)
class FamilyPower:
    """One family's size and power: m tested comparisons, the median pairs and spread, and the smallest
    difference detectable with 80% power at alpha / m (Holm's first threshold)."""

    family: str
    m: int
    n_pairs: int
    sd: float
    mdd: float

    def sentence(self, alpha: float) -> str:
        if self.m == 0:
            return f"The {self.family} family has no tested comparison."
        plural = "" if self.m == 1 else "s"
        return (
            f"Power of the {self.family} family ({self.m} tested comparison{plural}, median {self.n_pairs} paired seeds, median "
            f"spread of the paired differences {pct(self.sd)} points): a difference of {pct(self.mdd)} points "
            f"is detected with 80% power at α / m = {alpha / self.m:.2g} (Holm's first threshold); smaller ones "
            "may go undetected."
        )


def family_power(tests: pd.DataFrame, plan: StatsPlan) -> list[FamilyPower]:
    """The power of each family, from its tested comparisons' median pairs and spread."""
    out = []
    for fam in ("primary", "secondary"):
        t = tests[(tests["family"] == fam) & np.isfinite(tests["p"].astype(float))] if len(tests) else tests
        if not len(t):
            out.append(FamilyPower(fam, 0, 0, math.nan, math.nan))
            continue
        n_pairs = int(np.median(t["n_pairs"]))
        sd = float(np.nanmedian(t["diff_std"].astype(float)))
        out.append(FamilyPower(fam, len(t), n_pairs, sd, mdd(n_pairs, sd, plan.alpha / len(t))))
    return out


# ---------------------------------------------------------------- the sentences


def _evidence(row: dict) -> str:
    """The difference, its (unadjusted) 95% CI, the p the verdict was read from (Holm within the family, the
    TOST one for an equivalence) and the pairs. Why the adjusted p beside the unadjusted CI: a CI that excludes
    0 next to 'inconclusive' reads as a contradiction until the reader sees that the verdict's p is adjusted."""
    p = row["p_tost_holm"] if row["verdict"] == "equivalent" else row["p_holm"]
    which = "TOST p (Holm)" if row["verdict"] == "equivalent" else "p (Holm)"
    return (
        f"{points(row['diff_mean'])} points, 95% CI [{points(row['ci_low'])}, {points(row['ci_high'])}], "
        f"{which} {fmt_p(p)}, {row['n_pairs']} seeds"
    )


def _ci_excludes_zero_yet_inconclusive(row: dict) -> bool:
    return row["verdict"] == "inconclusive" and (row["ci_low"] > 0 or row["ci_high"] < 0)


def reading(prim: pd.DataFrame, plan: StatsPlan) -> str:
    """How the CIs and the verdicts fit together, naming the comparisons where they seem to disagree."""
    m = int(np.isfinite(prim["p_holm"].astype(float)).sum())
    plural = "" if m == 1 else "s"
    text = (
        f"Each 95% CI is its comparison's own (unadjusted); a verdict is read from p-values Holm-adjusted over the "
        f"family's {m} tested comparison{plural} (better or worse: the paired test's below {plan.alpha:g}; equivalent: the "
        f"TOST's below {plan.alpha:g}), so a CI that excludes 0 can stand beside 'inconclusive'."
    )
    odd = [r for r in prim.to_dict("records") if _ci_excludes_zero_yet_inconclusive(r)]
    if odd:
        named = "; ".join(
            f"`{r['method']}` against `{r['baseline_method']}` at {frac_label(float(r['fraction']))} "
            f"(p (Holm) {fmt_p(r['p_holm'])})"
            for r in odd
        )
        text += f" Here: {named}."
    return text


def _clause(row: dict, plan: StatsPlan) -> str:
    """One comparison's verdict in words, with its evidence; never more than the verdict says."""
    m, v = row["method"], row["verdict"]
    if v == "equivalent":
        also = ""
        if math.isfinite(row["p_holm"]) and row["p_holm"] < plan.alpha:
            also = f", and significantly {'higher' if row['diff_mean'] > 0 else 'lower'} by less than that"
        return f"`{m}` is equivalent within ±{plan.margin_points} point(s){also} ({_evidence(row)})"
    if v in ("better", "worse"):
        return f"`{m}` is {'better' if v == 'better' else 'worse'} ({_evidence(row)})"
    if v == "inconclusive":
        return (
            f"`{m}` is inconclusive: neither a difference nor equivalence within ±{plan.margin_points} point(s) is "
            f"shown ({_evidence(row)})"
        )
    return f"`{m}` is untested ({row.get('reason') or 'fewer than 2 paired seeds'})"


def sentences(tests: pd.DataFrame, df: pd.DataFrame, plan: StatsPlan) -> list[str]:
    """The report's summary: one sentence per (backbone, recipe, fraction, baseline) of the primary family,
    then what the reader must keep in mind (correlation, power, secondary comparisons). Generated from the
    verdicts, so it cannot claim more than they do."""
    out: list[str] = []
    prim = tests[tests["family"] == "primary"] if len(tests) else tests
    if not len(prim):
        return [
            f"No comparison of the primary family ({', '.join(plan.primary)}) is in these runs: no such pair of methods has "
            "run at the same backbone and fraction, so the report draws no conclusion."
        ]
    for (b, r, f, base), g in prim.groupby(["backbone", "recipe", "fraction", "baseline_method"], sort=True):
        rows = g.to_dict("records")
        px = _resolution(df, b, {base, *g["method"]})
        where = f"{b}, {px} px" + ("" if r == "tuned" else f", {r} recipe")
        clauses = "; ".join(_clause(row, plan) for row in rows)
        out.append(f"Against `{base}` at {frac_label(float(f))} of the labels ({where}): {clauses}.")
    out.append(reading(prim, plan))
    caveat = probe_caveat(set(prim["method"]) | set(prim["baseline_method"]), "verdicts")
    if caveat:
        out.append(caveat)
    for p in family_power(tests, plan):
        if p.family == "primary" and p.m:
            out.append(p.sentence(plan.alpha))
    if not plan.declared:
        out.append(
            "This folder declares no [stats] (written before protocol v3): the protocol's default primary family and "
            f"margin (±{plan.margin_points} point) were applied afterwards."
        )
    return out


def _resolution(df: pd.DataFrame, backbone: str, methods: set[str]) -> str:
    """The input resolution(s) the compared methods' runs recorded on this backbone. Why per method: a study
    keeps the article's own model at its 32 px beside 64 px rows (methods.md), and the backbone's resolutions
    pooled would label a 64 px comparison '32/64 px'."""
    if "resolution" not in df.columns:
        return "?"
    rows = df[df["backbone"] == backbone]
    if "method" in rows.columns:
        rows = rows[rows["method"].isin(methods)]
    vals = sorted({int(v) for v in pd.to_numeric(rows["resolution"], errors="coerce").dropna()})
    return "/".join(map(str, vals)) if vals else "?"
