"""The compute table: what each cell's numbers cost (runs, step budget, augmentation, BN policy, search
mode, labelled images, seconds per final run), read from runs.csv as it is.

Why apart from tables.py: it needs no statistics and no verdicts, only the runs table, and it is a plain
DataFrame written as CSV and shown in report.html, not a format-free model with marks and notes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.report.schema import KEY, cell_key
from bench.report.text import frac_label

COMPUTE_FIELDS = (  # runs.csv column -> compute-table header; only those the runs table has are shown
    ("steps", "steps S"),
    ("probe_steps", "probe steps"),
    ("hp_epochs", "epochs (v1)"),
    ("hp_probe_epochs", "probe epochs (v1)"),
    ("augment", "augment"),
    ("bn", "BN"),
    ("search_mode", "search"),
    ("n_train", "labelled images"),
)


def _values(col: pd.Series) -> str:
    """A column's values within one cell, as text: one value, or "a-b" for numbers, or "a / b" otherwise."""
    v = col.dropna()
    v = v[v.astype(str).str.strip() != ""]
    if v.empty:
        return ""
    num = pd.to_numeric(v, errors="coerce")
    if num.notna().all() and v.map(lambda x: not isinstance(x, bool | np.bool_)).all():
        lo, hi = num.min(), num.max()
        show = (lambda x: f"{int(x)}") if (num == num.round()).all() else (lambda x: f"{x:g}")
        return show(lo) if lo == hi else f"{show(lo)}-{show(hi)}"
    return " / ".join(sorted({str(x).lower() if isinstance(x, bool | np.bool_) else str(x) for x in v}))


def compute_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: runs, the optimiser-step budget S and the head-only probe steps beside it (protocol v2; the
    epochs for protocol v1), whether training augmented, the BN policy, the search mode, and the mean
    seconds per final run: the compute a cell's numbers cost, next to the numbers."""
    fields = [(c, h) for c, h in COMPUTE_FIELDS if c in df.columns and df[c].notna().any()]
    rows = []
    for (b, r, m, f), g in df.groupby(KEY, sort=False):
        rec: dict[str, Any] = dict(backbone=b, recipe=r, method=m, fraction=frac_label(f), runs=len(g))
        for c, h in fields:
            rec[h] = _values(g[c])
        for c in ("train_seconds", "wall_seconds"):
            if c in g.columns:
                sec = pd.to_numeric(g[c], errors="coerce")
                rec[f"mean {c.replace('_', ' ')}"] = round(float(sec.mean()), 1) if sec.notna().any() else math.nan
        rows.append((cell_key(b, r, m, f), rec))
    return pd.DataFrame([rec for _, rec in sorted(rows, key=lambda kr: kr[0])])
