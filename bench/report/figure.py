"""A drawn figure (PNG and PDF bytes in memory), the one function that draws it (`_render`), and the check
that no two texts of a drawn figure overlap and none leaves it (`text_problems`).

Why one place: every figure of the report becomes bytes here, at one resolution and one layout pass, so that
a report writes nothing until everything is drawn; and this module's `_render` is the
seam tests/test_report.py replaces to read what each figure's axes show (`_emit` looks it up at call time).

Why the text check runs on every figure, at draw time: overlapping tick labels ("2×10^0 3×10^0 ..." run
together on a log axis) were committed in the example reports and nobody saw them until a new user did.
The check measures the texts matplotlib actually drew (their boxes from the renderer of the PNG), so it is
deterministic and costs no second drawing; a problem becomes a note of the report (tests require none).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PNG_DPI = 110
OVERLAP_PX = 1.0  # boxes that share less than this (in pixels, both ways) touch; they do not overlap


@dataclass
class Figure:
    """A drawn figure: its file stem under plots/, title and caption (report.html), PNG and PDF bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    pdf: bytes
    problems: list[str] = field(default_factory=list)  # text_problems of the drawn figure (none expected)


def _ticks_drawn(axis: Any) -> list[Any]:
    """The ticks an axis draws: those of its current locations inside the view interval (matplotlib's own rule
    in Axis._update_ticks, through public calls); a tick object beyond the locations is a spare, not drawn."""
    lo, hi = sorted(axis.get_view_interval())
    tr = axis.get_transform()
    t_lo, t_hi = sorted(float(v) for v in tr.transform(np.array([lo, hi])))
    tol = 1e-10 * (t_hi - t_lo)
    out = []
    for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks), (axis.get_minorticklocs(), axis.get_minor_ticks)):
        for tick in ticks(len(locs)):
            loc = float(tr.transform(np.array([tick.get_loc()]))[0])
            if np.isfinite(loc) and t_lo - tol <= loc <= t_hi + tol:
                out.append(tick)
    return out


def drawn_texts(artist: Any) -> list[Any]:
    """Every non-empty text `artist` draws (a figure: titles, axis labels, tick labels, legends, annotations),
    following the rules of matplotlib's drawing: an invisible artist hides its children, an axes with its axis
    turned off draws no axis, an axis draws the labels of the ticks it draws only."""
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.text import Text

    if not artist.get_visible():
        return []
    if isinstance(artist, Text):
        return [artist] if artist.get_text().strip() else []
    if isinstance(artist, Axis):
        labels = [lab for t in _ticks_drawn(artist) for lab in (t.label1, t.label2)]
        return [t for t in [*labels, artist.label, artist.offsetText] if t.get_visible() and t.get_text().strip()]
    children = artist.get_children()
    if isinstance(artist, Axes) and not artist.axison:
        children = [c for c in children if not isinstance(c, Axis)]
    return [t for c in children for t in drawn_texts(c)]


def text_problems(fig: Any) -> list[str]:
    """What makes a drawn figure's text unreadable: two texts whose boxes overlap, a text that leaves the figure.
    Measured with the renderer of the last drawing (call after savefig at the figure's dpi); [] when none."""
    figure = getattr(fig, "figure", fig)
    renderer = figure.canvas.get_renderer()
    texts = drawn_texts(figure)
    if not texts:
        return []
    boxes = np.array([t.get_window_extent(renderer).extents for t in texts])  # x0, y0, x1, y1 in pixels
    w, h = figure.bbox.width, figure.bbox.height
    out = []
    outside = (boxes[:, :2] < -OVERLAP_PX).any(axis=1) | (boxes[:, 2] > w + OVERLAP_PX) | (boxes[:, 3] > h + OVERLAP_PX)
    for i in np.flatnonzero(outside):
        out.append(f"'{texts[i].get_text()}' extends beyond the figure")
    dx = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    dy = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    pairs = np.argwhere(np.triu((dx > OVERLAP_PX) & (dy > OVERLAP_PX), k=1))
    for i, j in pairs[:5]:
        out.append(f"'{texts[i].get_text()}' and '{texts[j].get_text()}' overlap")
    if len(pairs) > 5:
        out.append(f"and {len(pairs) - 5} more overlapping pairs of texts")
    return out


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
    problems = text_problems(fig)  # the texts as the PNG drew them
    fig.savefig(pdf, format="pdf", metadata={"CreationDate": None})
    plt.close(fig)
    return Figure(name, title, caption, png.getvalue(), pdf.getvalue(), problems)


def _emit(fig: Any, name: str, title: str, caption: str) -> Figure:
    """Render through this module's `_render`, looked up at call time, so that a replacement of it
    (tests/test_report.py's FigureSpy) sees every figure."""
    return _render(fig, name, title, caption)
