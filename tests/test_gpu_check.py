"""scripts/gpu_check.py, the GPU check of issue 18, run here: its sections run, write JSON and Markdown,
and a figure that needs a GPU says "skipped: no CUDA device" on a CPU instead of a number.

Why: the check is what a session lent a GPU runs first, with minutes of device time; a check that
breaks there wastes them. `--quick` runs every section on any machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
NO_CUDA = "skipped: no CUDA device"


def _load():  # noqa: ANN202 (the script as a module)
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_environment_and_syncs_sections_write_their_report(tmp_path: Path) -> None:
    """Two fast sections in-process: both ok, the syncs as documented, the reports written, and the
    GPU-only figures skipped with the reason on a machine without CUDA."""
    check = _load()
    assert check.main(["--quick", "--sections", "environment,syncs", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["environment", "syncs"] and all(s["status"] == "ok" for s in sections.values())
    assert sections["syncs"]["verdict"] == "as documented"
    env = {r["item"]: r["value"] for r in sections["environment"]["rows"]}
    assert env["torch"] == torch.__version__ and env["TF32 allowed (default: false)"] is False
    md = (tmp_path / "report.md").read_text()
    assert "## syncs" in md and "| steps counted |" in md
    if not torch.cuda.is_available():
        assert env["cuDNN"] == NO_CUDA and sections["syncs"]["rows"][0]["CUDA sync warnings in a step (max)"] == NO_CUDA


def test_bad_arguments_are_one_line_exit_2(tmp_path: Path) -> None:
    check = _load()
    assert check.main(["--sections", "nope", "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_the_quick_check_runs_every_section_on_this_machine(tmp_path: Path) -> None:
    """`python scripts/gpu_check.py --quick`: every section ok, in the order of the issue; on a CPU the
    CUDA-graph path, busy shares and peak memories are skipped with the reason, never a number."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sections = json.loads((tmp_path / "report.json").read_text())["sections"]
    assert list(sections) == ["environment", "syncs", "determinism", "compile", "throughput", "trial", "workers"]
    assert all(s["status"] == "ok" for s in sections.values()), {k: s["status"] for k, s in sections.items()}
    det = {r["flags"]: r for r in sections["determinism"]["rows"]}
    assert set(det) == {"default", "--deterministic"}
    assert [r["workers"] for r in sections["workers"]["rows"]] == [1, 2, 4]
    compiled = {r["path"]: r for r in sections["compile"]["rows"]}
    assert compiled["compiled (inductor)"]["graphs compiled"] <= 1
    if not torch.cuda.is_available():
        assert det["default"]["identical"] is True and det["--deterministic"]["identical"] is True  # a CPU is deterministic
        assert compiled["CUDA graphs (reduce-overhead)"]["images/s"] == NO_CUDA
        assert all(r["GPU busy share (suite)"] == NO_CUDA for r in sections["throughput"]["rows"])
    assert "# GPU check (--quick)" in (tmp_path / "report.md").read_text()
