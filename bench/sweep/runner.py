"""`bench.sweep.run`: the whole sweep as one call, for the command line, a script or a notebook.

    import bench.sweep
    result = bench.sweep.run("quick", results_dir="results", data_dir="data")
    result.status.complete, result.runs_csv, result.code

Why here and not in the command: the sweep's control flow (check, announce, project, dry run or
execute here or in K workers, export, then the report it is handed) is the library's; `python cli.py sweep` only parses its
flags, calls `run`, and prints the events `run` hands it (`on_event`, bench/sweep/events.py) and the
live progress (`progress`). So a notebook gets the same checks, the same rows and the same report.

What `run` does to the process, and why: it sets torch's CPU threads (`threads`, or the cores shared out
among `parallel` workers), the CUDA numerics of the experiment (deterministic kernels, TF32), and while
it trains it takes SIGTERM (a scheduler's stop) as Ctrl-C, and SIGINT back where a background shell
ignored it: the trial or run in progress is handed back to the storage and the same call resumes.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.registry import UserError
from bench.sweep.events import (
    AlreadyDone,
    CellBudget,
    DryRun,
    Finished,
    Interrupted,
    MachineFault,
    Planned,
    Progress,
    Projected,
    Projecting,
    Relay,
    Reported,
    ReportUnavailable,
    Starting,
    SweepEvent,
    SweepResult,
)
from bench.sweep.experiment import Experiment
from bench.sweep.parallel import run_parallel, set_threads
from bench.sweep.prepare import check, load
from bench.sweep.signals import interrupted_code, listen_to_sigint, sigterm_stops

if TYPE_CHECKING:
    import torch

    from bench.data import Cifar10
    from bench.records import GridStatus
    from bench.report import ReportResult
    from bench.sweep.projection import ItemCost, Projection


def run(
    experiment: str | Path | Experiment | None = None,
    *,
    config: str | Path | None = None,
    results_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    device: str | None = None,
    parallel: int = 1,
    threads: int | None = None,
    dry_run: bool = False,
    download: bool = True,
    report: Callable[[Path], ReportResult] | None = None,
    worker: bool = False,
    progress: Progress | None = None,
    on_progress: Callable[[GridStatus], None] | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    **overrides: Any,
) -> SweepResult:
    """Check, project and run an experiment grid; return what it did.

    `experiment`: a name (experiments/NAME.toml; None: default), a TOML file (a `Path`), or a loaded
    `Experiment`; `config` names the file as text or a Path (`--config`).
    `overrides` are the CLI's flags as keywords (`fractions="0.01,0.1"`, `methods="finetune,sft"`,
    `seeds=2`, `trials=3`, `steps=20`, `name=`, `storage=`, ...; see `bench.sweep.prepare.load`);
    with a loaded `Experiment`, change it with `dataclasses.replace` instead. `progress` gets the live
    progress (bench.sweep.events.Progress), `on_progress` each new status of the grid, `on_event` each
    step of the call (`SweepEvent`); `result.events` keeps them too. `report`: a writer called with the
    results folder after a complete sweep (`bench.report.write_report`; None: no report). Bad input raises `UserError`
    before anything is written; a fault of the machine while it runs raises `MachineFault`."""
    events: list[SweepEvent] = []

    def emit(event: SweepEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    exp = _experiment(experiment, config, results_dir, data_dir, device, overrides)
    checked = check(exp, download=download)
    from bench.numerics import Numerics, configure_numerics

    # every worker reads them from config.toml; each run records them
    configure_numerics(Numerics(deterministic=exp.deterministic, tf32=exp.tf32))
    listen_to_sigint()
    n_threads = set_threads(threads, checked.device, parallel)
    result = SweepResult(exp, 0, events=events)
    if not worker:
        emit(Planned(exp, checked.device, checked.warnings))
        result.projection = _project(exp, checked.data, checked.device, parallel, emit)
        if dry_run:
            emit(DryRun(_budgets(exp, checked.data, checked.device), result.projection))
            return result
    relay = Relay(progress, on_progress)
    costs = None if result.projection is None else result.projection.costs
    emit(Starting(exp))
    result.status, result.code = _execute(
        exp, checked.data, checked.device, parallel=parallel, threads=n_threads, worker=worker, costs=costs,
        progress=relay, emit=emit,
    )  # fmt: skip
    if not worker:
        emit(Finished(exp, result.status, result.code))
        if result.code == 0 and report is not None:
            result.report = _report(exp.out_dir, report, emit)
    return result


def _experiment(
    experiment: str | Path | Experiment | None,
    config: str | Path | None,
    results_dir: str | Path | None,
    data_dir: str | Path | None,
    device: str | None,
    overrides: dict[str, Any],
) -> Experiment:
    """The experiment `run` was given: loaded (a name or a file) with the overrides merged in."""
    if isinstance(experiment, Experiment):
        if config is not None or overrides or results_dir is not None or data_dir is not None or device is not None:
            raise UserError("overrides apply to an experiment name or file; change a loaded Experiment with dataclasses.replace")
        return experiment
    if isinstance(experiment, Path):  # text is a name, as --experiment takes it: the CLI's messages stay its own
        if config is not None:
            raise UserError("give either --config or --experiment, not both")
        config, experiment = Path(experiment), None
    return load(
        None if config is None else Path(config),
        experiment,
        results_dir=None if results_dir is None else Path(results_dir),
        data_dir=None if data_dir is None else Path(data_dir),
        device=device,
        **overrides,
    )


class _NoStorage:
    """A dry run reads no storage: resolving configs needs none."""


def _project(exp: Experiment, data: Cifar10, dev: torch.device, parallel: int, emit: Callable[[SweepEvent], None]) -> Projection:
    """The grid's projected cost on this device (bench/sweep/projection.py), from cached rates where this
    device measured them before (seconds), else measured now (a few seconds per configuration)."""
    import torch

    from bench.sweep.projection import advice, project
    from bench.sweep.rates import RateCache, cache_path
    from bench.sweep.worker import Sweep

    cache = RateCache(cache_path())
    monitor = Sweep(exp, data, dev, read_only=True, storage=_NoStorage())  # type: ignore[arg-type]
    emit(Projecting(dev, cache.path))
    p = project(exp, monitor, dev, cache)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    emit(Projected(exp, p, dev, parallel, advice(exp, p, dev, cuda), _already_done(exp, data, dev, p)))
    return p


def _already_done(exp: Experiment, data: Cifar10, dev: torch.device, p: Projection) -> AlreadyDone | None:
    """A resumed grid's finished part and what the rest projects to, read from its storage without writing
    (None where the storage holds no finished item). Why: the projection is of the whole grid; a user
    resuming a grid that is mostly done needs to know what is left, before and without starting it."""
    from bench.sweep.status import remaining
    from bench.sweep.storage import open_storage, storage_exists
    from bench.sweep.worker import Sweep

    if not storage_exists(exp):
        return None
    status = Sweep(exp, data, dev, read_only=True, storage=open_storage(exp, read_only=True)).survey()
    if status.trials[0] == 0 and status.runs[0] == 0:
        return None
    left = remaining(status, p.costs)
    return AlreadyDone(status.trials, status.runs, None if left is None else left[0], "" if left is None else left[1])


def _budgets(exp: Experiment, data: Cifar10, dev: torch.device) -> list[CellBudget]:
    """Each cell's final-run budget, as the sweep would configure it (the first seed's)."""
    from bench.models.kinds import METHODS
    from bench.sweep.worker import Sweep

    monitor = Sweep(exp, data, dev, read_only=True, storage=_NoStorage())  # type: ignore[arg-type]
    out = []
    for c in exp.cells():
        cfg = monitor.config(c, exp.seeds[0], dict(exp.fixed_hparams(c.method)), "final")
        probe = METHODS.get(c.method).is_probe
        folds = cfg.probe.folds if probe else 0  # only a probe has folds (its config's probe is None otherwise)
        out.append(CellBudget(c.label, probe, cfg.hp.steps, cfg.hp.batch_size, folds, cfg.resolution))
    return out


def _execute(
    exp: Experiment,
    data: Cifar10,
    dev: torch.device,
    *,
    parallel: int,
    threads: int | None,
    worker: bool,
    costs: dict[Any, ItemCost] | None,
    progress: Relay,
    emit: Callable[[SweepEvent], None],
) -> tuple[GridStatus, int]:
    """Write config.toml (the workers and a resumed sweep read it), then train here or in K workers.
    SIGTERM stops like Ctrl-C. A fault of the machine (full disk, lost database) is a MachineFault."""
    from bench.files import atomic_write
    from bench.sweep.experiment import to_toml

    try:
        with sigterm_stops():
            if not worker:
                exp.out_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(exp.out_dir / "config.toml", lambda f: f.write(to_toml(exp)), mode="w")
            if parallel > 1 and not worker:
                return run_parallel(exp, data, dev, parallel, threads, costs, progress, emit)
            return _run_here(exp, data, dev, costs, progress, emit)
    except UserError:  # e.g. a journal damaged by another program while we ran
        raise
    except Exception as exc:
        message = runtime_failure(exc)
        if message is None:
            raise
        raise MachineFault(message) from exc


def _run_here(
    exp: Experiment,
    data: Cifar10,
    dev: torch.device,
    costs: dict[Any, ItemCost] | None,
    progress: Relay,
    emit: Callable[[SweepEvent], None],
) -> tuple[GridStatus, int]:
    """One worker, this process. Exit code: 0 complete, 1 incomplete, 130/143 interrupted (work kept)."""
    from bench.sweep.export import export_runs
    from bench.sweep.worker import Sweep

    sweep = Sweep(exp, data, dev, progress=progress)
    sweep.costs = costs
    try:
        with progress:
            sweep.run()
    except KeyboardInterrupt as exc:
        code = interrupted_code(exc)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
        try:
            export_runs(sweep)
            status = sweep.survey()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        emit(Interrupted(status))
        return status, code
    export_runs(sweep)
    status = sweep.survey()
    return status, 0 if status.complete else 1


def _report(out: Path, write: Callable[[Path], ReportResult], emit: Callable[[SweepEvent], None]) -> ReportResult | None:
    """The report of a complete sweep, by the writer the caller handed over (the sweep never imports
    bench.report: the report reads the sweep's storage, so that import would close a circle); a failing
    report never loses the sweep."""
    try:
        result = write(out)
    except ReportUnavailable as exc:  # the writer's package could not be imported: the results stand on their own
        emit(Reported(out, skipped=str(exc)))
        return None
    except Exception as exc:
        emit(Reported(out, error=exc))
        return None
    emit(Reported(out, result=result))
    return result


def runtime_failure(exc: BaseException) -> str | None:
    """One line for a fault of the machine, not of the input (full disk, read-only folder, lost
    database): what failed and where; everything finished so far is in the storage. None: a bug."""
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        what = exc.strerror or type(exc).__name__
        remedy = {
            errno.ENOSPC: "free some space",
            errno.EDQUOT: "free some space (quota)",
            errno.EROFS: "make the file system writable",
            errno.EACCES: "make it writable",
            errno.EPERM: "make it writable",
        }.get(exc.errno or 0, "fix the cause")
        return f"cannot write{where}: {what}; {remedy}, then run the same command: it resumes where it stopped"
    text = f"{type(exc).__module__}.{type(exc).__name__}"
    if text.startswith(("sqlalchemy.", "psycopg", "optuna.exceptions.StorageInternalError")):
        # Optuna wraps the driver's error in a generic "exception during the commit"; name the cause
        # ("terminating connection due to administrator command", "server closed the connection").
        cause: BaseException = exc
        for _ in range(10):
            nxt = cause.__cause__ or cause.__context__
            if nxt is None:
                break
            cause = nxt
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return f"lost the storage: {first[:300]}; once it is reachable, run the same command: it resumes where it stopped"
    return None
