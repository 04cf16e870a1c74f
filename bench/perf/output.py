"""What a perf run writes: perf.csv, perf_summary.csv, perf.md and perf.json, each whole or not at
all; and perf.csv read back (to project a grid from an earlier measurement)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from bench.files import atomic_write
from bench.perf.interleave import SPREAD_LIMIT
from bench.perf.rows import COLUMNS, PerfRow
from bench.perf.summary import SUMMARY_COLUMNS, Ratio
from bench.registry import UserError
from bench.registry import check_writable as registry_check_writable


def to_csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    """CSV text of dict rows with exactly `columns` (extra keys are left out)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def md_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    """A Markdown table of dict rows; floats to 3 significant digits below 10, whole numbers above."""

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown(info: dict, rows: list[PerfRow], summary: list[Ratio], projection: str = "") -> str:
    """perf.md: the machine and command, the ratios against their targets, every measurement, the projection."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    parts = [
        "# sft-bench perf",
        "",
        f"- command: `{info['command']}`",
        f"- machine: {info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads; "
        f"bf16 ISA: {info['cpu_bf16']}); "
        f"GPU: {info['gpu']}; device: {info['device']}",
        f"- versions: Python {info['python']}, {versions}; git {info['git_commit']}",
        f"- started {info['started_at']}; 1-minute load average {info['loadavg_start']:.2f} at start, "
        f"{info.get('loadavg_end', float('nan')):.2f} at end (per row below: `loadavg_1m`)",
        "",
        "## Ratios and targets",
        "",
        md_table([r.as_dict() for r in summary], SUMMARY_COLUMNS),
        "",
        f"`low`-`high`: the range of the per-round ratios when the two sides were measured in alternation "
        f"(`rounds` rounds, A B then B A ...); `untrusted`: that range is wider than {100 * SPREAD_LIMIT:.0f}% of "
        "the median, so the figure is weather, not a result.",
        "",
        "## Measurements",
        "",
        md_table([r.as_dict() for r in rows], COLUMNS),
        "",
    ]
    if projection:
        parts += [projection, ""]
    return "\n".join(parts)


def write_outputs(out: Path, info: dict, rows: list[PerfRow], summary: list[Ratio], projection: str = "") -> list[Path]:
    """perf.csv (every measurement), perf_summary.csv (ratios), perf.md, perf.json; each written whole or not at all."""
    out = Path(out)
    table = [r.as_dict() for r in rows]
    ratios = [r.as_dict() for r in summary]
    files = {
        out / "perf.csv": to_csv(table, COLUMNS),
        out / "perf_summary.csv": to_csv(ratios, SUMMARY_COLUMNS),
        out / "perf.md": markdown(info, rows, summary, projection),
        out / "perf.json": json.dumps({"machine": info, "rows": table, "summary": ratios}, indent=2, default=str),
    }
    for path, text in files.items():
        atomic_write(path, lambda f, text=text: f.write(text), mode="w")
    return list(files)


def check_writable(folder: Path) -> None:
    """Refuse an --out folder that could not be written, before minutes of measuring."""
    registry_check_writable(folder, option="--out")


def read_rows(path: Path) -> list[PerfRow]:
    """A perf.csv back into rows (numbers as numbers)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = {"case", "path", "images_per_second"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise UserError(f"{path} is not a perf.csv (no rows, or no column {sorted(missing)})")
    return [PerfRow.from_dict(r) for r in rows]
