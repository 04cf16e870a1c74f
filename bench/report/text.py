"""Text helpers every output shares: the marks, the one rounding of accuracies, label-fraction and p-value
formats, file-name slugs, and LaTeX escaping.

Why one place: the Markdown, LaTeX, CSV and HTML outputs and `compare` print the same numbers; a single
formatter per quantity is what keeps them from drifting apart.
"""

from __future__ import annotations

import math
import re

UP, DOWN, DAGGER, EQUIV = "↑", "↓", "†", "≈"


def slug(text: str) -> str:
    """A file-name-safe form of `text` (figure names, LaTeX labels, compare's output file)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def frac_label(f: float) -> str:
    """Column header of a label fraction: 0.01 -> '1%'."""
    return f"{100 * f:.4g}%"


def pct(x: float) -> str:
    """The one rounding every table uses: accuracy as a percentage with 2 decimals."""
    return f"{100 * x:.2f}"


def fmt_p(v: float) -> str:
    """A p-value for reading: 3 decimals, 2 significant digits below 0.001, "–" where untested."""
    return "–" if not math.isfinite(v) else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")


def fmt_needed(value: float, bound: str) -> str:
    """A label fraction needed for a level (see stats.fraction_to_reach) with its bound: "1%", "≤1%", ">10%", "n/a"."""
    if bound == "n/a" or not math.isfinite(value):
        return "n/a"
    v = frac_label(value)
    return {"=": v, "<=": f"≤{v}", ">": f">{v}"}[bound]


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
