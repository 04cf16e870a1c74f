"""End to end (issue 10 item 5): two real sweeps of the `tiny` backbone on synthetic data, the sweep's own report
step, `cli.py report` and `cli.py compare` on what they wrote, each table checked against runs.csv.

Why a real sweep: tests/test_report.py builds its runs tables by hand; here the columns, names and values the
sweep actually writes go through the report and compare, so a change on either side that breaks the other
(a renamed column, a changed study name, a cell key) fails here. The expected numbers are computed by this test
from runs.csv with pandas, not by bench.report.

Marked slow (about a minute on two busy cores): `pytest -m "not slow"` skips it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
KEY = ["backbone", "recipe", "method", "fraction"]
TABLES = ("accuracy", "efficiency", "sft_vs_baselines")

# Two experiments on the same grid (same cells, same seeds): b trains twice as many steps, so the two differ
# and compare has differences to report. Shared search, few trials: the point is the plumbing, not the numbers.
GRID = """
name = "{name}"
backbones = ["tiny"]
methods = ["finetune", "linear_probe", "sft"]  # sft starts from linear_probe's model
fractions = [0.1, 0.2]
seeds = 3
trials = 1
steps = {steps}
[search]
mode = "shared"
startup_trials = 1
pruner = "none"
"""

pytestmark = pytest.mark.slow


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in the repository, one thread, as a user runs it; fails the test on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"cli.py {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def sweep(tmp: Path, data: Path, results: Path, name: str, steps: int, *extra: str) -> Path:
    """One sweep of GRID under `results/name`; returns the experiment folder."""
    config = tmp / f"{name}.toml"
    config.write_text(GRID.format(name=name, steps=steps))
    cli("sweep", "--config", config, "--data-dir", data, "--results-dir", results, "--quiet", "--threads", "1", *extra)
    return results / name


def runs(exp: Path) -> pd.DataFrame:
    """runs.csv as the sweep wrote it."""
    return pd.read_csv(exp / "runs.csv")


def cell_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell, from the runs: n, mean and sample std of the test accuracy (pandas, not bench.report)."""
    return df.groupby(KEY)["test_accuracy"].agg(n="count", mean="mean", std="std")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> tuple[Path, Path, Path, dict[str, bytes]]:
    """Experiments a (reported by the sweep itself) and b (swept with --no-report) under one results folder,
    plus a's tables as the sweep's report step wrote them, before `cli.py report` rewrites them."""
    tmp = tmp_path_factory.mktemp("integration")
    results = tmp / "results"
    a = sweep(tmp, synthetic_dir, results, "a", 6)
    by_sweep = {p.name: p.read_bytes() for p in sorted((a / "tables").iterdir())}
    b = sweep(tmp, synthetic_dir, results, "b", 12, "--no-report")
    assert not (b / "report.html").exists(), "--no-report wrote a report"
    return results, a, b, by_sweep


def test_the_sweeps_own_report_step_writes_the_report(swept: tuple) -> None:
    _, a, _, by_sweep = swept
    assert (a / "report.html").is_file()
    expected = {f"{t}.{ext}" for t in TABLES for ext in ("md", "tex", "csv")} | {
        "significance.csv",
        "win_tie_loss.csv",
        "compute.csv",
    }
    assert expected <= set(by_sweep)
    assert {p.suffix for p in (a / "plots").iterdir()} == {".png", ".pdf"}


def test_cli_report_rebuilds_the_same_tables_and_they_match_the_runs(swept: tuple) -> None:
    results, a, b, by_sweep = swept
    cli("report", "--results-dir", results, "--experiment", "a")
    cli("report", "--results-dir", results, "--experiment", "b")
    # The sweep's report and `cli.py report` are one function over the same inputs: the same bytes.
    assert {name: (a / "tables" / name).read_bytes() for name in by_sweep} == by_sweep
    for exp in (a, b):
        assert (exp / "report.html").is_file()
        df = runs(exp)
        assert len(df) == 3 * 2 * 3  # methods x fractions x seeds, one tuned recipe
        want = cell_stats(df)
        acc = pd.read_csv(exp / "tables" / "accuracy.csv").set_index(KEY).sort_index()
        assert list(acc.index) == list(want.index)
        assert (acc["n"] == 3).all() and (want["n"] == 3).all()
        pd.testing.assert_series_equal(acc["accuracy_mean"], want["mean"], check_names=False, rtol=1e-12)
        pd.testing.assert_series_equal(acc["accuracy_std"], want["std"], check_names=False, rtol=1e-9)
        # The Markdown shows the same numbers, rounded once: "mean ± std (n=3)" in points.
        md = (exp / "tables" / "accuracy.md").read_text()
        for (_, _, method, fraction), row in want.iterrows():
            line = next(ln for ln in md.splitlines() if ln.startswith(f"| tiny | `{method}` |"))
            col = [c.strip() for c in line.strip("|").split("|")][2 + [0.1, 0.2].index(fraction)]
            shown = re.match(r"\**([\d.]+) ± ([\d.]+)\**†? \(n=(\d+)\)", col)
            assert shown, col
            assert shown.groups() == (f"{100 * row['mean']:.2f}", f"{100 * row['std']:.2f}", "3")
        # Every comparison with a baseline: the mean paired difference over the seeds both have, from the runs.
        sig = pd.read_csv(exp / "tables" / "significance.csv")
        assert sorted(zip(sig["method"], sig["baseline"], strict=True)) == sorted(
            [(m, f"{bm}/tuned") for m, bm in (("linear_probe", "finetune"), ("sft", "finetune"), ("sft", "linear_probe"))] * 2
        )
        acc_by = df.set_index([*KEY, "seed"])["test_accuracy"]
        for t in sig.itertuples(index=False):
            base_method, base_recipe = t.baseline.split("/")
            mine = acc_by.loc[(t.backbone, t.recipe, t.method, t.fraction)]
            base = acc_by.loc[(t.backbone, base_recipe, base_method, t.fraction)]
            assert t.n_pairs == 3 and t.seeds == "0 1 2"
            assert t.diff_mean == pytest.approx((mine - base).mean(), rel=1e-12, abs=1e-15)


def test_cli_compare_reports_the_runs_differences(swept: tuple, tmp_path: Path) -> None:
    results, a, b, _ = swept
    out = tmp_path / "a_vs_b.md"
    cli("compare", "a", "b", "--results-dir", results, "--output", out)
    want_a, want_b = cell_stats(runs(a)), cell_stats(runs(b))
    head = "| backbone | method | recipe | fraction | A acc. % | B acc. % | B − A | test | p | p (Holm) |"
    lines = out.read_text().splitlines()
    rows = lines[lines.index(head) + 2 :]
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in rows[: rows.index("")]]
    assert len(rows) == len(want_a) == 6
    for bb, method, recipe, fraction, acc_a, acc_b, diff, test, *_ in rows:
        key = (bb, recipe, method, float(fraction.rstrip("%")) / 100)
        ma, mb = want_a.loc[key, "mean"], want_b.loc[key, "mean"]
        assert acc_a == f"{100 * ma:.2f} (n=3)" and acc_b == f"{100 * mb:.2f} (n=3)"
        assert diff.split()[0] == f"{100 * (mb - ma):+.2f}"
        assert test.startswith("paired (3)")  # the same seeds on both sides: paired over all three
    assert lines[0] == "# results/a vs results/b"
    assert not any(ln.startswith("Only in") for ln in lines)  # the same grid: every cell on both sides
