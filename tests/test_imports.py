"""No import closes a circle, between packages or between modules, lazy imports included.

Why: the README once said "no import cycles" while three existed (records <-> train.run,
perf.article <-> perf.measure, sweep.experiment <-> sweep.storage), hidden in function-level imports
(issue 21). scripts/import_graph.py draws the graph; this test holds the claim.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _graph_module():  # noqa: ANN202  (a script loaded as a module)
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("level", ["package", "module"])
def test_no_import_closes_a_cycle(level: str) -> None:
    g = _graph_module()
    graph = g.imports(REPO, level)
    assert len(graph) > 15
    assert g.back_edges(graph) == set()


def test_the_check_sees_a_lazy_cycle(tmp_path: Path) -> None:
    """The detector itself: a function-level import back up the tree is a cycle."""
    g = _graph_module()
    pkg = tmp_path / "bench"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from bench import b\n")
    (pkg / "b.py").write_text("def f():\n    from bench.a import x\n    return x\n")
    assert g.back_edges(g.imports(tmp_path, "package")) != set()


def test_run_config_and_records_import_no_torch() -> None:
    """The run's identity and the boundary records are torch-free (the report reads them without torch)."""
    code = "import sys, bench.run_config, bench.records, bench.history; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
