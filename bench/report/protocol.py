"""Which protocol produced a runs table, read from its columns so that old result folders stay readable.

Why it matters: results of protocol v1 (budgets in epochs, BatchNorm in batch statistics) and v2 (optimiser-step
budgets, one BatchNorm policy, per-seed or shared search) are not comparable, so every table, report.html and
`compare` state the protocol, the search mode and any run whose step budget fell below the protocol's floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bench.report.text import frac_label, pct

DEFAULT_MIN_STEPS = 500  # the protocol's floor on the optimiser-step budget (methods.md, version 2)
SEARCH_MODE_TEXT = {
    "pooled": "pooled search (protocol v3): one choice per cell, each candidate scored by its mean validation accuracy "
    "over the first seeds' subsets, then retrained for every seed; the spread over seeds leaves selection noise out",
    "per_seed": "per-seed search: the spread over seeds includes selection noise",
    "shared": "shared search: seed 0's hyperparameters reused for every seed; the spread leaves selection noise out",
}


@dataclass
class ProtocolInfo:
    """What protocol produced a runs table, read from its columns so that old folders stay readable:
    no `protocol` column means protocol v1 (budgets in epochs, one shared search, BatchNorm in batch
    statistics whenever the backbone trained). Every table's notes and report.html say the version,
    the search mode and any run whose step budget fell below the protocol's floor."""

    versions: dict[int, int]  # protocol version -> number of runs
    search_modes: dict[str, int]  # "per_seed" / "shared" -> runs (searched recipes only)
    unsearched: int  # runs with no search (the seed recipe: search_mode "")
    short: list[tuple[int, int, int]]  # (steps, floor, runs) below the floor
    n_runs: int
    has_steps: bool
    resolutions: dict[int, list[str]] = field(default_factory=dict)  # px -> the "method (recipe)" rows run at it
    at_chance: list[str] = field(default_factory=list)  # final runs that ended at chance level, named

    def chance_line(self) -> str | None:
        """The final runs whose test accuracy is at chance (a collapsed run: one class predicted, or a diverged
        loss), named. Why say it: such a seed stays in its cell's mean and in every paired comparison, as the
        protocol has it, and a reader of a mean ± sd must be able to see that one run, not a spread, made it."""
        if not self.at_chance:
            return None
        return (
            f"{len(self.at_chance)} final run(s) ended at or below chance level (test accuracy at most 1 point above "
            f"1 / classes): {'; '.join(self.at_chance)}. They count in their cells' means and in the paired comparisons."
        )

    def resolution_line(self) -> str | None:
        """The input resolution, stated (protocol v3: it is part of the question), with the rows that differ from
        the most common one named: a study keeps the article's model at its own 32 px beside 64 px rows."""
        if not self.resolutions:
            return None
        by_size = sorted(self.resolutions.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        main, rest = by_size[0][0], by_size[1:]
        if not rest:
            return f"Input resolution: {main} px, every run."
        others = "; ".join(f"{', '.join(rows)} at {px} px" for px, rows in rest)
        return f"Input resolution: {main} px, except {others}."

    @property
    def v1(self) -> bool:
        """Whether any run predates protocol version 2."""
        return 1 in self.versions

    @property
    def label(self) -> str:
        """The protocol as a label: "protocol v2", or "mixed protocols (v1: n runs, v2: m runs)"."""
        if len(self.versions) == 1:
            return f"protocol v{next(iter(self.versions))}"
        return "mixed protocols (" + ", ".join(f"v{v}: {n} runs" for v, n in sorted(self.versions.items())) + ")"

    @property
    def step_unit(self) -> str:
        """What the x axis of a trial's intermediate values counts: optimiser steps from v2 on."""
        return "epoch" if self.versions and max(self.versions) < 2 else "step"

    def search_label(self) -> str:
        """How the hyperparameters were searched, and so what the spread over seeds includes."""
        modes = sorted(self.search_modes)
        if not modes:
            if self.v1:
                return (
                    "shared search (protocol v1): the first seed's hyperparameters reused for every seed; the spread "
                    "leaves selection noise out"
                )
            return "no search recorded (fixed hyperparameters only)"
        if len(modes) == 1:
            return SEARCH_MODE_TEXT.get(modes[0], f"search mode '{modes[0]}'")
        return "mixed search modes: " + "; ".join(f"{SEARCH_MODE_TEXT.get(m, m)} ({self.search_modes[m]} runs)" for m in modes)

    def short_lines(self) -> list[str]:
        """One line per step budget below the protocol's floor: such runs are not the protocol's runs."""
        return [
            f"protocol minimum not met: {steps} steps < {floor} ({n} of {self.n_runs} runs)" for steps, floor, n in self.short
        ]

    def lines(self) -> list[str]:
        """The protocol's notes, as every table and report.html states them."""
        if self.v1 and len(self.versions) == 1:
            head = (
                "Protocol v1 (results written before protocol version 2 of methods.md): budgets in epochs, "
                "BatchNorm in batch-statistics mode whenever the backbone trained; not comparable with protocol-v2 "
                "results."
            )
        elif self.v1:
            head = f"{self.label[0].upper()}{self.label[1:]}: rows from different protocols are not comparable."
        elif max(self.versions) >= 3:
            head = (
                f"Protocol v{max(self.versions)}: step budgets, one BatchNorm policy and one search space for every method; "
                "the linear probe (and the start of lp_ft and every sft*) a converged logistic regression, its L2 strength "
                "cross-validated; every training batch full."
            )
        else:
            head = f"Protocol v{max(self.versions)}: step budgets, one BatchNorm policy and one search space for every method."
        out = [head, f"Search: {self.search_label()}."]
        if self.unsearched and self.search_modes:
            out.append(
                f"{self.unsearched} run(s) have no search: a fixed recipe (defaults, article), or the linear probe, whose "
                "one setting is cross-validated inside its fit (protocol v3)."
            )
        extra = [line for line in (self.resolution_line(), self.chance_line()) if line]
        return out + extra + self.short_lines()


def protocol_info(df: pd.DataFrame) -> ProtocolInfo:
    """Read the protocol columns of a runs table (absent columns: protocol v1, nothing more known)."""
    n = len(df)
    if "protocol" in df.columns:
        ver = pd.to_numeric(df["protocol"], errors="coerce").fillna(1).astype(int)
    else:
        ver = pd.Series(1, index=df.index)
    versions = {int(v): int(c) for v, c in ver.value_counts().sort_index().items()}
    modes: dict[str, int] = {}
    unsearched = 0
    if "search_mode" in df.columns:
        sm = df["search_mode"].fillna("").astype(str).str.strip()
        unsearched = int((sm == "").sum())
        modes = {str(m): int(c) for m, c in sm[sm != ""].value_counts().sort_index().items()}
    short: list[tuple[int, int, int]] = []
    has_steps = "steps" in df.columns and pd.to_numeric(df["steps"], errors="coerce").notna().any()
    if has_steps:
        steps = pd.to_numeric(df["steps"], errors="coerce")
        floor = (
            pd.to_numeric(df["min_steps"], errors="coerce").fillna(DEFAULT_MIN_STEPS)
            if "min_steps" in df.columns
            else pd.Series(DEFAULT_MIN_STEPS, index=df.index)
        )
        low = steps.notna() & (steps < floor)
        if low.any():
            pairs = pd.DataFrame({"steps": steps[low].astype(int), "floor": floor[low].astype(int)})
            for (st_, fl), c in pairs.value_counts().sort_index().items():
                short.append((int(st_), int(fl), int(c)))
    return ProtocolInfo(versions, modes, unsearched, short, n, bool(has_steps), _resolutions(df), _at_chance(df))


def _at_chance(df: pd.DataFrame) -> list[str]:
    """The final runs at chance level, as "`method` (recipe) at 1%, seed 1 (backbone): 10.00%"."""
    if "test_accuracy" not in df.columns or not len(df):
        return []
    classes = sum(c.startswith("acc_") for c in df.columns) or 10  # per-class columns, else CIFAR-10's
    acc = pd.to_numeric(df["test_accuracy"], errors="coerce")
    out = []
    for _, r in df[acc <= 1 / classes + 0.01].iterrows():
        recipe = f" ({r['recipe']})" if "recipe" in df.columns else ""
        where = f"{frac_label(float(r['fraction']))}, seed {r['seed']}" if {"fraction", "seed"} <= set(df.columns) else ""
        out.append(f"`{r.get('method', '?')}`{recipe} at {where} ({r.get('backbone', '?')}): {pct(float(r['test_accuracy']))}%")
    return out


def _resolutions(df: pd.DataFrame) -> dict[int, list[str]]:
    """Each recorded input resolution and the rows ("`method` (recipe)") run at it, in table order."""
    if "resolution" not in df.columns or "method" not in df.columns:
        return {}
    px = pd.to_numeric(df["resolution"], errors="coerce")
    recipe = df["recipe"].astype(str) if "recipe" in df.columns else pd.Series("", index=df.index)
    out: dict[int, list[str]] = {}
    for r, m, rc in zip(px, df["method"].astype(str), recipe, strict=True):
        if pd.isna(r):
            continue
        row = f"`{m}` ({rc})" if rc else f"`{m}`"
        rows = out.setdefault(int(r), [])
        if row not in rows:
            rows.append(row)
    return out
