"""Bad input and faults outside the grid: every one is one line on stderr and a non-zero exit,
nothing half-written (issue 9). Validation gaps of `[space]`, `[workers]`, seeds and storages;
bracketed text that Rich markup used to eat; runtime I/O errors (full disk, read-only folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

TINY = """
backbones = ["tiny"]
methods = ["linear_probe"]
fractions = [0.1]
seeds = 1
trials = 1
steps = 3
[search]
mode = "shared"
startup_trials = 1
pruner_startup_trials = 1
"""


def run_sweep(tmp_path: Path, synthetic_dir: Path, text: str | bytes, *extra: str):  # noqa: ANN201
    import cli

    cfg = tmp_path / "cfg" / "t.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    args = ["sweep", "--config", str(cfg), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "results")]
    return CliRunner().invoke(cli.app, [*args, "--quiet", "--no-report", *extra])


def one_line_error(result) -> str:  # noqa: ANN001
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


MARKUP = [
    ("space = 3\n", "[space] must be a table"),
    ("include = 3\n", "[[include]] must be an array of tables"),
    ("workers = 3\n", "[workers] must be a table"),
]


@pytest.mark.parametrize("prefix,message", MARKUP, ids=[m for _, m in MARKUP])
def test_bracketed_text_survives_in_error_messages(tmp_path: Path, synthetic_dir: Path, prefix: str, message: str) -> None:
    line = one_line_error(run_sweep(tmp_path, synthetic_dir, prefix + TINY))
    assert message in line
    assert not (tmp_path / "results").exists()
