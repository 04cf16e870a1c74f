"""The report's tables, each built once as a format-free model (render.TableModel) from the statistics:
accuracy per cell, sft* against each of its baselines, and label efficiency (compute per cell: compute.py).

Why models: the Markdown, LaTeX, CSV and HTML of a table are rendered from the same model by the renderers
of render.py, so the numbers, marks and notes cannot differ between formats; this module decides what a table
says (its rows, cells, notes and caption), never how a format typesets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench.report.protocol import ProtocolInfo
from bench.report.render import AccuracyCell, DiffCell, TableModel, to_html, to_latex, to_markdown
from bench.report.schema import BASELINE, BASELINE_ORDER, KEY, TEST_NAMES, is_sft, probe_caveat, row_sort_key
from bench.report.text import DAGGER, DOWN, EQUIV, UP, fmt_needed, frac_label, margin_points, name_list, pct, slug, tex_escape

EFF_HEAD = ("reference (acc. %)", "labels for 90%", "labels for 95%", "AUC (%)", "AUC range")


@dataclass
class Tables:
    """The accuracy, sft-vs-baselines and efficiency tables of one experiment: the cells and comparisons they
    are built from, and one method per table that returns its model (`accuracy`, `sft_vs_baselines`,
    `efficiency`); render.py turns a model into Markdown, LaTeX, CSV or HTML."""

    experiment: str
    rows: list[tuple[str, str, str]]  # (backbone, recipe, method)
    fractions: list[float]
    cells: pd.DataFrame  # tidy: one row per present cell with display fields
    efficiency_frame: pd.DataFrame
    show_recipe: bool
    test: str
    alpha: float
    n_tests: int  # tested comparisons with baselines (both families)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)  # every comparison with a baseline
    n_best_tests: int = 0  # tested comparisons with the column's best (the Holm family behind †)
    protocol: ProtocolInfo | None = None
    gain: pd.DataFrame = field(default_factory=pd.DataFrame)  # tuned - defaults (stats.tuning_gain)
    selection: TableModel | None = None  # how firmly each search chose (selection.py; set once the studies are read)

    @property
    def has_gain(self) -> bool:
        """Whether any cell ran under both the tuned and the defaults recipe."""
        return len(self.gain) > 0

    def __post_init__(self) -> None:
        self.index = {(c["backbone"], c["recipe"], c["method"], c["fraction"]): c for c in self.cells.to_dict("records")}
        recs = self.tests.to_dict("records") if len(self.tests) else []
        self.test_index = {(t["backbone"], t["recipe"], t["method"], t["fraction"], t["baseline_method"]): t for t in recs}

    def models(self) -> list[TableModel]:
        """Every table of tables/, in the order the report writes them; the sft-vs-baselines table only where it
        has a comparison to show (`sft_missing` says why not, in the report's notes and in report.html)."""
        return [
            self.accuracy(),
            self.efficiency(),
            *([self.sft_vs_baselines()] if self.sft_missing() is None else []),
            *([self.tuning_gain()] if self.has_gain else []),
            *([self.selection] if self.selection is not None else []),
        ]

    # -- what the search added
    def tuning_gain(self) -> TableModel:
        """Per (backbone, method) row and fraction: tuned - defaults over paired seeds, with its 95% CI."""
        fractions = sorted(self.gain["fraction"].unique()) if self.has_gain else []
        index = {(g["backbone"], g["method"], g["fraction"]): g for g in self.gain.to_dict("records")}
        rows_ = sorted({(b, m) for b, m, _ in index}, key=lambda bm: row_sort_key((bm[0], "tuned", bm[1])))
        rows = []
        for b, m in rows_:
            cells = []
            for f in fractions:
                g = index.get((b, m, f))
                cells.append(None if g is None else DiffCell(g["diff_mean"], int(g["n_pairs"]), "", g["ci_low"], g["ci_high"]))
            rows.append(([b, m], cells))
        return TableModel(
            stem="tuning_gain",
            head=["backbone", "method", *(frac_label(f) for f in fractions)],
            n_labels=2,
            rows=rows,
            notes=[
                "What the search added: test accuracy of the `tuned` recipe minus the `defaults` recipe (each method's "
                "defaults, no search), mean paired difference in points with its 95% CI, (n) = paired seeds. 0 exactly "
                "where the search chose the defaults (the same training). Descriptive, not part of any family.",
                *self.protocol_notes(),
            ],
            float_notes=self.protocol_notes(),
            caption=f"What the search added, experiment {tex_escape(self.experiment)}: tuned minus defaults (points, "
            "95\\% CI in brackets; paired seeds in parentheses). ---: not run under both recipes.",
            tex_label=f"tab:tuning-gain-{slug(self.experiment)}",
            tex_align="r" * len(fractions),
            md_right=True,
            frame=self.gain,
        )

    # The accuracy table as one string per format: kept for callers of the single-module report
    # (tests/test_report.py reads them); everything else renders `models()`.
    def accuracy_markdown(self) -> str:
        """The accuracy table as Markdown (tables/accuracy.md)."""
        return to_markdown(self.accuracy())

    def accuracy_latex(self) -> str:
        """The accuracy table as a LaTeX float (tables/accuracy.tex)."""
        return to_latex(self.accuracy())

    def accuracy_html(self) -> str:
        """The accuracy table as report.html shows it."""
        return to_html(self.accuracy())

    # -- shared pieces
    def _head(self) -> list[str]:
        """The label columns' headers: the recipe only where the experiment has more than one."""
        return ["backbone", "method", *(["recipe"] if self.show_recipe else [])]

    def _labels(self, row: tuple[str, str, str]) -> list[str]:
        """A row's label cells, in the order of `_head`."""
        b, r, m = row
        return [b, m, *([r] if self.show_recipe else [])]

    def protocol_notes(self) -> list[str]:
        """The protocol's notes, under every table and inside every LaTeX float."""
        return self.protocol.lines() if self.protocol else []

    def _family(self) -> str:
        """How the marks are decided (protocol v3), as every table's notes state it; a family without a
        comparison is not mentioned (a "primary: 0 comparisons" says nothing and reads like an error)."""
        fams = self.tests["family"].value_counts() if len(self.tests) and "family" in self.tests else {}
        margin = float(self.tests["margin"].iloc[0]) if len(self.tests) and "margin" in self.tests else 0.01
        sizes = []
        if n_primary := int(fams.get("primary", 0)):
            sizes.append(f"primary: {n_primary} comparisons declared before the grid ran")
        if n_secondary := int(fams.get("secondary", 0)):
            sizes.append(f"secondary: {n_secondary}, not for claims")
        return (
            f"the verdict of the comparison: Holm-corrected within its family, α = {self.alpha:g}"
            + (f" ({'; '.join(sizes)})" if sizes else "")
            + f"; {EQUIV}: equivalent within ±{margin_points(margin)} point(s) (two one-sided tests, Holm within the "
            "family), which wins over ↑/↓ where both hold"
        )

    def n_baseline_tests(self) -> int:
        """Tested comparisons with `finetune` (2 or more paired seeds): the ones behind the accuracy table's marks."""
        if not len(self.tests):
            return 0
        ft = self.tests[self.tests["baseline_method"] == BASELINE]
        return int(np.isfinite(ft["p"].astype(float)).sum())

    # -- accuracy
    def _accuracy_cell(self, row: tuple[str, str, str], f: float) -> AccuracyCell | None:
        """The cell of `row` at fraction `f` (None: not run)."""
        c = self.index.get((*row, f))
        if c is None:
            return None
        return AccuracyCell(c["mean"], c["std"], c["n"], c["bold"], c.get("vs_best") == "not worse", c["mark"])

    def _dagger_note(self) -> str:
        """What † means, or, where no comparison with a column's best could be tested, why there is none."""
        if not self.n_best_tests:
            return (
                f"No {DAGGER}: no cell shares 2 or more seeds with its column's best-mean cell, so none could be tested "
                "against it."
            )
        return (
            f"{DAGGER}: not significantly worse than the column's best-mean cell ({TEST_NAMES[self.test]}, two-sided, over "
            f"paired seeds, Holm-corrected over all {self.n_best_tests} such comparisons of this experiment, α = "
            f"{self.alpha:g}); no {DAGGER}: the best cell itself, significantly worse, or untested (fewer than 2 paired "
            "seeds). Not rejecting is not evidence of equality: with few seeds these tests have little power."
        )

    def _marks_note(self) -> str:
        """What ↑ / ↓ / ≈ mean, or, where no comparison with `finetune` could be tested, why there is none."""
        if not self.n_baseline_tests():
            return (
                f"No {UP} / {DOWN} / {EQUIV}: no cell shares 2 or more seeds with a `{BASELINE}` run of its backbone and "
                "fraction, so none could be compared with it."
            )
        return (
            f"{UP} / {DOWN}: significantly higher / lower than the row's `{BASELINE}` baseline ({TEST_NAMES[self.test]} over "
            f"paired seeds, {self._family()}); no mark: inconclusive (neither a difference nor equivalence is shown: not "
            "evidence of either), the baseline itself, or untested (fewer than 2 paired seeds); see "
            "tables/significance.csv (every comparison with its 95% CI and verdict) and tables/summary.md."
        )

    def accuracy_notes(self) -> list[str]:
        """How to read the accuracy table: the statistics behind each cell and each mark."""
        return [
            "Test accuracy (%) per cell: mean ± sample std over seeds, (n) = number of seeds; – : one seed, no std; — : not run.",
            "Bold: the best mean (as shown) in the column within each backbone.",
            self._dagger_note(),
            self._marks_note(),
            *self.protocol_notes(),
        ]

    def _accuracy_caption(self) -> str:
        """The accuracy table's LaTeX caption: the marks it explains are the ones that can occur."""
        test = TEST_NAMES[self.test]
        dagger = (
            f"$^{{\\dagger}}$: not significantly worse than the column's best ({test}, Holm over {self.n_best_tests} "
            "comparisons). "
            if self.n_best_tests
            else ""
        )
        marks = (
            f"$^{{\\uparrow}}$/$^{{\\downarrow}}$: significantly higher/lower than {BASELINE}, "
            f"$^{{\\approx}}$: equivalent within the declared margin ({test} and two one-sided tests, Holm within the "
            f"primary or the secondary family, $\\alpha={self.alpha:g}$). "
            if self.n_baseline_tests()
            else ""
        )
        return (
            f"Test accuracy (\\%) on CIFAR-10, experiment {tex_escape(self.experiment)}: mean $\\pm$ std over seeds "
            f"(number of seeds in parentheses). Bold: best in the column per backbone. {dagger}{marks}"
            "--: one seed; ---: not run."
        )

    def accuracy(self) -> TableModel:
        """Rows (backbone, method[, recipe]) by label fraction; the CSV is tidy: one line per cell, accuracy_mean/
        std/ci95 as fractions at full precision (the other formats show them as percentages rounded to 2
        decimals), the comparison with `finetune` behind the arrow, the one with the column's best behind the
        dagger (vs_best_*), and the cell's step budget where runs.csv records it."""
        return TableModel(
            stem="accuracy",
            head=[*self._head(), *(frac_label(f) for f in self.fractions)],
            n_labels=len(self._head()),
            rows=[(self._labels(row), [self._accuracy_cell(row, f) for f in self.fractions]) for row in self.rows],
            notes=self.accuracy_notes(),
            float_notes=self.protocol_notes(),
            caption=self._accuracy_caption(),
            tex_label=f"tab:accuracy-{slug(self.experiment)}",
            tex_align="r" * len(self.fractions),
            md_right=True,
            frame=self.cells.rename(columns={"mean": "accuracy_mean", "std": "accuracy_std", "ci95": "accuracy_ci95"}),
        )

    # -- sft* against each of its baselines
    def sft_rows(self) -> list[tuple[str, str, str, float]]:
        """The sft* cells, in display order: (backbone, recipe, method, fraction)."""
        return [
            (c["backbone"], c["recipe"], c["method"], c["fraction"]) for c in self.cells.to_dict("records") if is_sft(c["method"])
        ]

    def sft_baselines(self) -> list[str]:
        """The baselines the sft* rows were compared with: `finetune` always, linear_probe / lp_ft where run."""
        have = {k[4] for k in self.test_index if is_sft(k[2])}
        return [bm for bm in BASELINE_ORDER if bm in have or bm == BASELINE]

    def _sft_cell(self, key: tuple[str, str, str, float], bm: str) -> DiffCell | None:
        """The comparison of an sft* cell with baseline `bm` (None: no paired run of that baseline)."""
        t = self.test_index.get((*key, bm))
        if t is None or t["n_pairs"] <= 0:
            return None
        return DiffCell(t["diff_mean"], t["n_pairs"], t["verdict"], t["ci_low"], t["ci_high"])

    def sft_missing(self) -> str | None:
        """Why the sft-vs-baselines table is left out (one sentence), or None where it has a comparison to show.
        Why left out rather than drawn empty: a header over no rows, or rows of "—" only, reads like a failure."""
        rows = self.sft_rows()
        if not rows:
            return "No sft-against-baselines table: this experiment has no sft* run."
        if all(self._sft_cell(key, bm) is None for key in rows for bm in self.sft_baselines()):
            return (
                f"No sft-against-baselines table: none of the {len(rows)} sft* cell(s) shares a seed with a run of its "
                f"baselines ({name_list(list(self.sft_baselines()), code=True)}) yet."
            )
        return None

    def sft_notes(self) -> list[str]:
        """How to read the sft-vs-baselines table: what a cell is, what a mark means, which rows are correlated."""
        base = name_list(self.sft_baselines(), code=True)
        out = [
            f"Each sft* cell against {base} of the same backbone and fraction: mean paired difference (method − baseline, "
            "accuracy points) over the seeds both share with its 95% confidence interval in brackets, (n) = paired seeds; "
            "the baseline of the same recipe, else the `tuned` one (tables/significance.csv names it).",
            f"{UP} / {DOWN}: significantly higher / lower ({TEST_NAMES[self.test]}, {self._family()}); no mark: "
            "inconclusive, or untested (fewer than 2 paired seeds); —: no paired run of that baseline (not run at this "
            "fraction, or no seed in common).",
        ]
        caveat = probe_caveat({m for _, _, m in self.rows}, "comparisons")
        return out + ([caveat] if caveat else []) + self.protocol_notes()

    def _sft_frame(self) -> pd.DataFrame:
        """Wide: one line per sft* cell; per baseline method its run (method/recipe), paired seeds, mean paired
        difference (fraction, not points), Holm-adjusted p and mark."""
        recs = []
        for key in self.sft_rows():
            rec: dict[str, Any] = dict(zip(KEY, key, strict=True), column=frac_label(key[3]))
            for bm in self.sft_baselines():
                t = self.test_index.get((*key, bm))
                rec[f"{bm}_baseline"] = t["baseline"] if t else ""
                rec[f"{bm}_n_pairs"] = int(t["n_pairs"]) if t else 0
                rec[f"{bm}_diff_mean"] = t["diff_mean"] if t else math.nan
                rec[f"{bm}_ci_low"] = t["ci_low"] if t else math.nan
                rec[f"{bm}_ci_high"] = t["ci_high"] if t else math.nan
                rec[f"{bm}_family"] = t["family"] if t else ""
                rec[f"{bm}_p_holm"] = t["p_holm"] if t else math.nan
                rec[f"{bm}_p_tost_holm"] = t["p_tost_holm"] if t else math.nan
                rec[f"{bm}_verdict"] = t["verdict"] if t else "no baseline"
            recs.append(rec)
        fields = ("baseline", "n_pairs", "diff_mean", "ci_low", "ci_high", "family", "p_holm", "p_tost_holm", "verdict")
        cols = [*KEY, "column"] + [f"{bm}_{x}" for bm in self.sft_baselines() for x in fields]
        return pd.DataFrame(recs, columns=cols)

    def sft_vs_baselines(self) -> TableModel:
        """Each sft* cell (rows with their fraction) against each of its baselines: mean paired difference."""
        head = [*self._head(), "fraction", *(f"vs {bm}" for bm in self.sft_baselines())]
        n_labels = len(self._head()) + 1
        rows = []
        for key in self.sft_rows():
            b, r, m, f = key
            rows.append(([*self._labels((b, r, m)), frac_label(f)], [self._sft_cell(key, bm) for bm in self.sft_baselines()]))
        return TableModel(
            stem="sft_vs_baselines",
            head=head,
            n_labels=n_labels,
            rows=rows,
            notes=self.sft_notes(),
            float_notes=self.protocol_notes(),
            caption=f"sft* against its baselines, experiment {tex_escape(self.experiment)}: mean paired difference in "
            "test accuracy (points, method minus baseline; 95\\% CI in brackets; paired seeds in parentheses). "
            f"$^{{\\uparrow}}$/$^{{\\downarrow}}$: significantly higher/lower ({TEST_NAMES[self.test]}, Holm within the "
            f"primary or the secondary family, $\\alpha={self.alpha:g}$); $^{{\\approx}}$: equivalent within the declared "
            "margin (two one-sided tests). ---: baseline not run.",
            tex_label=f"tab:sft-vs-baselines-{slug(self.experiment)}",
            tex_align="r" * (len(head) - n_labels),
            md_right=True,
            frame=self._sft_frame(),
        )

    # -- label efficiency
    @staticmethod
    def _eff_values(e: dict) -> list[str]:
        """An efficiency row's value cells as text: reference, labels for 90% / 95%, AUC, AUC range."""
        auc = "n/a" if not math.isfinite(e["auc"]) else pct(e["auc"]) + ("*" if e["auc_partial"] else "")
        ref = (
            e["reference"] if not math.isfinite(e["reference_accuracy"]) else f"{e['reference']} ({pct(e['reference_accuracy'])})"
        )
        if e["reference"] != "n/a" and not e["full_label"]:
            ref += " [not full-label]"
        return [ref, fmt_needed(e["frac90"], e["frac90_bound"]), fmt_needed(e["frac95"], e["frac95_bound"]), auc, e["auc_range"]]

    def efficiency_notes(self) -> list[str]:
        """How to read the efficiency table: the reference, the interpolation, the bounds, the AUC."""
        return [
            f"Labels for 90% / 95%: the label fraction at which the method's mean accuracy first reaches 90% / 95% of the "
            f"reference (the row's `{BASELINE}` baseline at the full label set), interpolated linearly on the log10-fraction "
            "axis between measured fractions; ≤x: reached already at the smallest measured fraction x; >x: not reached "
            "up to the largest measured fraction x.",
            "[not full-label]: the experiment has no fraction-1 run of the baseline, so the reference is the baseline at its "
            "largest fraction (stated in the reference column).",
            "AUC: area under mean accuracy (%) against log10(fraction), divided by the width of the log10 range (the curve's "
            "average accuracy over that range); * : the method lacks some of the backbone's fractions, so its range differs "
            "and its AUC is not comparable with the other rows.",
            *self.protocol_notes(),
        ]

    def efficiency(self) -> TableModel:
        """Per row: the label fraction needed for 90% / 95% of the reference accuracy, and the normalised AUC;
        the CSV is stats.label_efficiency's frame as it is."""
        rows = [
            (self._labels((e["backbone"], e["recipe"], e["method"])), list(self._eff_values(e)))
            for e in self.efficiency_frame.to_dict("records")
        ]
        return TableModel(
            stem="efficiency",
            head=[*self._head(), *EFF_HEAD],
            n_labels=len(self._head()),
            rows=rows,
            notes=self.efficiency_notes(),
            float_notes=self.protocol_notes(),
            caption=f"Label efficiency, experiment {tex_escape(self.experiment)}: label fraction needed to reach "
            f"90\\% / 95\\% of the reference accuracy ({BASELINE} at the full label set, else at its largest fraction), "
            "interpolated on the log-fraction axis; AUC: mean accuracy (\\%) over the log10-fraction range "
            "(*: partial range).",
            tex_label=f"tab:efficiency-{slug(self.experiment)}",
            tex_align="lrrrl",
            md_right=False,
            frame=self.efficiency_frame,
        )


# ---------------------------------------------------------------- building the model


def _per_cell(values: pd.Series) -> Any:
    """A per-run quantity summarised per cell: the value when every seed agrees (the normal case: the
    step budget is one per cell), else "min-max" so that a disagreement shows instead of averaging away."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return math.nan
    lo, hi = int(v.min()), int(v.max())
    return lo if lo == hi else f"{lo}-{hi}"


def build_tables(
    experiment: str,
    df: pd.DataFrame,
    stats: pd.DataFrame,
    tests: pd.DataFrame,
    eff: pd.DataFrame,
    test: str,
    alpha: float,
    best: pd.DataFrame | None = None,
    protocol: ProtocolInfo | None = None,
    gain: pd.DataFrame | None = None,
) -> Tables:
    """One model for every table: cell statistics, the `finetune` comparison behind ↑/↓, the comparison with
    the column's best behind †, and the cell's step budget (when runs.csv records one)."""
    ft = tests[tests["baseline_method"] == BASELINE] if len(tests) else tests
    cols = [*KEY, "baseline", "n_pairs", "diff_mean", "ci_low", "ci_high", "p", "p_holm", "verdict", "reason"]
    cells = stats.merge(ft[cols] if len(ft) else pd.DataFrame(columns=cols), on=KEY, how="left")
    is_base = cells["baseline"].isna()
    cells["baseline"] = cells["baseline"].fillna("")
    # A row without a comparison is either the baseline itself or a row whose backbone has no finetune.
    cells["mark"] = cells.pop("verdict").where(~is_base, np.where(cells["method"] == BASELINE, "baseline", "no baseline"))
    cells["reason"] = cells["reason"].fillna("")
    cells["n_pairs"] = cells["n_pairs"].fillna(0).astype(int)
    cells["n"] = cells["n"].astype(int)
    if best is not None and len(best):
        vb = best[[*KEY, "best", "vs_best", "n_pairs", "diff_mean", "p", "p_holm"]].rename(
            columns={
                "best": "best_cell",
                "n_pairs": "vs_best_n_pairs",
                "diff_mean": "vs_best_diff",
                "p": "vs_best_p",
                "p_holm": "vs_best_p_holm",
            }
        )
        cells = cells.merge(vb, on=KEY, how="left")
    for col in ("steps", "probe_steps"):
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            per = df.groupby(KEY, sort=False)[col].agg(_per_cell).rename(col).reset_index()
            cells = cells.merge(per, on=KEY, how="left")
    shown = cells["mean"].map(pct).astype(float)
    top = shown.groupby([cells["backbone"], cells["fraction"]]).transform("max")
    cells["bold"] = shown == top
    rows = sorted({(b, r, m) for b, r, m in cells[["backbone", "recipe", "method"]].itertuples(index=False)}, key=row_sort_key)
    order = {row: i for i, row in enumerate(rows)}
    cells = cells.assign(_o=[order[(b, r, m)] for b, r, m in cells[["backbone", "recipe", "method"]].itertuples(index=False)])
    cells = cells.sort_values(["_o", "fraction"]).drop(columns="_o").reset_index(drop=True)
    cells.insert(4, "column", cells["fraction"].map(frac_label))
    return Tables(
        experiment=experiment,
        rows=rows,
        fractions=sorted(cells["fraction"].unique()),
        cells=cells,
        efficiency_frame=eff,
        show_recipe=df["recipe"].nunique() > 1,
        test=test,
        alpha=alpha,
        n_tests=int(np.isfinite(tests["p"]).sum()) if len(tests) else 0,
        tests=tests,
        n_best_tests=int(np.isfinite(best["p"]).sum()) if best is not None and len(best) else 0,
        protocol=protocol,
        gain=gain if gain is not None else pd.DataFrame(),
    )
