"""What a grid's storage is turned into: runs.csv, the records/ files, the summary rows.

Why from the storage, always: any number of processes on any number of machines finish final
runs; the storage holds every finished record (the finals study's trials), so runs.csv and
records/ can be rewritten from it at any time and by anyone, and come out the same.
"""

from __future__ import annotations

import csv
import fcntl
import math
from pathlib import Path
from typing import Any

from bench.files import atomic_write
from bench.records import CellSummary, GridStatus, RunsRow, runs_columns
from bench.sweep.journal import open_nofollow
from bench.sweep.status import Grid
from bench.train.run import write_record

RUNS_CSV = "runs.csv"


def collect_rows(grid: Grid, status: GridStatus | None = None) -> list[RunsRow]:
    """runs.csv's rows: every finished final run, cell by cell, seed by seed."""
    status = status or grid.survey()
    rows = []
    for cs in status.cells:
        for seed in sorted(cs.finals):
            rows.append(RunsRow.from_record(cs.finals[seed]))
    return rows


def export_runs(grid: Grid) -> Path:
    """Rewrite R/E/runs.csv from the storage (under a file lock, so the last writer has the latest
    view), and restore any record file missing here (runs finished on another machine)."""
    out = grid.exp.out_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUNS_CSV
    with open_nofollow(out / ".runs.csv.lock") as lock:  # a link planted there is never followed
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            status = grid.survey()  # inside the lock: the latest state, whatever the caller saw
            rows = collect_rows(grid, status)
            cols = runs_columns(grid.data.classes)

            def write(f: Any) -> None:
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow(r.csv_dict())

            atomic_write(path, write, mode="w")
            restore_records(out, status)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def restore_records(out: Path, status: GridStatus) -> None:
    """Write records/RUN_ID.json for every finished final run that has none here (finished on
    another machine, or the folder was copied without it)."""
    for cs in status.cells:
        for rec in cs.finals.values():
            p = out / "records" / f"{rec.run_id}.json"
            if not p.exists():
                write_record(p, rec)


def summary_rows(status: GridStatus) -> list[CellSummary]:
    """One row per cell: what the terminal summary and the live table show."""
    out = []
    for cs in status.cells:
        accs = cs.accuracies
        n = len(accs)
        mean = sum(accs) / n if n else None
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else (0.0 if n == 1 else None)
        out.append(
            CellSummary(
                cell=cs.cell,
                n=n,
                mean=mean,
                std=std,
                best_val=cs.best_value,
                trials=f"{min(cs.trials_done, cs.trials_budget)}/{cs.trials_budget}" if cs.trials_budget else "-",
                pruned=cs.trials_pruned,
                diverged=cs.trials_diverged + len(cs.diverged),
                failed=cs.failed,
                hparams=cs.best_hparams,
            )
        )
    return out


def hparams_brief(hp: dict | None) -> str:
    """The searched hyperparameters in a few characters, for tables."""
    return " ".join(hparams_entries(hp))


def hparams_entries(hp: dict | None) -> list[str]:
    """The searched hyperparameters as short entries ("adamw", "lr 0.001", "bn frozen"), for tables that
    fold between entries, never inside one."""
    if not hp:
        return []
    short = {
        "lr": "lr",
        "weight_decay": "wd",
        "label_smoothing": "ls",
        "warmup": "wu",
        "backbone_lr_mult": "mult",
        "bn": "bn",
        "branch_width": "width",
    }
    parts = [str(hp["optimizer"])] if "optimizer" in hp else []
    for k, name in short.items():
        if k in hp:
            v = hp[k]
            parts.append(f"{name} {v:.2g}" if isinstance(v, float) else f"{name} {v}")
    return parts
