"""Provenance: what produced the results (from runs.csv, one run record's versions, the search studies) and
what built the report (time, git commit, package versions).

Why in every report: numbers without the code, device and versions that produced them cannot be reproduced or
compared; report.html prints these rows under "Provenance". The "report built" row is the one part of a report
that differs between two builds from the same inputs.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from bench.cifar_files import COPY_TEXT, copy_of
from bench.report.load import StudyInfo, search_seconds


def _git_commit() -> str:
    """The commit of the code building the report ("unknown" outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha or "unknown"


def _data_copy(experiment_dir: Path, df: pd.DataFrame) -> str:
    """Which copy of CIFAR-10 the runs used, as they recorded it: runs.csv's data_copy (protocol v3), else the
    data fingerprint in the runs' records (every protocol), compared with the official files' fingerprint."""
    copies: dict[str, int] = {}
    if "data_copy" in df.columns and df["data_copy"].fillna("").astype(str).str.strip().ne("").all():
        copies = {str(k): int(v) for k, v in df["data_copy"].astype(str).value_counts().items()}
        source = "recorded by every run"
    else:
        rec_dir = Path(experiment_dir) / "records"
        for rid in df["run_id"].dropna().astype(str) if "run_id" in df.columns else []:
            try:
                fp = json.loads((rec_dir / f"{rid}.json").read_text()).get("config", {}).get("data", "")
            except (OSError, json.JSONDecodeError):
                fp = ""
            kind = copy_of(str(fp)) or "not recorded"
            copies[kind] = copies.get(kind, 0) + 1
        source = "from the data fingerprint in each run's record"
    if not copies:
        return "not recorded"
    parts = [f"{COPY_TEXT.get(k, k)}" + (f" ({n} runs)" if len(copies) > 1 else "") for k, n in sorted(copies.items())]
    return "; ".join(parts) + f" [{source}]"


def provenance(experiment_dir: Path, df: pd.DataFrame, studies: list[StudyInfo]) -> list[tuple[str, str]]:
    """What produced these results (from runs.csv, one record's versions, the storage) and what built the report."""

    def uniq(col: str) -> str:
        """A column's values over the runs: one value, or each with its run count where runs disagree."""
        if col not in df.columns:
            return "not recorded"
        vals = df[col].dropna().astype(str)
        vals = vals[vals != ""]
        c = vals.value_counts()
        return ", ".join(f"{v} ({n} runs)" if len(c) > 1 else v for v, n in c.items()) or "not recorded"

    items = [
        ("data copy", _data_copy(experiment_dir, df)),
        ("input resolution (px)", uniq("resolution")),
        ("git commit of the runs", uniq("git_commit")),
        ("device", uniq("device")),
        ("device type", uniq("device_type")),
        ("precision", uniq("precision")),
        ("torch", uniq("torch_version")),
    ]
    rec_dir = Path(experiment_dir) / "records"
    if "run_id" in df.columns:
        for rid in df["run_id"].dropna().astype(str):
            path = rec_dir / f"{rid}.json"
            if path.is_file():
                try:
                    prov = json.loads(path.read_text()).get("provenance", {})
                except (OSError, json.JSONDecodeError):
                    continue
                vers = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v)
                items.append(("python / packages (first run's record)", f"{prov.get('python', '?')}; {vers}"))
                break
    if "finished_at" in df.columns and df["finished_at"].notna().any():
        fa = df["finished_at"].dropna().astype(str)
        items.append(("runs finished", f"{fa.min()} … {fa.max()}"))
    final = float(df["wall_seconds"].sum()) if "wall_seconds" in df.columns else math.nan
    search = search_seconds(studies)
    total = (0 if math.isnan(final) else final) + search
    items.append(
        (
            "total compute (wall)",
            f"{total / 3600:.2f} h = final runs {final / 3600:.2f} h ({len(df)} runs) + search trials {search / 3600:.2f} h "
            f"({sum(len(s.trials) for s in studies)} trials in {len(studies)} studies)",
        )
    )
    vers = []
    for pkg in ("pandas", "scipy", "seaborn", "matplotlib", "optuna"):
        try:
            vers.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    items.append(
        (
            "report built",
            f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}, commit {_git_commit()}, {', '.join(vers)}",
        )
    )
    return items
