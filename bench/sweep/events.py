"""What `bench.sweep.run` tells its caller while it works (the events, and the live `Progress` of each
worker) and what it returns (`SweepResult`).

Why data and not printed lines: the command line prints each event exactly as it always has
(bench/cli/sweep.py), a notebook may show them otherwise or keep them (`SweepResult.events`), and
a test reads them without parsing text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from bench.history import HistoryRow
    from bench.records import Cell, GridStatus
    from bench.report import ReportResult
    from bench.run_config import RunConfig
    from bench.sweep.experiment import Experiment
    from bench.sweep.projection import Projection


@dataclass(frozen=True)
class Planned:
    """Checked, before any work: the warnings to say first, the grid, the device."""

    experiment: Experiment
    device: torch.device
    warnings: list[str]


@dataclass(frozen=True)
class Projecting:
    """The grid's cost is about to be measured (a few seconds per configuration unless cached)."""

    device: torch.device
    cache_path: Path | None


@dataclass(frozen=True)
class AlreadyDone:
    """What a resumed grid's storage already holds, and what the rest projects to for one worker
    (bench/sweep/status.py `remaining`: the projection scaled by what the finished items took)."""

    trials: tuple[int, int]  # (done, total)
    finals: tuple[int, int]
    seconds: float | None  # None: a cell has no projected cost
    basis: str


@dataclass(frozen=True)
class Projected:
    """The grid's projected cost here, for `parallel` workers; `advice` names cheaper ways beyond a day;
    `done`: a resumed grid's finished part (None: nothing is finished yet)."""

    experiment: Experiment
    projection: Projection
    device: torch.device
    parallel: int
    advice: str | None
    done: AlreadyDone | None = None


@dataclass(frozen=True)
class CellBudget:
    """What one cell trains in a final run (a dry run lists them): steps and batch, or a probe's folds."""

    label: str
    probe: bool
    steps: int
    batch_size: int
    folds: int  # a probe's cross-validation folds (0: not a probe)
    resolution: int


@dataclass(frozen=True)
class DryRun:
    """`dry_run=True`: each cell's budget and the rates the projection used; nothing trained or written."""

    budgets: list[CellBudget]
    projection: Projection


@dataclass(frozen=True)
class Starting:
    """The work starts (config.toml is about to be written), here or in the workers watched from here: the
    moment a display of the grid's progress is made."""

    experiment: Experiment


@dataclass(frozen=True)
class Interrupted:
    """Ctrl-C or SIGTERM stopped the sweep; what is done is kept and the same call resumes."""

    status: GridStatus


@dataclass(frozen=True)
class WorkerFailed:
    """A `parallel` worker exited with an error; its log says why."""

    index: int
    returncode: int
    log: Path


@dataclass(frozen=True)
class Finished:
    """The sweep stopped (complete or not); runs.csv is written. The report, if any, comes next."""

    experiment: Experiment
    status: GridStatus
    code: int


@dataclass(frozen=True)
class Reported:
    """The report after a complete sweep: written (`result`), or why not (`skipped`: bench.report could
    not be imported; `error`: it failed, and the sweep's results stand on their own)."""

    out_dir: Path
    result: ReportResult | None = None
    skipped: str | None = None
    error: BaseException | None = None


SweepEvent = Planned | Projecting | Projected | DryRun | Starting | Interrupted | WorkerFailed | Finished | Reported


class ReportUnavailable(Exception):
    """Raised by a report writer whose package could not be imported: the report is skipped, said so."""


class MachineFault(Exception):
    """A fault of the machine, not of the input (full disk, read-only folder, lost database) while the
    sweep ran: one line saying what failed and where; everything finished so far is in the storage."""


@dataclass
class SweepResult:
    """What `run` did. `code` is the command's exit code: 0 complete (or a dry run), 1 incomplete
    (a worker failed, or items are left), 130 / 143 interrupted by SIGINT / SIGTERM (work kept)."""

    experiment: Experiment
    code: int
    status: GridStatus | None = None  # None: a dry run
    projection: Projection | None = None  # None: a worker (`worker=True`) projects nothing
    report: ReportResult | None = None
    events: list[SweepEvent] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every cell searched and every final run finished."""
        return self.status is not None and self.status.complete

    @property
    def out_dir(self) -> Path:
        return self.experiment.out_dir

    @property
    def runs_csv(self) -> Path:
        """One row per finished final run (rewritten after every run)."""
        return self.experiment.out_dir / "runs.csv"

    @property
    def records_dir(self) -> Path:
        """`records/<run_id>.json`, one per finished final run."""
        return self.experiment.out_dir / "records"

    @property
    def config_toml(self) -> Path:
        """The resolved experiment, as the workers and a resumed sweep read it."""
        return self.experiment.out_dir / "config.toml"


# ---------------------------------------------------------------- the live progress


class Progress(Protocol):
    """What the sweep tells its display (bench/cli/display.py has a rich one and a plain one)."""

    def status(self, status: GridStatus) -> None: ...
    def item_start(self, item: WorkItem) -> None: ...
    def epoch(self, row: HistoryRow) -> None: ...
    def item_end(self, item: WorkItem, outcome: str) -> None: ...
    def log(self, message: str) -> None: ...


class NullProgress:
    """A Progress that shows nothing (library use, tests)."""

    def status(self, status: GridStatus) -> None:
        pass

    def item_start(self, item: WorkItem) -> None:
        pass

    def epoch(self, row: HistoryRow) -> None:
        pass

    def item_end(self, item: WorkItem, outcome: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


@dataclass
class WorkItem:
    """One piece of work a worker claims: a search trial's slot, or a final run of one seed."""

    kind: str  # "trial" or "final"
    cell: Cell
    study_id: int
    slot: int = 0  # trial: the slot number; final: the seed
    cfg: RunConfig | None = None
    seed: int = 0  # trial: the seed whose subset it searches on (the first of a pool)
    per_seed: bool = False

    @property
    def label(self) -> str:
        """How the display and the log name the item."""
        if self.kind == "trial":
            return f"trial {self.slot + 1}{f' · seed {self.seed}' if self.per_seed else ''} · {self.cell.label}"
        return f"final seed {self.slot} · {self.cell.label}"


class Relay:
    """The one Progress `run` hands the sweep: it relays everything to `target` (the caller's Progress,
    which may be set later: the CLI makes its display once the grid is known), calls `on_status` with each
    new status of the grid, and enters a target that is a context manager (a live view) around the work."""

    def __init__(self, target: Progress | None = None, on_status: Callable[[GridStatus], None] | None = None) -> None:
        self.target, self.on_status = target, on_status

    def __enter__(self) -> Relay:
        if hasattr(self.target, "__enter__"):
            self.target.__enter__()  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: Any) -> None:
        if hasattr(self.target, "__exit__"):
            self.target.__exit__(*exc)  # type: ignore[union-attr]

    def status(self, status: GridStatus) -> None:
        if self.on_status is not None:
            self.on_status(status)
        if self.target is not None:
            self.target.status(status)

    def item_start(self, item: Any) -> None:
        if self.target is not None:
            self.target.item_start(item)

    def epoch(self, row: HistoryRow) -> None:
        if self.target is not None:
            self.target.epoch(row)

    def item_end(self, item: Any, outcome: str) -> None:
        if self.target is not None:
            self.target.item_end(item, outcome)

    def log(self, message: str) -> None:
        if self.target is not None:
            self.target.log(message)
