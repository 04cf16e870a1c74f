"""The sweep's two views: a live Rich one (grid progress, ETA, the current item's bar, best results so far)
and a plain, timestamped log (`--quiet`, log files, schedulers, `--parallel` workers).

Both take the same calls from bench.sweep (status, item_start, epoch, item_end, log), so the sweep
never knows which one it talks to.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bar
from rich.table import Table
from rich.text import Text

from bench.history import HistoryRow


def _hms(seconds: float | None) -> str:
    """Seconds as [Nd ]H:MM:SS; None (no rate measured yet) says so instead of a made-up ETA."""
    if seconds is None:
        return "measuring…"
    seconds = int(seconds)
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{s:02d}"


# ---------------------------------------------------------------- displays


def _status_line(name: str, status: Any, started: float) -> str:
    """The grid in one line: cells, trials, final runs, elapsed, ETA (both views print it)."""
    from bench.records import GridStatus

    assert isinstance(status, GridStatus)
    cd, ct = status.cells_done
    td, tt = status.trials
    rd, rt = status.runs
    eta = "0:00:00" if status.complete else _hms(status.eta_seconds)
    basis = f" ({status.eta_basis})" if status.eta_basis and not status.complete and status.eta_seconds is not None else ""
    return (
        f"{name}: cells {cd}/{ct} · search trials {td}/{tt} · final runs {rd}/{rt} · "
        f"elapsed {_hms(time.time() - started)} · ETA {eta}{basis}"
    )


def summary_table(status: Any, title: str, limit: int | None = None) -> Table:
    """Per cell: mean ± sd test accuracy over seeds, the search's best score and its hyperparameters;
    the best mean per (backbone, fraction) in bold. `limit`: the best rows only (the live view).

    Fits 100 columns: short headers, the backbone and recipe columns only where the grid has more than
    one, and whole hyperparameter entries folded onto further lines (never a name cut in two)."""
    from bench.sweep.export import hparams_entries, summary_rows

    table = Table(title=title, title_justify="left")
    backbones = {cs.cell.backbone for cs in status.cells}
    recipes = {cs.cell.recipe for cs in status.cells}
    columns = [
        ("backbone", "left", len(backbones) > 1),
        ("method", "left", True),
        ("recipe", "left", len(recipes) > 1),
        ("frac", "right", True),
        ("n", "right", True),
        ("test %", "right", True),
        ("val %", "right", True),
        ("trials", "right", True),
        ("pruned", "right", True),
        ("hyperparameters", "left", True),
    ]
    shown = [c for c in columns if c[2]]
    for col, just, _ in shown:
        table.add_column(col, justify=just, overflow="fold", no_wrap=col not in ("hyperparameters",))
    rows = summary_rows(status)
    if limit is not None and len(rows) > limit:
        rows = sorted(rows, key=lambda r: (r.mean is None, -(r.mean or 0)))[:limit]
    best: dict[tuple, float] = {}
    for r in rows:
        key = (r.cell.backbone, r.cell.fraction)
        if r.mean is not None:
            best[key] = max(best.get(key, -1.0), r.mean)
    for r in rows:
        c = r.cell
        acc = "" if r.mean is None else f"{100 * r.mean:.2f} ± {100 * r.std:.2f}"
        if r.mean is not None and r.mean == best.get((c.backbone, c.fraction)):
            acc = f"[bold]{acc}[/]"
        values = {
            "backbone": c.backbone,
            "method": c.method,
            "recipe": c.recipe,
            "frac": f"{100 * c.fraction:g}%",
            "n": str(r.n),
            "test %": acc if not r.failed else f"[red]{escape(r.failed)}[/]",
            "val %": "" if r.best_val is None else f"{100 * r.best_val:.2f}",
            "trials": r.trials,
            "pruned": f"{r.pruned}/{r.diverged}" if r.diverged else str(r.pruned),
            # non-breaking spaces inside an entry: rich folds between entries, never inside one
            "hyperparameters": " ".join(p.replace(" ", "\u00a0") for p in hparams_entries(r.hparams)),
        }
        table.add_row(*(values[col] for col, _, _ in shown))
    return table


class RichDisplay:
    """The live view: the grid's progress and ETA, the current trial or run with its epoch bar,
    and the best results so far."""

    def __init__(self, console: Console, name: str) -> None:
        self.console, self.name = console, name
        self.started = time.time()
        self.status_obj: Any = None
        self.item: Any = None
        self.item_started = 0.0
        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[info]}"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            console=console,
        )
        self.rate_from: tuple[float, int] = (0.0, 0)  # (time, step) the item's rate is measured from
        self.task: Any = None
        self.phase = ""
        self.live = Live(self, console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> RichDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def __rich__(self) -> Group:
        parts: list[Any] = []
        if self.status_obj is not None:
            parts.append(Text(_status_line(self.name, self.status_obj, self.started), style="bold"))
            for r in self.status_obj.running[:8]:
                parts.append(Text(f"  {r.worker}: {r.item} {r.progress}", style="dim"))
        if self.item is not None:
            parts.append(Text(f"▶ {self.item.label}", style="cyan"))
            parts.append(self.bar)
        if self.status_obj is not None:
            parts.append(summary_table(self.status_obj, "best results so far", limit=12))
        return Group(*parts)

    def status(self, status: Any) -> None:
        """A new survey of the grid: drawn at the next refresh."""
        self.status_obj = status

    def item_start(self, item: Any) -> None:
        """A trial or final run starts: a fresh bar for it."""
        self.item, self.item_started, self.phase = item, time.time(), ""
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def epoch(self, row: HistoryRow) -> None:
        """A history row or a step tick: advance the bar of its phase (probe, then train) step by step, with
        the steps per second measured on this phase; the loss and accuracies change at history rows only."""
        now = time.time()
        if row.phase != self.phase or self.task is None:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.phase = row.phase
            self.task = self.bar.add_task(row.phase, total=row.steps, info="", rate="")
            self.rate_from = (now, 0)
        t0, s0 = self.rate_from
        rate = f"{(row.step - s0) / (now - t0):.1f} steps/s" if now > t0 + 1 and row.step > s0 else ""
        if row.tick:
            self.bar.update(self.task, completed=row.step, rate=rate)
            return
        info = f"loss {row.loss:.3f}  train acc {row.train_accuracy:.3f}"
        if row.val_accuracy is not None:
            info += f"  val acc {row.val_accuracy:.3f}"
        self.bar.update(self.task, completed=row.step, info=info, rate=rate)

    def item_end(self, item: Any, outcome: str) -> None:
        """A finished item stays in the scrollback above the live view, with its outcome and time."""
        self.console.print(
            f"{time.strftime('%H:%M:%S')} {item.label}: {outcome} ({time.time() - self.item_started:.1f} s)",
            highlight=False,
            markup=False,
        )
        self.item = None

    def log(self, message: str) -> None:
        """A message from the sweep (recovered claims, a cut journal tail), printed above the live view."""
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)


class PlainDisplay:
    """`--quiet`: plain, timestamped log lines (for log files and schedulers)."""

    def __init__(self, console: Console, name: str) -> None:
        self.console, self.name = console, name
        self.started = time.time()
        self.last = ""
        self.item_started = 0.0

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _print(self, msg: str) -> None:
        """Every line timestamped: a log read hours later must say when."""
        self.console.print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}", highlight=False, markup=False, soft_wrap=True)

    def status(self, status: Any) -> None:
        """The status line, only when the counts changed (not every poll)."""
        line = _status_line(self.name, status, self.started)
        key = line.split(" · elapsed")[0]
        if key != self.last:
            self.last = key
            self._print(line)

    def item_start(self, item: Any) -> None:
        """One line per start."""
        self.item_started = time.time()
        self._print(f"start {item.label}")

    def epoch(self, row: HistoryRow) -> None:
        """One line per history row (step ticks are for the live view only)."""
        if row.tick:
            return
        info = f"  {row.phase} {row.step}/{row.steps} loss {row.loss:.4f} train acc {row.train_accuracy:.4f}"
        if row.val_accuracy is not None:
            info += f" val acc {row.val_accuracy:.4f}"
        self._print(info)

    def item_end(self, item: Any, outcome: str) -> None:
        """One line per end, with its outcome and time."""
        self._print(f"done  {item.label}: {outcome} ({time.time() - self.item_started:.1f} s)")

    def log(self, message: str) -> None:
        """A message from the sweep, timestamped."""
        self._print(message)
