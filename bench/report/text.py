"""Text helpers every output shares: the marks, one formatter per quantity (an accuracy, a difference in
accuracy points, a measured label fraction, an estimated one, a range of fractions, a p-value, a margin), the
names of the methods a note may mention, file-name slugs, and LaTeX escaping.

Why one place: the Markdown, LaTeX, CSV and HTML outputs and `compare` print the same numbers; a single
formatter per quantity is what keeps them from drifting apart (the efficiency table once printed "2.541%" and
"0.01-0.1" beside the accuracy table's "1%" and "10%").
"""

from __future__ import annotations

import math
import re

UP, DOWN, DAGGER, EQUIV = "↑", "↓", "†", "≈"


def slug(text: str) -> str:
    """A file-name-safe form of `text` (figure names, LaTeX labels, compare's output file)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def frac_label(f: float) -> str:
    """A measured label fraction (a column header, a cell's name): 0.01 -> '1%'. Exact as the grid gives it
    (up to 4 significant digits), since it is a setting, not an estimate."""
    return f"{100 * f:.4g}%"


def frac_estimate(f: float) -> str:
    """An estimated label fraction (the labels a method needs for a level, interpolated between measured
    fractions): 2 significant digits, 0.02541 -> '2.5%', 0.05 -> '5.0%' (the trailing 0 tells an estimate from
    a measured 5%). Why not more: the interpolation is linear between fractions a decade apart, so a third
    digit would be spurious precision."""
    v = float(f"{100 * f:.2g}")  # 2 significant digits ('{:.2g}' alone would write 100 as '1e+02')
    digits = max(0, 1 - math.floor(math.log10(v))) if v > 0 else 0
    return f"{v:.{digits}f}%"


def frac_range(lo: float, hi: float) -> str:
    """The measured fractions a curve spans: '1%–10%', or '1%' where it is a single fraction."""
    return frac_label(lo) if lo == hi else f"{frac_label(lo)}–{frac_label(hi)}"


def pct(x: float) -> str:
    """The one rounding every table uses: accuracy as a percentage with 2 decimals (also a spread or a
    detectable difference in points, which are accuracies' units)."""
    return f"{100 * x:.2f}"


def points(d: float) -> str:
    """A difference of accuracies in points, signed, 2 decimals: +1.23 (a gain, a CI bound); "–" where untested."""
    return "–" if not math.isfinite(d) else f"{100 * d:+.2f}"


def margin_points(m: float) -> str:
    """A declared equivalence margin in points, as declared (0.01 -> '1'): a setting, not a measurement."""
    return f"{100 * m:g}"


def name_list(names: list[str], code: bool = False) -> str:
    """Names as prose: 'a', 'a and b', 'a, b and c' (in `code` spans where asked); '' for none."""
    shown = [f"`{n}`" if code else n for n in names]
    if len(shown) <= 1:
        return "".join(shown)
    return f"{', '.join(shown[:-1])} and {shown[-1]}"


def fmt_p(v: float) -> str:
    """A p-value for reading: 3 decimals, 2 significant digits below 0.001, "–" where untested."""
    return "–" if not math.isfinite(v) else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


def fmt_needed(value: float, bound: str) -> str:
    """A label fraction needed for a level (see stats.fraction_to_reach) with its bound: "2.5%", "≤1%", ">10%", "n/a"."""
    if bound == "n/a" or not math.isfinite(value):
        return "n/a"
    # "=" is an interpolated estimate; the bounds are measured fractions, shown as the grid gives them
    return {"=": frac_estimate(value), "<=": f"≤{frac_label(value)}", ">": f">{frac_label(value)}"}[bound]


# Unicode the tables use, as LaTeX that pdflatex compiles without extra packages (a raw "↑" halts
# pdflatex; "<" and ">" in text mode print as inverted punctuation in the default OT1 encoding).
TEX_UNICODE = {
    "±": r"$\pm$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "†": r"$^{\dagger}$",
    "α": r"$\alpha$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "≈": r"$\approx$",
    "<": r"$<$",
    ">": r"$>$",
    "−": r"$-$",
    "×": r"$\times$",
    "–": "--",
    "—": "---",
    "…": r"\dots{}",
    "’": "'",
}


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX text: specials escaped, the tables' Unicode as math (see TEX_UNICODE)."""
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        **TEX_UNICODE,
    }
    return "".join(repl.get(c, c) for c in text)


def tex_note(text: str) -> str:
    """A Markdown-ish note (with `code`) as LaTeX text: code spans in \\texttt, the rest escaped."""
    parts = text.split("`")
    return "".join(f"\\texttt{{{tex_escape(p)}}}" if i % 2 else tex_escape(p) for i, p in enumerate(parts))
