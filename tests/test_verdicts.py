"""Protocol v3's statistics (bench/report/verdicts.py): the declared plan, the equivalence test, the
power of a family, and summary sentences that never say more than a verdict.

Why: the v2 study's README read "SFT does not beat fine-tuning" into non-significance with a 95%
interval of about [-3.4, +4.0]. These tests pin each piece to its definition (scipy, a simulation)
and check the generated sentences against the verdicts they come from.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.report.verdicts import StatsPlan, family_power, holm, mdd, read_plan, sentences, t_ci, tost_p, verdict_of


def test_tost_is_two_one_sided_t_tests() -> None:
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.004, 0.02):
        d = rng.normal(shift, 0.006, size=8)
        lower = stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, 0.01, alternative="less").pvalue
        assert math.isclose(tost_p(d, 0.01), max(lower, upper), rel_tol=1e-9)
    # inside the margin with little spread: equivalent; far outside: not
    assert tost_p(np.array([0.001, -0.002, 0.0, 0.002, 0.001]), 0.01) < 0.05
    assert tost_p(np.array([0.05, 0.04, 0.06, 0.05]), 0.01) > 0.5
    assert math.isnan(tost_p(np.array([0.1]), 0.01))
    assert tost_p(np.array([0.002] * 4), 0.01) == 0.0 and tost_p(np.array([0.02] * 4), 0.01) == 1.0


def test_the_ci_is_the_student_t_interval() -> None:
    d = np.array([0.01, -0.02, 0.03, 0.0, 0.015])
    lo, hi = t_ci(d)
    want = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert math.isclose(lo, want[0], abs_tol=1e-12) and math.isclose(hi, want[1], abs_tol=1e-12)
    assert all(math.isnan(x) for x in t_ci(np.array([0.1])))


def test_the_minimum_detectable_difference_has_80_percent_power_in_simulation() -> None:
    """Simulated paired differences at the MDD are detected in 80% of experiments, at half of it far fewer."""
    n, sd, alpha = 8, 0.02, 0.05 / 4
    delta = mdd(n, sd, alpha)
    rng = np.random.default_rng(1)

    def power(true: float) -> float:
        d = rng.normal(true, sd, size=(20_000, n))
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
        return float((np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1)).mean())

    assert abs(power(delta) - 0.8) < 0.015
    assert power(delta / 2) < 0.4
    assert mdd(8, 0.02, 0.05) < delta  # a larger alpha (a smaller family) detects smaller differences
    assert math.isnan(mdd(1, 0.02, 0.05)) and math.isnan(mdd(5, 0.0, 0.05))


def test_verdicts_from_their_p_values() -> None:
    assert verdict_of(0.02, 0.001, 0.9, 0.05) == "better"
    assert verdict_of(-0.02, 0.001, 0.9, 0.05) == "worse"
    assert verdict_of(0.003, 0.01, 0.01, 0.05) == "equivalent"  # real but smaller than the margin
    assert verdict_of(0.003, 0.4, 0.3, 0.05) == "inconclusive"  # non-significance is not equivalence
    assert verdict_of(math.nan, math.nan, math.nan, 0.05) == "untested"
    assert list(holm(pd.Series([0.01, 0.04, 0.03, math.nan])).round(6)[:3]) == [0.03, 0.06, 0.06]


def _tests(rows: list[dict]) -> pd.DataFrame:
    base = dict(backbone="efficientnet_lite0", recipe="tuned", fraction=0.01, n_pairs=8, diff_std=0.01, p=0.5, reason="")
    return pd.DataFrame([{**base, **r} for r in rows])


def test_sentences_say_what_the_verdicts_say_and_no_more() -> None:
    plan = StatsPlan()
    tests = _tests(
        [
            dict(
                method="sft",
                baseline_method="finetune",
                family="primary",
                verdict="equivalent",
                diff_mean=0.002,
                ci_low=-0.004,
                ci_high=0.008,
                p_holm=0.6,
                p_tost_holm=0.01,
            ),
            dict(
                method="sft-mlp",
                baseline_method="finetune",
                family="primary",
                verdict="inconclusive",
                diff_mean=0.003,
                ci_low=-0.034,
                ci_high=0.04,
                p_holm=0.9,
                p_tost_holm=0.6,
            ),
            dict(
                method="sft-side",
                baseline_method="finetune",
                family="primary",
                verdict="worse",
                diff_mean=-0.03,
                ci_low=-0.04,
                ci_high=-0.02,
                p_holm=0.001,
                p_tost_holm=1.0,
            ),
            dict(
                method="lp_ft",
                baseline_method="finetune",
                family="secondary",
                verdict="better",
                diff_mean=0.05,
                ci_low=0.04,
                ci_high=0.06,
                p_holm=0.001,
                p_tost_holm=1.0,
            ),
        ]
    )
    df = pd.DataFrame({"backbone": ["efficientnet_lite0"], "resolution": [64]})
    text = sentences(tests, df, plan)
    first = text[0]
    assert first.startswith("Against `finetune` at 1% of the labels (efficientnet_lite0, 64 px): ")
    assert "`sft` is equivalent within ±1 point(s) (+0.20 points, 95% CI [-0.40, +0.80], TOST p (Holm) 0.010, 8 seeds)" in first
    assert "`sft-mlp` is inconclusive: neither a difference nor equivalence" in first and "[-3.40, +4.00]" in first
    assert "`sft-side` is worse (-3.00 points, 95% CI [-4.00, -2.00], p (Holm) 0.001, 8 seeds)" in first
    assert "lp_ft" not in first, "a secondary comparison is not part of the summary's claims"
    joined = " ".join(text)
    for overclaim in ("does not beat", "no difference", "same as", "matches"):
        assert overclaim not in joined
    assert any("correlated, not independent evidence" in s for s in text)  # sft, sft-mlp, sft-side, lp_ft share a probe
    assert any(s.startswith("Power of the primary family (3 tested comparisons") for s in text)
    assert any("declares no [stats]" in s for s in text)  # the plan was not read from a folder


def test_the_plan_is_read_from_config_toml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[stats]\nprimary = ["sft vs finetune"]\nmargin = 0.02\nalpha = 0.1\n')
    plan = read_plan(tmp_path)
    assert plan == StatsPlan(("sft vs finetune",), 0.02, 0.1, declared=True)
    assert plan.is_primary("sft", "finetune") and not plan.is_primary("sft-mlp", "finetune")
    assert StatsPlan().is_primary("sft-mlp-frozen", "lp_ft") and not StatsPlan().is_primary("lp_ft", "finetune")
    assert read_plan(tmp_path / "missing") == StatsPlan()


def test_family_power_uses_the_family_size() -> None:
    tests = _tests([dict(method=f"m{i}", baseline_method="finetune", family="primary", diff_std=0.02) for i in range(4)])
    (prim, sec) = family_power(tests, StatsPlan())
    assert (prim.m, prim.n_pairs, sec.m) == (4, 8, 0)
    assert prim.mdd == pytest.approx(mdd(8, 0.02, 0.05 / 4))


def test_a_ci_that_excludes_zero_beside_inconclusive_is_explained_and_named() -> None:
    """The 32 px report said `sft-mlp` against `lp_ft` at 1% was inconclusive beside a CI of [-1.58, -0.03]:
    true (Holm over 20 comparisons), but unexplained it reads as a contradiction."""
    plan = StatsPlan()
    row = dict(method="sft-mlp", baseline_method="lp_ft", family="primary", verdict="inconclusive", diff_mean=-0.008)
    tests = _tests([{**row, "ci_low": -0.0158, "ci_high": -0.0003, "p_holm": 0.43, "p_tost_holm": 0.2}])
    text = sentences(tests, pd.DataFrame({"backbone": ["efficientnet_lite0"], "resolution": [32]}), plan)
    reading = next(s for s in text if s.startswith("Each 95% CI is its comparison's own (unadjusted)"))
    assert "Holm-adjusted over the family's 1 tested comparison (better" in reading
    assert reading.endswith("Here: `sft-mlp` against `lp_ft` at 1% (p (Holm) 0.430).")
    tests = _tests([{**row, "ci_low": -0.03, "ci_high": 0.01, "p_holm": 0.43, "p_tost_holm": 0.2}])
    reading = next(s for s in sentences(tests, pd.DataFrame(), plan) if s.startswith("Each 95% CI"))
    assert "Here:" not in reading


def test_a_comparison_is_labelled_with_its_own_methods_resolution() -> None:
    """study64 keeps the article's model at its 32 px beside 64 px rows: a 64 px comparison is not '32/64 px'."""
    plan = StatsPlan()
    row = dict(method="sft", baseline_method="finetune", family="primary", verdict="inconclusive", diff_mean=0.0)
    tests = _tests([{**row, "ci_low": -0.03, "ci_high": 0.03, "p_holm": 0.9, "p_tost_holm": 0.3}])
    df = pd.DataFrame(
        {
            "backbone": ["efficientnet_lite0"] * 3,
            "method": ["sft", "finetune", "article_sft"],
            "resolution": [64, 64, 32],
        }
    )
    assert "(efficientnet_lite0, 64 px)" in sentences(tests, df, plan)[0]
