"""`compare(a, b)`: two experiments side by side, per common cell B − A and whether it is significant.

Why paired where possible: the same seed draws the same labelled subset on both sides, so a paired test over
the shared seeds removes the subset's share of the variance; cells without 2 shared seeds fall back to an
unpaired test, and the notes say which test each cell got and how the two sides' protocols differ.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.registry import UserError
from bench.report.load import load_runs
from bench.report.protocol import ProtocolInfo, protocol_info
from bench.report.schema import KEY, METRIC, TEST_NAMES, row_sort_key
from bench.report.stats import (
    check_test_args,
    holm,
    mark_of,
    pair_test,
    rank_sum_floor,
    signed_rank_floor,
    wilcoxon_min_seeds,
)
from bench.report.text import DOWN, UP, fmt_p, frac_label, pct, points


@dataclass
class CompareResult:
    """Two experiments compared: one row per common cell in `frame` (means, B − A, test, p, Holm, mark), the
    cells only one side has, both sides' provenance and protocols; rendered as Markdown or table rows."""

    a: Path
    b: Path
    label_a: str
    label_b: str
    frame: pd.DataFrame
    only_a: list[str]
    only_b: list[str]
    provenance: list[tuple[str, str, str]]
    test: str
    alpha: float
    protocol_a: ProtocolInfo | None = None
    protocol_b: ProtocolInfo | None = None

    def protocol_notes(self) -> list[str]:
        """What differs between the two sides' protocols: a v1/v2 comparison measures the change of protocol
        (BatchNorm policy, step budgets, search) as much as anything, and says so."""
        pa, pb = self.protocol_a, self.protocol_b
        if pa is None or pb is None:
            return []
        out = []
        if pa.versions != pb.versions:
            out.append(
                f"A is {pa.label} and B is {pb.label}: the protocols differ (budgets in epochs vs optimiser steps, "
                "BatchNorm policy, search), so B − A measures the change of protocol as much as any change of the "
                "methods; not a like-for-like comparison."
            )
        if pa.search_label() != pb.search_label():
            out.append(f"Search differs: A: {pa.search_label()}; B: {pb.search_label()}.")
        for side, p in (("A", pa), ("B", pb)):
            out += [f"{side}: {line}" for line in p.short_lines()]
        return out

    def display_rows(self) -> list[list[str]]:
        """The rows as text, in the order of HEAD: what the CLI's table and the Markdown file show."""
        out = []
        for r in self.frame.to_dict("records"):
            mk = {"better": f" {UP}", "worse": f" {DOWN}"}.get(r["mark"], "")
            out.append(
                [
                    r["backbone"],
                    r["method"],
                    r["recipe"],
                    frac_label(r["fraction"]),
                    f"{pct(r['mean_a'])} (n={r['n_a']})",
                    f"{pct(r['mean_b'])} (n={r['n_b']})",
                    f"{points(r['diff'])}{mk}",
                    r["kind"],
                    fmt_p(r["p"]),
                    fmt_p(r["p_holm"]),
                ]
            )
        return out

    HEAD = ("backbone", "method", "recipe", "fraction", "A acc. %", "B acc. %", "B − A", "test", "p", "p (Holm)")

    def notes(self) -> list[str]:
        """How to read the comparison: sides, units, marks, which test a cell got, what only one side has."""
        n = int(np.isfinite(self.frame["p"]).sum())
        marks = (
            f"{UP}/{DOWN}: B significantly higher/lower (Holm over {n} tested cells, α = {self.alpha:g})."
            if n
            else f"No {UP}/{DOWN}: no common cell has the seeds a test needs (see below), so none is tested."
        )
        out = [
            f"A = {self.label_a}, B = {self.label_b}. Accuracy: mean test accuracy (%) over seeds. B − A in points; {marks}",
            f"Test per cell: paired ({TEST_NAMES[self.test]}) over the seeds both sides share (same seed = same labelled "
            "subset) when there are at least 2; otherwise unpaired (Welch's t-test or Mann-Whitney U) when each side "
            "has at least 2 seeds; otherwise none.",
        ]
        if self.only_a:
            out.append(f"Only in A ({len(self.only_a)}): {', '.join(self.only_a)}.")
        if self.only_b:
            out.append(f"Only in B ({len(self.only_b)}): {', '.join(self.only_b)}.")
        return out + self.protocol_notes()

    def markdown(self) -> str:
        """The comparison as a Markdown file: provenance of both sides, the table, the notes."""
        lines = [f"# {self.label_a} vs {self.label_b}", ""]
        lines += ["| | A | B |", "|---|---|---|"]
        lines += [f"| {k} | {va} | {vb} |" for k, va, vb in self.provenance]
        lines += ["", f"| {' | '.join(self.HEAD)} |", f"|{'|'.join(['---'] * 4 + ['---:'] * 6)}|"]
        lines += [f"| {' | '.join(r)} |" for r in self.display_rows()]
        lines += ["", *(f"{n}  " for n in self.notes())]
        return "\n".join(lines).rstrip() + "\n"


def _label(p: Path) -> str:
    """A side's name: its results folder and experiment ("results/quick"), enough to tell two sides apart."""
    p = p.resolve()
    return f"{p.parent.name}/{p.name}"


