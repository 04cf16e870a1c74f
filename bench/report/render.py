"""The shape of a table, free of any format (TableModel and its cells), and one renderer per format: a table
as Markdown, LaTeX or HTML, and a DataFrame as CSV or as an HTML table.

Why here and nowhere else: every table of the report is built once, format-free (tables.py builds the
models); how a cell, a header, a group of rows or the notes look in a format is decided in exactly one place
below, so the accuracy, sft-vs-baselines and efficiency tables cannot drift apart between formats, and the
LaTeX float (preamble, caption, booktabs rules) is written once for all of them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bench.report.text import DAGGER, DOWN, EQUIV, UP, pct, points, tex_escape, tex_note

# A verdict's mark (protocol v3): significantly better / worse, or equivalent within the declared margin;
# inconclusive and untested comparisons get none.
ARROWS = {"better": UP, "worse": DOWN, "equivalent": EQUIV}
TEX_ARROWS = {"better": "\\uparrow", "worse": "\\downarrow", "equivalent": "\\approx"}


@dataclass(frozen=True)
class AccuracyCell:
    """A cell of the accuracy table: mean ± sample std over n seeds, bold where it is its column's best,
    a dagger where it is not significantly worse than that best, and its mark against the baseline."""

    mean: float
    std: float
    n: int
    bold: bool
    dagger: bool
    mark: str  # the verdict against the baseline: "better" / "worse" an arrow, "equivalent" ≈; the others none


@dataclass(frozen=True)
class DiffCell:
    """A cell of the sft-vs-baselines table: the mean paired difference (a fraction) over n paired seeds, its
    95% confidence interval and its verdict."""

    diff: float
    n: int
    mark: str
    low: float = math.nan
    high: float = math.nan

    @property
    def interval(self) -> str:
        """ " [lo, hi]" in points, or "" without an interval."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return ""
        return f" [{points(self.low)}, {points(self.high)}]"


# A table cell: a number with its marks, plain text (shown as it is, escaped per format), or None: not run.
Cell = AccuracyCell | DiffCell | str | None


@dataclass
class TableModel:
    """One table, format-free: what every renderer below needs, and nothing about how a format looks.

    rows: (labels, cells); the first `n_labels` header entries name the label columns (backbone first: the
    LaTeX renderer groups rows by it), the rest the value columns."""

    stem: str  # file name under tables/ (.md, .tex, .csv)
    head: list[str]
    n_labels: int
    rows: list[tuple[list[str], list[Cell]]]
    notes: list[str]  # under the table (Markdown, HTML)
    float_notes: list[str]  # inside the LaTeX float: the protocol's notes only
    caption: str  # LaTeX, typeset already
    tex_label: str
    tex_align: str  # LaTeX alignment of the value columns
    md_right: bool  # right-align the value columns in Markdown
    frame: pd.DataFrame  # the CSV: every number at full precision


def _std(c: AccuracyCell, none: str) -> str:
    """The cell's std as shown; `none` where one seed has no std."""
    return none if c.n < 2 else pct(c.std)


# ---------------------------------------------------------------- Markdown


def md_cell(c: Cell) -> str:
    """A cell as Markdown: **bold** best, † and the arrow as Unicode, "(n=...)" for the seeds; "—": not run."""
    if c is None:
        return "—"
    if isinstance(c, str):
        return c
    arrow = f" {ARROWS[c.mark]}" if c.mark in ARROWS else ""
    if isinstance(c, DiffCell):
        return f"{points(c.diff)}{c.interval}{arrow} (n={c.n})"
    core = f"{pct(c.mean)} ± {_std(c, '–')}"
    if c.bold:
        core = f"**{core}**"
    return f"{core}{DAGGER if c.dagger else ''} (n={c.n}){arrow}"


def md_notes(lines: list[str]) -> str:
    """Notes under a Markdown table, one per line (two trailing spaces: a line break)."""
    return "\n".join(f"{n}  " for n in lines).rstrip() + "\n"


def to_markdown(t: TableModel) -> str:
    """A table as Markdown: the method column in `code`, value columns right-aligned where the model says so."""
    value_rule = "---:" if t.md_right else "---"
    lines = [f"| {' | '.join(t.head)} |", f"|{'|'.join(['---'] * t.n_labels + [value_rule] * (len(t.head) - t.n_labels))}|"]
    for labels, cells in t.rows:
        shown = [f"`{x}`" if i == 1 else x for i, x in enumerate(labels)]
        lines.append(f"| {' | '.join(shown + [md_cell(c) for c in cells])} |")
    return "\n".join(lines) + "\n\n" + md_notes(t.notes)


# ---------------------------------------------------------------- LaTeX


