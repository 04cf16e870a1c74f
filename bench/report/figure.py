"""A drawn figure (PNG and PDF bytes in memory) and the one function that draws it: `_render`.

Why one place: every figure of the report becomes bytes here, at one resolution and one layout pass, so that
a report writes nothing until everything is drawn; and the package attribute `bench.report._render` is the
seam tests/test_report.py replaces to read what each figure's axes show (`_emit` looks it up at call time).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

PNG_DPI = 110


@dataclass
class Figure:
    """A drawn figure: its file stem under plots/, title and caption (report.html), PNG and PDF bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    pdf: bytes


def _render(fig: Any, name: str, title: str, caption: str) -> Figure:
    """PNG and PDF bytes of a figure (a seaborn grid or a matplotlib figure), then close it.

    One layout pass here, none in savefig (bbox_inches="tight" would draw every figure twice per
    format); a seaborn grid lays itself out, keeping its legend outside the panels."""
    import matplotlib.pyplot as plt

    figure = getattr(fig, "figure", fig)
    figure.set_dpi(PNG_DPI)  # lay out at the PNG's resolution, so text metrics are measured once for both
    fig.tight_layout()
    # tight_layout leaves a placeholder layout engine behind, which makes every savefig draw the figure
    # twice; the layout is done, so drop it.
    figure.set_layout_engine(None)
    fig = figure
    png, pdf = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI)
    fig.savefig(pdf, format="pdf", metadata={"CreationDate": None})
    plt.close(fig)
    return Figure(name, title, caption, png.getvalue(), pdf.getvalue())


def _emit(fig: Any, name: str, title: str, caption: str) -> Figure:
    """Render through `bench.report._render`, looked up at call time, so that a replacement of the package
    attribute (tests/test_report.py's FigureSpy) sees every figure."""
    from bench import report

    return report._render(fig, name, title, caption)
