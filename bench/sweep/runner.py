"""`bench.sweep.run`: the whole sweep as one call, for the command line, a script or a notebook.

    import bench.sweep
    result = bench.sweep.run("quick", results_dir="results", data_dir="data")
    result.status.complete, result.runs_csv, result.code

Why here and not in the command: the sweep's control flow (check, announce, project, dry run or
execute here or in K workers, export, report) is the library's; `python cli.py sweep` only parses its
flags, calls `run`, and prints the events `run` hands it (`on_event`) and the live progress
(`progress`). So a notebook gets the same checks, the same rows and the same report as the CLI.

What `run` does to the process, and why: it sets torch's CPU threads (`threads`, or the cores shared out
among `parallel` workers), the CUDA numerics of the experiment (deterministic kernels, TF32), and while
it trains it takes SIGTERM (a scheduler's stop) as Ctrl-C, and SIGINT back where a background shell
ignored it: the trial or run in progress is handed back to the storage and the same call resumes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.registry import UserError
from bench.sweep.experiment import Experiment
from bench.sweep.prepare import check, load

if TYPE_CHECKING:
    import torch

    from bench.data import Cifar10
    from bench.records import GridStatus
    from bench.report import ReportResult
    from bench.sweep.projection import ItemCost, Projection
    from bench.sweep.worker import Progress, Sweep


# ---------------------------------------------------------------- what `run` tells its caller


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
class Projected:
    """The grid's projected cost here, for `parallel` workers; `advice` names cheaper ways beyond a day."""

    experiment: Experiment
    projection: Projection
    device: torch.device
    parallel: int
    advice: str | None


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
    """The work starts (config.toml is about to be written): here, or in `parallel` workers watched from here."""

    experiment: Experiment
    parallel: int
    worker: bool


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


# ---------------------------------------------------------------- the process around a sweep


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


class _Stop(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping us): stop like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """A scheduler's SIGTERM takes the Ctrl-C path: the claim is given back, the same command resumes."""
    raise _Stop()


def _listen_to_sigint() -> None:
    """A sweep started in the background (`nohup python cli.py sweep ... &`) inherits SIGINT ignored (the shell
    does that to background jobs), so a user's `kill -INT` or Ctrl-C after `fg` did nothing: take it back, so
    that SIGINT stops the sweep cleanly like SIGTERM, and the same command resumes."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_devices(dev: torch.device, k: int) -> list[str | None]:
    """The device each of K `--parallel` workers trains on: on a CUDA machine whose sweep names no
    GPU (device auto or cuda), worker i takes cuda:(i % N) of the N GPUs, one worker per GPU first
    (docs/gpu.md: more workers than GPUs share them, best under MPS). None: the worker keeps the
    experiment's device (a CPU, or the one GPU the sweep named)."""
    if dev.type != "cuda" or dev.index is not None:
        return [None] * k
    import torch

    n = max(1, torch.cuda.device_count())
    return [f"cuda:{i % n}" for i in range(k)]


def worker_commands(base: list[str], dev: torch.device, k: int, threads: int | None) -> list[list[str]]:
    """The command line of each of K workers: the shared one, its thread count (CPU workers share the
    cores: `set_threads`), its GPU (`worker_devices`)."""
    cmds = []
    for device in worker_devices(dev, k):
        cmd = list(base)
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if device is not None:
            cmd += ["--device", device]
        cmds.append(cmd)
    return cmds


def set_threads(threads: int | None, dev: torch.device, parallel: int) -> int | None:
    """torch's CPU threads in this process: `threads`, or the cores shared out among CPU workers
    (K workers with a thread per core each would fight over the same cores). On a GPU the workers'
    CPU threads only launch kernels and are not divided. Returns the count set."""
    if threads is None and dev.type == "cpu" and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


@contextlib.contextmanager
def _entered(progress: Any) -> Iterator[None]:
    """A progress that is also a context manager (the CLI's live view) is entered around the work."""
    if hasattr(progress, "__enter__") and hasattr(progress, "__exit__"):
        with progress:
            yield
    else:
        yield