def tex_cell(c: Cell) -> str:
    """A cell as LaTeX: \\textbf best, † and the arrow as a superscript, the seeds in \\scriptsize; "---": not run."""
    if c is None:
        return "---"
    if isinstance(c, str):
        return tex_escape(c)
    if isinstance(c, DiffCell):
        mark = f"^{{{TEX_ARROWS[c.mark]}}}" if c.mark in TEX_ARROWS else ""
        ci = f" {{\\scriptsize{tex_escape(c.interval)}}}" if c.interval else ""
        return f"${points(c.diff)}{mark}${ci} {{\\scriptsize ({c.n})}}"
    core = f"{pct(c.mean)} $\\pm$ {_std(c, '--')}"
    if c.bold:
        core = f"\\textbf{{{core}}}"
    sup = ("\\dagger" if c.dagger else "") + TEX_ARROWS.get(c.mark, "")
    return f"{core}{f'$^{{{sup}}}$' if sup else ''} {{\\scriptsize ({c.n})}}"


def tex_notes(lines: list[str]) -> list[str]:
    """Notes typeset under a tabular, inside its table float (the protocol labels travel with the table)."""
    if not lines:
        return []
    body = "\\par\n".join(tex_note(n) for n in lines)
    return ["\\par\\smallskip", "\\begin{minipage}{\\linewidth}\\footnotesize\\raggedright", body, "\\end{minipage}"]


def to_latex(t: TableModel) -> str:
    """A table as a booktabs float: caption and label, a \\midrule between backbones, the backbone named once per
    group, and the protocol's notes under the tabular."""
    lines = [
        f"% Needs \\usepackage{{booktabs}}. Generated by `python cli.py report`; numbers as in {t.stem}.csv.",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{t.caption}}}",
        f"\\label{{{t.tex_label}}}",
        f"\\begin{{tabular}}{{{'l' * t.n_labels}{t.tex_align}}}",
        "\\toprule",
        " & ".join(tex_escape(h) for h in t.head) + " \\\\",
        "\\midrule",
    ]
    prev = None
    for labels, cells in t.rows:
        if prev is not None and labels[0] != prev:
            lines.append("\\midrule")
        shown = [tex_escape(x) for x in labels]
        if labels[0] == prev:
            shown[0] = ""
        prev = labels[0]
        lines.append(" & ".join(shown + [tex_cell(c) for c in cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", *tex_notes(t.float_notes), "\\end{table}", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML


def html_cell(c: Cell) -> str:
    """A cell as HTML: <b> best, † and the arrow in <sup>, the seeds in <small>; other cells as their Markdown text."""
    if not isinstance(c, AccuracyCell):
        return html.escape(md_cell(c))
    core = f"{pct(c.mean)} ± {_std(c, '–')}"
    if c.bold:
        core = f"<b>{core}</b>"
    sup = (DAGGER if c.dagger else "") + ARROWS.get(c.mark, "")
    return f"{core}{f'<sup>{sup}</sup>' if sup else ''} <small>(n={c.n})</small>"


def html_notes(lines: list[str]) -> str:
    """Notes under an HTML table (code spans lose their backticks)."""
    return '<ul class="notes">' + "".join(f"<li>{html.escape(n).replace('`', '')}</li>" for n in lines) + "</ul>"


def _html_shell(head: list[str], rows: list[str]) -> str:
    """The one HTML table layout of report.html: escaped header cells, then the given <tr> rows."""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    return f'<table class="t"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def to_html(t: TableModel) -> str:
    """A table model as HTML, its notes under it."""
    rows = []
    for labels, cells in t.rows:
        lab = "".join(f"<td>{html.escape(x)}</td>" for x in labels)
        values = "".join(f'<td class="num">{html_cell(c)}</td>' for c in cells)
        rows.append(f"<tr>{lab}{values}</tr>")
    return _html_shell(t.head, rows) + html_notes(t.notes)


def frame_html(frame: pd.DataFrame, fmt: dict[str, Callable] | None = None) -> str:
    """A DataFrame as an HTML table (significance, win/tie/loss, compute): numbers right-aligned, NaN blank,
    `fmt` per column where a column needs its own text (p-values)."""
    fmt = fmt or {}
    rows = []
    for rec in frame.to_dict("records"):
        tds = []
        for c, v in rec.items():
            text = fmt[c](v) if c in fmt else ("" if isinstance(v, float) and math.isnan(v) else str(v))
            cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
            tds.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append(f"<tr>{''.join(tds)}</tr>")
    return _html_shell(list(frame.columns), rows)


# ---------------------------------------------------------------- CSV


def to_csv(frame: pd.DataFrame) -> str:
    """A table's numbers at full precision, one line per record: the form the CSV files of tables/ share."""
    return frame.to_csv(index=False, lineterminator="\n")
