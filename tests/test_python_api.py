"""The Python API (docs/python-api.md): `bench.sweep.run` and `bench.report.write`, as a notebook calls them.

Why the example runs as a subprocess, exactly as written: docs/examples/api_quick.py is what a reader copies,
so it must not drift from the API; only the environment points it at synthetic data and a temporary folder.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_python_api_example_runs_as_written(tmp_path: Path, synthetic_dir: Path) -> None:
    results = tmp_path / "results"
    env = {
        **os.environ,
        "SFT_BENCH_EXAMPLE_RESULTS": str(results),
        "SFT_BENCH_EXAMPLE_DATA": str(synthetic_dir),
        "SFT_BENCH_EXAMPLE_STEPS": "3",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    script = ROOT / "docs" / "examples" / "api_quick.py"
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "exit code 0: 4 of 4 final runs" in r.stdout, r.stdout
    out = results / "api-quick"
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((row["method"], row["seed"], row["steps"]) for row in rows) == [
        ("finetune", "0", "3"),
        ("finetune", "1", "3"),
        ("linear_probe", "0", "0"),  # a probe takes no optimiser steps
        ("linear_probe", "1", "0"),
    ]
    assert (out / "report.html").is_file() and f"open {out / 'report.html'}" in r.stdout


def test_run_returns_typed_results_and_refuses_like_the_cli(tmp_path: Path, synthetic_dir: Path) -> None:
    """A dry run: the events the CLI prints, as data; bad input is the CLI's UserError, nothing written."""
    import bench.sweep
    from bench.registry import UserError
    from bench.sweep.events import DryRun, Planned, Projected, Projecting

    grid = ROOT / "docs" / "examples" / "tiny.toml"
    events: list[object] = []
    result = bench.sweep.run(grid, results_dir=tmp_path, data_dir=synthetic_dir, steps=3, dry_run=True, on_event=events.append)
    assert [type(e) for e in events] == [Planned, Projecting, Projected, DryRun]
    assert result.events == events and result.code == 0 and result.status is None and not result.complete
    assert result.projection is not None and result.projection.finals == 4
    dry = events[-1]
    assert isinstance(dry, DryRun) and [b.steps for b in dry.budgets if not b.probe] == [3]
    assert result.runs_csv == tmp_path / "api-quick" / "runs.csv" and not (tmp_path / "api-quick").exists()
    with pytest.raises(UserError, match="--fractions"):
        bench.sweep.run(grid, results_dir=tmp_path, data_dir=synthetic_dir, fractions="2.0", dry_run=True)
    exp = bench.sweep.load(grid, None, results_dir=tmp_path)
    with pytest.raises(UserError, match="dataclasses.replace"):
        bench.sweep.run(exp, steps=3)
