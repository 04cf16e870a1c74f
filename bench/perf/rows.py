"""One perf measurement (`PerfRow`) and what tells it from every other (`RowId`).

Why typed: which measurement a row is (the ceiling in the suite's or in the article's
configuration, the suite's loop at another precision, a frozen trial warm or cold) is
its identity, read by the summary and the projection; it is never parsed out of, or
matched against, the free-text `note`, which is for readers only. perf.csv keeps its
columns (`COLUMNS`): `as_dict` writes them, `from_dict` reads them back.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.perf.machine import loadavg
from bench.perf.settings import PerfCase

COLUMNS = (
    "case",
    "backbone",
    "resolution",
    "weights",
    "path",
    "precision",
    "memory_format",
    "batch_size",
    "images",
    "seconds",
    "repeats",
    "images_per_second",
    "spread",
    "loadavg_1m",
    "note",
)
SETTINGS = ("suite", "article")


@dataclass(frozen=True)
class RowId:
    """What was measured. `path`: a_train, a_forward (the ceiling), b_suite_train (and
    b_suite_train_alt: the suite at the ceiling's precision), c_article_train, d_<method>_<label>
    (frozen trials), e_suite_eval. `setting`: "article" for the ceiling in the article's
    configuration (fp32, default layout, batch 100, SGD), which perf.csv tells apart only in
    its note; "suite" for every other row."""

    case: PerfCase
    path: str
    precision: str
    memory_format: str
    batch_size: int
    setting: str = "suite"

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"setting '{self.setting}' is not one of: {', '.join(SETTINGS)}")


@dataclass(frozen=True)
class PerfRow:
    """One measurement: its identity, the weights it ran with, and its timed units' summary."""

    id: RowId
    weights: str  # "pretrained", or "scratch (random init; same speed)" where no offline weights exist
    images: int  # per timed unit (the first unit's)
    seconds: float  # the median unit's
    repeats: int  # timed units
    images_per_second: float  # the median unit's rate: a burst of load from other processes moves it less
    spread: float  # (fastest - slowest unit's rate) / the median rate: how much the machine's load moved it
    loadavg_1m: float  # at the end of the measurement (these machines are shared)
    note: str = ""

    def describe(self) -> str:
        """ "precision format bs N: R img/s": how the summary and the log name a measurement."""
        i = self.id
        return f"{i.precision} {i.memory_format} bs {i.batch_size}: {self.images_per_second:.0f} img/s"

    def as_dict(self) -> dict:
        """The perf.csv / perf.json row (`COLUMNS`, in that order)."""
        i = self.id
        return {
            "case": i.case.name,
            "backbone": i.case.backbone,
            "resolution": i.case.resolution,
            "weights": self.weights,
            "path": i.path,
            "precision": i.precision,
            "memory_format": i.memory_format,
            "batch_size": i.batch_size,
            "images": self.images,
            "seconds": self.seconds,
            "repeats": self.repeats,
            "images_per_second": self.images_per_second,
            "spread": self.spread,
            "loadavg_1m": self.loadavg_1m,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, r: dict) -> PerfRow:
        """A perf.csv row back (numbers from text). perf.csv has no column for `setting`, so a row read
        back is a "suite" row: the projection reads only (b) and (e), which are."""
        num = lambda k, default="nan": float(r.get(k) or default)  # noqa: E731
        backbone, _, pixels = r["case"].partition("@")
        case = PerfCase(r.get("backbone") or backbone, int(num("resolution", pixels or "0")))
        rid = RowId(case, r["path"], r.get("precision", ""), r.get("memory_format", ""), int(num("batch_size", "0")))
        return cls(
            rid,
            r.get("weights", ""),
            int(num("images", "0")),
            num("seconds"),
            int(num("repeats", "0")),
            num("images_per_second"),
            num("spread", "0"),
            num("loadavg_1m"),
            r.get("note", ""),
        )


def measured(rid: RowId, weights: str, units: list[tuple[int, float]], note: str = "") -> PerfRow:
    """One measurement from its timed units (images, seconds): the rate is the median unit's,
    which a burst of load from other processes moves less than the mean."""
    rates = sorted(n / t for n, t in units if t > 0)
    median = statistics.median(rates) if rates else 0.0
    seconds = statistics.median(t for _, t in units) if units else 0.0
    return PerfRow(
        rid,
        weights,
        images=units[0][0] if units else 0,
        seconds=round(seconds, 4),
        repeats=len(units),
        images_per_second=round(median, 2),
        spread=round((rates[-1] - rates[0]) / median, 3) if len(rates) > 1 and median else 0.0,
        loadavg_1m=loadavg(),
        note=note,
    )