class _StatusCallback:
    """`on_progress`: a plain function of the grid's status, as a Progress (the other hooks do nothing)."""

    def __init__(self, fn: Callable[[GridStatus], None], inner: Progress | None) -> None:
        self.fn, self.inner = fn, inner

    def __enter__(self) -> _StatusCallback:
        if self.inner is not None and hasattr(self.inner, "__enter__"):
            self.inner.__enter__()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.inner is not None and hasattr(self.inner, "__exit__"):
            self.inner.__exit__(*exc)  # type: ignore[attr-defined]

    def status(self, status: GridStatus) -> None:
        self.fn(status)
        if self.inner is not None:
            self.inner.status(status)

    def item_start(self, item: Any) -> None:
        if self.inner is not None:
            self.inner.item_start(item)

    def epoch(self, row: dict) -> None:
        if self.inner is not None:
            self.inner.epoch(row)

    def item_end(self, item: Any, outcome: str) -> None:
        if self.inner is not None:
            self.inner.item_end(item, outcome)

    def log(self, message: str) -> None:
        if self.inner is not None:
            self.inner.log(message)


# ---------------------------------------------------------------- the call


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
    report: bool = True,
    worker: bool = False,
    progress: Progress | None = None,
    on_progress: Callable[[GridStatus], None] | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
    **overrides: Any,
) -> SweepResult:
    """Check, project and run an experiment grid; return what it did.

    `experiment`: a name (experiments/NAME.toml; None: default), a path to a TOML file (a `Path`, or text
    ending in .toml), or a loaded `Experiment`; `config` names the file explicitly (`--config`).
    `overrides` are the CLI's flags as keywords (`fractions="0.01,0.1"`, `methods="finetune,sft"`,
    `seeds=2`, `trials=3`, `steps=20`, `name=`, `storage=`, ...; see `bench.sweep.prepare.load`);
    with a loaded `Experiment`, change it with `dataclasses.replace` instead. `progress` gets the live
    progress (bench.sweep.worker.Progress), `on_progress` each new status of the grid, `on_event` each
    step of the call (`SweepEvent`); `result.events` keeps them too. Bad input raises `UserError`
    before anything is written; a fault of the machine while it runs raises `MachineFault`."""
    events: list[SweepEvent] = []

    def emit(event: SweepEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    exp = _experiment(experiment, config, results_dir, data_dir, device, overrides)
    checked = check(exp, download=download)
    from bench.train.device import Numerics, configure_numerics

    # every worker reads them from config.toml; each run records them
    configure_numerics(Numerics(deterministic=exp.deterministic, tf32=exp.tf32))
    _listen_to_sigint()
    n_threads = set_threads(threads, checked.device, parallel)
    result = SweepResult(exp, 0, events=events)
    if not worker:
        emit(Planned(exp, checked.device, checked.warnings))
        result.projection = _project(exp, checked.data, checked.device, parallel, emit)
        if dry_run:
            emit(DryRun(_budgets(exp, checked.data, checked.device), result.projection))
            return result
    if on_progress is not None:
        progress = _StatusCallback(on_progress, progress)  # type: ignore[assignment]
    costs = None if result.projection is None else result.projection.costs
    emit(Starting(exp, parallel, worker))
    result.status, result.code = _execute(
        exp, checked.data, checked.device, parallel=parallel, threads=n_threads, worker=worker, costs=costs,
        progress=progress, emit=emit,
    )  # fmt: skip
    if not worker:
        emit(Finished(exp, result.status, result.code))
        if result.code == 0 and report:
            result.report = _report(exp.out_dir, emit)
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
    if isinstance(experiment, Path) or (isinstance(experiment, str) and experiment.endswith(".toml")):
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
    emit(Projected(exp, p, dev, parallel, advice(exp, p, dev, cuda)))
    return p


def _budgets(exp: Experiment, data: Cifar10, dev: torch.device) -> list[CellBudget]:
    """Each cell's final-run budget, as the sweep would configure it (the first seed's)."""
    from bench.models.methods import METHODS
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
    progress: Progress | None,
    emit: Callable[[SweepEvent], None],
) -> tuple[GridStatus, int]:
    """Write config.toml (the workers and a resumed sweep read it), then train here or in K workers.
    SIGTERM stops like Ctrl-C. A fault of the machine (full disk, lost database) is a MachineFault."""
    from bench.files import atomic_write
    from bench.sweep.experiment import to_toml

    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if not worker:
            exp.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(exp.out_dir / "config.toml", lambda f: f.write(to_toml(exp)), mode="w")
        if parallel > 1 and not worker:
            return _run_parallel(exp, data, dev, parallel, threads, costs, progress, emit)
        return _run_here(exp, data, dev, costs, progress, emit)
    except UserError:  # e.g. a journal damaged by another program while we ran
        raise
    except Exception as exc:
        message = runtime_failure(exc)
        if message is None:
            raise
        raise MachineFault(message) from exc
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _interrupted(exc: KeyboardInterrupt) -> int:
    """The exit code of a stop: 143 for SIGTERM, 130 for SIGINT (Ctrl-C)."""
    return 143 if isinstance(exc, _Stop) else 130