def _check_compare_wilcoxon(common: list[tuple], acc_a: dict, acc_b: dict, alpha: float) -> None:
    """compare's rank tests: paired (signed-rank) where a cell has 2+ shared seeds, else unpaired (Mann-Whitney U);
    refused, like the report's, where no cell's test could reach alpha even with complete separation."""
    n_pair, floor_unpaired, sizes = 0, 1.0, (0, 0)
    for k in common:
        xa, xb = acc_a[k], acc_b[k]
        shared = len(set(xa.index) & set(xb.index))
        if shared >= 2:
            n_pair = max(n_pair, shared)
        elif len(xa) >= 2 and len(xb) >= 2 and rank_sum_floor(len(xa), len(xb)) < floor_unpaired:
            floor_unpaired, sizes = rank_sum_floor(len(xa), len(xb)), (len(xa), len(xb))
    if floor_unpaired <= alpha:
        return
    unpaired = (
        f"; unpaired cells ({sizes[0]} and {sizes[1]} seeds) cannot either (Mann-Whitney U: smallest p {floor_unpaired:.3g})"
        if sizes != (0, 0)
        else ""
    )
    if signed_rank_floor(n_pair) > alpha:
        floor = signed_rank_floor(n_pair)
        raise UserError(
            f"--test wilcoxon cannot reach α = {alpha:g} in this comparison: the largest number of paired seeds is "
            f"n = {n_pair}, and the smallest two-sided exact p of the signed-rank test is 2/2^{n_pair} = {floor:.3g} > "
            f"{alpha:g}{unpaired}; use --test ttest, or run at least {wilcoxon_min_seeds(alpha)} seeds"
        )


def _cell_name(k: tuple) -> str:
    """A cell as the notes name it: backbone/method/recipe@fraction."""
    return f"{k[0]}/{k[2]}/{k[1]}@{frac_label(k[3])}"


def _first(d: pd.DataFrame, col: str) -> str:
    """A provenance column of one side: its first three distinct values (with … where there are more)."""
    if col not in d.columns:
        return "not recorded"
    vals = d[col].dropna().astype(str).unique()
    return ", ".join(vals[:3]) + (" …" if len(vals) > 3 else "") if len(vals) else "not recorded"


def _cell_row(k: tuple, xa: pd.Series, xb: pd.Series, test: str) -> dict[str, Any]:
    """One common cell: both sides' means and seeds, B − A, and its test: paired over 2+ shared seeds, else
    unpaired (Welch's t-test or Mann-Whitney U) where each side has 2+ seeds, else none."""
    from scipy import stats as st

    seeds = sorted(set(xa.index) & set(xb.index))
    stat, p, kind = math.nan, math.nan, "none"
    if len(seeds) >= 2:
        stat, p, _ = pair_test(xb.loc[seeds].to_numpy(float), xa.loc[seeds].to_numpy(float), test)
        kind = f"paired ({len(seeds)})" + (", undefined: all differences equal" if math.isnan(p) else "")
    elif len(xa) >= 2 and len(xb) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = st.ttest_ind(xb, xa, equal_var=False) if test == "ttest" else st.mannwhitneyu(xb, xa)
        stat, p, kind = float(r.statistic), float(r.pvalue), "unpaired"
        p = p if math.isfinite(p) else math.nan
    return dict(
        backbone=k[0], recipe=k[1], method=k[2], fraction=k[3], n_a=len(xa), n_b=len(xb), mean_a=float(xa.mean()),
        mean_b=float(xb.mean()), diff=float(xb.mean() - xa.mean()), kind=kind, statistic=stat, p=p,
    )  # fmt: skip


def compare(a: Path, b: Path, *, test: str = "ttest", alpha: float = 0.05) -> CompareResult:
    """Two experiment folders side by side: per common cell, B − A and its significance."""
    check_test_args(test, alpha)
    da, _ = load_runs(Path(a))
    db, _ = load_runs(Path(b))
    acc_a = {k: g.set_index("seed")[METRIC] for k, g in da.groupby(KEY, sort=False)}
    acc_b = {k: g.set_index("seed")[METRIC] for k, g in db.groupby(KEY, sort=False)}

    common = sorted(set(acc_a) & set(acc_b), key=lambda k: (*row_sort_key((k[0], k[1], k[2])), k[3]))
    if not common:
        raise UserError(f"{a} and {b} share no (backbone, recipe, method, fraction) cell; nothing to compare")
    if test == "wilcoxon":
        _check_compare_wilcoxon(common, acc_a, acc_b, alpha)
    frame = pd.DataFrame([_cell_row(k, acc_a[k], acc_b[k], test) for k in common])
    frame["p_holm"] = holm(frame["p"])
    frame["mark"] = [mark_of(d, q, alpha) for d, q in zip(frame["diff"], frame["p_holm"], strict=True)]
    pa, pb = protocol_info(da), protocol_info(db)
    prov = [("runs", str(len(da)), str(len(db))), ("protocol", pa.label, pb.label)]
    prov += [("search", pa.search_label(), pb.search_label())]
    prov += [(c, _first(da, c), _first(db, c)) for c in ("git_commit", "device", "torch_version", "precision")]
    return CompareResult(
        Path(a),
        Path(b),
        _label(Path(a)),
        _label(Path(b)),
        frame,
        [_cell_name(k) for k in sorted(set(acc_a) - set(acc_b))],
        [_cell_name(k) for k in sorted(set(acc_b) - set(acc_a))],
        prov,
        test,
        alpha,
        pa,
        pb,
    )
