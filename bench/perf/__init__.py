"""How fast is one training, and where does the time go? (`python cli.py perf`)

A grid is hundreds of trainings, so the cost of one training decides which questions
a user can afford. For each case (backbone at a resolution) this measures, in one
process, on the same model and machine:

    a  ceiling    forward + backward + optimiser step on synthetic float tensors already
                  in memory, for every memory format x precision; and forward only
    b  suite      `fit` (finetune) on real CIFAR-10: indexing, augmentation, the
                  input adapter, loss and accuracy bookkeeping included; timed per history
                  interval (the engine's unit of bookkeeping: one host sync per interval)
    c  article    the article's pipeline: torchvision transforms on PIL images,
                  DataLoader(num_workers=2), batch 100, fp32, default memory format
    d  frozen     one frozen-backbone trial (sft-mlp-frozen: a head trained on cached
                  features after its linear probe; protocol v2 also timed linear_probe) with the
                  feature cache (cold: first trial; warm: any later trial of the cell)
                  against the same trial recomputing the backbone on every step
    e  eval       `predict` on the test images, against (a)'s forward-only rate

Figures are ratios first (these machines are shared and noisy), with the load average
at measurement time beside them. Every measurement warms up first (oneDNN and cuDNN
pick and build kernels on the first calls) and then times whole steps between device
syncs, stopping after `steps` steps or `max_seconds`, whichever comes first.

One idea per module:

    settings.py     PerfCase, PerfSettings: what is measured, for how long
    machine.py      the machine and its load
    rows.py         PerfRow and its typed identity RowId (perf.csv's columns)
    measure.py      Bench: (a), (b), (d), (e) of one case; article.py: (c)
    interleave.py   the compared pairs measured in alternation: median ratio, range, trusted or not
    summary.py      the ratios against the issue's targets
    output.py       perf.csv, perf_summary.csv, perf.md, perf.json (and perf.csv read back)
    sweep_cost.py   what a finished sweep cost (`--sweep`)
    projection.py   what a grid will cost at the measured rates (`--project`)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.data import Cifar10
from bench.perf.interleave import SPREAD_LIMIT, Interleaved, interleave
from bench.perf.machine import cpu_flags, loadavg, machine
from bench.perf.measure import Bench, alternative, measure_case, timed
from bench.perf.output import check_writable, markdown, md_table, read_rows, to_csv, write_outputs
from bench.perf.projection import (
    ASSUMED_GPU_RATES,
    CellCost,
    GridProjection,
    GridRun,
    grid_runs,
    project_grid,
    projection_markdown,
)
from bench.perf.rows import COLUMNS, PerfRow, RowId, measured
from bench.perf.settings import (
    ARTICLE_BATCH,
    ARTICLE_WORKERS,
    DEFAULT_CASES,
    FORMATS,
    FORWARD_BATCHES,
    PRECISIONS,
    PerfCase,
    PerfSettings,
    parse_cases,
)
from bench.perf.summary import SUMMARY_COLUMNS, TARGETS, Ratio, summarise, summarise_case
from bench.perf.sweep_cost import PROTOCOLS, SweepCost, sweep_cost, sweep_markdown, sweep_protocol
from bench.train.caches import Caches


@dataclass(frozen=True)
class PerfResult:
    """What one perf run measured and wrote: the machine (perf.json's `machine`, its settings and loads),
    every measured row, the ratios against the targets, and the files written."""

    info: dict[str, Any]
    rows: list[PerfRow]
    summary: list[dict]
    files: list[Path]


def run_perf(
    cases: list[PerfCase],
    data: Cifar10,
    device: torch.device,
    settings: PerfSettings,
    out: Path,
    log: Callable[[str], None] = print,
    projection: Callable[[list[PerfRow]], str] | None = None,
    command: str = "",
    caches: Caches | None = None,
) -> PerfResult:
    """Measure every case, summarise, and write the four outputs; what was measured and written (PerfResult).

    `caches`: the feature and probe caches the frozen trials (d) measure cold and warm (the
    command passes `Caches.from_env()`); default: fresh ones. cuDNN's kernel search is set by
    the entry point (bench/cli/__init__.py, configure_runtime), not here."""
    caches = Caches() if caches is None else caches
    info = machine(device, command)
    info["settings"] = {k: v for k, v in asdict(settings).items()}
    rows: list[PerfRow] = []
    pairs: list[Interleaved] = []
    for case in cases:
        log(f"-- {case.name} (load {loadavg():.2f})")
        case_rows, case_pairs = measure_case(case, data, device, settings, log, caches)
        rows += case_rows
        pairs += case_pairs
    info["loadavg_end"] = loadavg()
    summary = summarise(rows, device.type, pairs)
    text = projection(rows) if projection else ""
    files = write_outputs(out, info, rows, summary, text)
    return PerfResult(info, rows, summary, files)


__all__ = [
    "ARTICLE_BATCH",
    "ARTICLE_WORKERS",
    "ASSUMED_GPU_RATES",
    "COLUMNS",
    "DEFAULT_CASES",
    "FORMATS",
    "FORWARD_BATCHES",
    "PRECISIONS",
    "PROTOCOLS",
    "SUMMARY_COLUMNS",
    "TARGETS",
    "Bench",
    "CellCost",
    "GridProjection",
    "PerfResult",
    "Interleaved",
    "Ratio",
    "SPREAD_LIMIT",
    "interleave",
    "GridRun",
    "PerfCase",
    "PerfRow",
    "PerfSettings",
    "RowId",
    "SweepCost",
    "alternative",
    "check_writable",
    "cpu_flags",
    "grid_runs",
    "loadavg",
    "machine",
    "markdown",
    "md_table",
    "measure_case",
    "measured",
    "parse_cases",
    "project_grid",
    "projection_markdown",
    "read_rows",
    "run_perf",
    "summarise",
    "summarise_case",
    "sweep_cost",
    "sweep_markdown",
    "sweep_protocol",
    "timed",
    "to_csv",
    "write_outputs",
]