def _run_here(
    exp: Experiment,
    data: Cifar10,
    dev: torch.device,
    costs: dict[Any, ItemCost] | None,
    progress: Progress | None,
    emit: Callable[[SweepEvent], None],
) -> tuple[GridStatus, int]:
    """One worker, this process. Exit code: 0 complete, 1 incomplete, 130/143 interrupted (work kept)."""
    from bench.sweep.export import export_runs
    from bench.sweep.worker import Sweep

    sweep = Sweep(exp, data, dev, progress=progress)
    sweep.costs = costs
    try:
        with _entered(progress):
            sweep.run()
    except KeyboardInterrupt as exc:
        code = _interrupted(exc)
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


def _worker_env(exp: Experiment) -> dict[str, str]:
    """The workers' environment: this checkout on PYTHONPATH, and a database password handed over privately
    (config.toml has the URL without it)."""
    env = dict(os.environ)
    # `-m bench` finds this checkout from any working directory, installed or not.
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    if "://" in exp.storage:
        import sqlalchemy

        password = sqlalchemy.engine.make_url(exp.storage).password
        if password and password != "***":
            env["SFT_BENCH_DB_PASSWORD"] = str(password)
    return env


def _stop_workers(procs: list[tuple[subprocess.Popen, Any]]) -> None:
    """Ctrl-C or SIGTERM here: pass SIGINT on to every live worker and give them a minute to hand back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + 60
    for p, _ in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_parallel(
    exp: Experiment,
    data: Cifar10,
    dev: torch.device,
    k: int,
    threads: int | None,
    costs: dict[Any, ItemCost] | None,
    progress: Progress | None,
    emit: Callable[[SweepEvent], None],
) -> tuple[GridStatus, int]:
    """K independent workers on the same storage (exactly what several machines do), watched from here."""
    from bench.sweep.export import export_runs
    from bench.sweep.journal import open_nofollow
    from bench.sweep.worker import NullProgress, Sweep

    out = exp.out_dir
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "bench", "sweep", "--config", str(out / "config.toml"), "--worker", "--no-report"]
    env = _worker_env(exp)
    procs = []
    for i, cmd in enumerate(worker_commands(base, dev, k, threads)):
        log = open_nofollow(logs / f"worker-{i}.log")  # a link planted there is never followed
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    monitor: Sweep = Sweep(exp, data, dev, read_only=True)
    monitor.costs = costs
    shown = progress or NullProgress()
    code = 0
    try:
        with _entered(progress):
            while any(p.poll() is None for p, _ in procs):
                shown.status(monitor.survey())
                time.sleep(2)
    except KeyboardInterrupt as exc:
        code = _interrupted(exc)
        _stop_workers(procs)
    for i, (p, log) in enumerate(procs):
        log.close()
        if p.returncode not in (0, 130, 143) and code == 0:
            emit(WorkerFailed(i, p.returncode, logs / f"worker-{i}.log"))
            code = 1
    writer = Sweep(exp, data, dev)
    export_runs(writer)
    status = writer.survey()
    if code == 0 and not status.complete:
        code = 1
    return status, code


def _report(out: Path, emit: Callable[[SweepEvent], None]) -> ReportResult | None:
    """The report of a complete sweep (bench.report); a failing report never loses the sweep."""
    try:
        from bench.report import write_report
    except Exception as exc:  # broken: the sweep's results stand on their own
        emit(Reported(out, skipped=f"bench.report could not be imported: {type(exc).__name__}: {exc}"))
        return None
    try:
        result = write_report(out)
    except Exception as exc:
        emit(Reported(out, error=exc))
        return None
    emit(Reported(out, result=result))
    return result
