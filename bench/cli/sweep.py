"""`python cli.py sweep`: validate the whole grid, then search and retrain (bench/sweep/).

    python cli.py sweep                                   # experiments/default.toml
    python cli.py sweep --experiment quick                # experiments/quick.toml
    python cli.py sweep --config my.toml --fractions 0.01,0.1 --seeds 5 --parallel 2
    python cli.py sweep --experiment paper --storage postgresql://u:p@db/sft   # one per machine

Everything the grid could fail on is checked before anything is written; each problem
is one line on stderr and exit code 2. Ctrl-C stops cleanly (exit code 130): the run in
progress is given back to the storage and the same command resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bench.budget import MIN_STEPS
from bench.cli.display import PlainDisplay, RichDisplay, summary_table
from bench.cli.errors import fail, warning_line
from bench.registry import UserError
from bench.sweep.validate import MAX_PARALLEL, MAX_STEPS, MAX_TRIALS


def runtime_failure(exc: BaseException) -> str | None:
    """One line for a fault of the machine, not of the input (full disk, read-only folder, lost
    database): what failed and where; everything finished so far is in the storage. None: a bug."""
    import errno

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


def _count(value: int | str | None, flag: str, minimum: int = 1) -> int | None:
    """An integer flag given as text by a caller of `load` (the CLI passes ints, Typer checked them)."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"{flag} must be an integer, got '{value}'") from None
    if n < minimum:
        raise UserError(f"{flag} must be {'positive' if minimum == 1 else f'at least {minimum}'}, got {n}")
    return n


# ---------------------------------------------------------------- the command


def load(
    config: Path | None,
    experiment: str | None,
    *,
    name: str | None = None,
    fractions: str | None = None,
    backbones: str | None = None,
    methods: str | None = None,
    recipes: str | None = None,
    seeds: int | str | None = None,
    trials: int | str | None = None,
    steps: int | str | None = None,
    search: str | None = None,
    cv_folds: int | str | None = None,
    resolution: int | str | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile_: bool | None = None,
    compile_mode: str | None = None,
    deterministic: bool | None = None,
    tf32: bool | None = None,
    data_dir: Path | None = None,
    results_dir: Path | None = None,
    storage: str | None = None,
) -> Any:
    """The experiment file with the flags merged in, validated (no I/O besides reading it)."""
    from bench.sweep.experiment import find_config, parse_fractions, parse_names, read_toml, resolve
    from bench.sweep.validate import check_flag_list

    path = find_config(config, experiment)
    raw = read_toml(path)
    grid = {
        "fractions": parse_fractions(fractions) if fractions is not None else None,
        "backbones": parse_names(backbones, "--backbones") if backbones is not None else None,
        "methods": parse_names(methods, "--methods") if methods is not None else None,
        "recipes": parse_names(recipes, "--recipes") if recipes is not None else None,
    }
    for key, values in grid.items():
        if values is None:
            continue
        values = check_flag_list(key, values)  # a bad value is the flag's, not the experiment file's
        raw[key] = values
        # A flag narrows the [[include]] blocks to its values too (and drops emptied ones).
        kept = []
        for block in raw.get("include", []) if isinstance(raw.get("include"), list) else []:
            if isinstance(block, dict) and key in block:
                vals = block[key] if isinstance(block[key], list) else [block[key]]
                vals = [v for v in vals if v in values]
                if not vals:
                    continue
                block = {**block, key: vals}
            kept.append(block)
        if "include" in raw:
            raw["include"] = kept
    for key, value, flag in (
        ("seeds", seeds, "--seeds"),
        ("trials", trials, "--trials"),
        ("steps", steps, "--steps"),
        ("cv_folds", cv_folds, "--cv-folds"),
        ("resolution", resolution, "--resolution"),
    ):
        n = _count(value, flag)
        if n is not None:
            raw[key] = n
    if search is not None:
        table = raw.get("search") if isinstance(raw.get("search"), dict) else {}
        raw["search"] = {**table, "mode": search}
    for key, value in (
        ("name", name),
        ("device", device),
        ("precision", precision),
        ("storage", storage),
        ("data_dir", None if data_dir is None else str(data_dir)),
        ("results_dir", None if results_dir is None else str(results_dir)),
    ):
        if value is not None:
            raw[key] = value
    if compile_mode is not None:
        from bench.train.compiling import COMPILE_MODES

        if compile_mode not in COMPILE_MODES:
            raise UserError(f"--compile-mode '{compile_mode}' is not one of: {', '.join(COMPILE_MODES)}")
        raw["compile"] = compile_mode
    elif compile_:
        raw["compile"] = True
    if deterministic:
        raw["deterministic"] = True
    if tf32 is not None:
        raw["tf32"] = tf32
    return resolve(raw, source=str(path))


def validate(exp: Any, *, download: bool, parallel: int) -> tuple[Any, Any, list[str]]:
    """Everything that could fail later, checked now: device, weights, results folder, storage,
    data, fractions against the data, and settings of an existing experiment. Writes nothing."""
    from bench.data import cv_folds, label_split
    from bench.models.backbones import get_backbone
    from bench.provenance import resolve_device
    from bench.sweep import check_settings, check_storage, open_storage, storage_exists
    from bench.sweep.experiment import check_folder_owner, check_writable
    from bench.train.caches import Caches
    from bench.train.compiling import check_compile

    warnings = []
    device = resolve_device(exp.device)
    check_compile(exp.compile)
    if exp.precision == "bf16" and device.type == "cpu":
        warnings.append("bf16 on CPU is usually slower than fp32 there")
    backbones = {c.backbone for c in exp.cells()}
    if exp.pretrained:
        for b in sorted(backbones):
            ok, why = get_backbone(b).available()
            if not ok:
                raise UserError(f"pretrained weights for backbone '{b}' are not available: {why}")
    check_writable(exp.out_dir)
    check_folder_owner(exp)
    warn = check_storage(exp)
    if warn:
        warnings.append(warn)
    data = Caches.from_env().data.get(exp.data_dir, download_missing=download)
    for f in sorted({c.fraction for c in exp.cells()}):
        label_split(data.train_y, f, exp.data_seed, exp.val_fraction)
        if exp.cv_folds > 1:
            cv_folds(data.train_y, f, exp.data_seed, exp.cv_folds)
    if storage_exists(exp):
        check_settings(exp, open_storage(exp, warnings))  # a torn journal tail is cut here, and said so
    return data, device, warnings


def _project(exp: Any, data: Any, dev: Any, console: Console) -> Any:
    """The grid's projected cost on this device (bench/sweep/projection.py), from cached rates where this
    device measured them before (seconds), else measured now (a few seconds per configuration)."""
    from bench.sweep import Sweep
    from bench.sweep.projection import project
    from bench.sweep.rates import RateCache, cache_path

    cache = RateCache(cache_path())
    monitor = Sweep(exp, data, dev, read_only=True, storage=_NoStorage())
    console.print(f"projecting the grid's cost on {dev} (measured rates, cached in {cache.path or 'memory'})…", highlight=False)
    return project(exp, monitor, dev, cache)


def _print_projection(exp: Any, p: Any, dev: Any, parallel: int, console: Console) -> None:
    """The projection in one line (and the advice line when it is more than a day)."""
    import torch

    from bench.sweep.projection import advice, hours

    measured = "cached rates" if p.cached else f"rates measured in {p.measure_seconds:.0f} s"
    when = min((r.measured_at for r in p.rates if r.measured_at), default="")
    load = max((r.load for r in p.rates), default=-1.0)
    if load >= 0:
        measured += f" under a load of {load:g} on {os.cpu_count()} cores"
    per = " with one worker" if parallel == 1 else f" for one worker ({parallel} workers split the items between them)"
    console.print(
        f"projected wall time on {dev}: {hours(p.lower_seconds)} to {hours(p.upper_seconds)} for {p.trials} trials and "
        f"{p.finals} final runs{per} ({measured}{f', first measured {when}' if when else ''}; upper: no trial pruned, "
        f"lower: every prunable trial stopped at {exp.search.pruner_warmup:g} of its budget; load moves both)",
        highlight=False,
    )
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    line = advice(exp, p, dev, cuda)
    if line is not None:
        warning_line(line)


def _train_rate(r: Any) -> str:
    """A rate's training figure: images/s, or what a frozen row trains instead (nan: not measured)."""
    return "head only (frozen backbone)" if r.train != r.train else f"{r.train:.0f} img/s"


def _dry_run(exp: Any, data: Any, dev: Any, p: Any, console: Console) -> None:
    """The grid, each cell's step budget, and the rates its projection used."""
    from bench.models.kinds import METHODS
    from bench.sweep import Sweep

    monitor = Sweep(exp, data, dev, read_only=True, storage=_NoStorage())
    for c in exp.cells():
        cfg = monitor.config(c, exp.seeds[0], dict(exp.fixed_hparams(c.method)), "final")
        if METHODS.get(c.method).is_probe:
            what = f"a logistic-regression probe ({cfg.probe.folds}-fold CV of its L2 strength), no optimiser steps"
        else:
            what = f"{cfg.hp.steps} steps at batch {cfg.hp.batch_size}"
        console.print(f"  {c.label}: {what}, {cfg.resolution} px", highlight=False)
    for r in p.rates:
        console.print(
            f"  {r.backbone} @ {r.resolution} px, batch {r.batch_size}, {r.precision}: train {_train_rate(r)}, "
            f"evaluate {r.forward:.0f} img/s ({'cached, ' if r.cached else ''}measured {r.measured_at or '?'}, "
            f"load {r.load:g})",
            highlight=False,
        )
    console.print("dry run: nothing trained, nothing written", highlight=False)


class _NoStorage:
    """A dry run reads no storage: resolving configs needs none."""


def write_report(out: Path, console: Console) -> None:
    """Call bench.report.write_report if that module exists; a failing report never loses the sweep."""
    try:
        import importlib

        report = importlib.import_module("bench.report")
        fn = getattr(report, "write_report", None)
    except Exception as exc:  # not written yet, or broken: the sweep's results stand on their own
        console.print(
            f"report: skipped (bench.report could not be imported: {type(exc).__name__}: {exc})", highlight=False, markup=False
        )
        return
    if fn is None:
        console.print("report: skipped (bench.report has no write_report yet)", highlight=False)
        return
    try:
        where = fn(out)
        console.print(f"report: {where if where is not None else out}", highlight=False, markup=False)
    except Exception as exc:
        console.print(
            f"[yellow]report: not written ({type(exc).__name__}: {escape(str(exc))}); "
            f"the results in {escape(str(out))} are intact[/]",
            highlight=False,
        )


class _Stop(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping us): stop like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """A scheduler's SIGTERM takes the Ctrl-C path: the claim is given back, the same command resumes."""
    raise _Stop()


def _console() -> Console:
    """stdout; a log file (not a terminal, no COLUMNS) gets 160 columns so the tables' rows stay on one line."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def _announce(exp: Any, dev: Any, warnings: list[str], console: Console) -> None:
    """Before any work: the warnings, then the grid's size in one line (and a smoke test called one)."""
    for w in warnings:
        warning_line(w)
    cells = exp.cells()
    n_trials = sum(exp.trials * len(exp.searches(c)) for c in cells)
    n_runs = len(cells) * len(exp.seeds)
    mode = {
        "per_seed": "a search per seed",
        "shared": "one shared search per cell (the first seed's)",
        "pooled": f"one search per cell, each candidate scored over {len(exp.pool_seeds)} pooled seeds",
    }[exp.search.mode]
    n_methods = len({c.method for c in cells})
    n_recipes = len({c.recipe for c in cells})
    console.print(
        f"experiment [bold]{escape(exp.name)}[/]: {len(cells)} cells ({len(exp.backbones)} backbone(s) × {n_methods} method(s) × "
        f"{n_recipes} recipe(s) × {len(exp.fractions)} fraction(s)), {n_trials} search trials ({mode}), {n_runs} final runs "
        f"({len(exp.seeds)} seeds) on {dev}, results in {escape(str(exp.out_dir))}",
        highlight=False,
    )
    if exp.steps is not None and exp.steps < MIN_STEPS:
        warning_line(
            f"steps = {exp.steps} is below the protocol's minimum of {MIN_STEPS}: a smoke test, and the report will say so"
        )


def _listen_to_sigint() -> None:
    """A sweep started in the background (`nohup python cli.py sweep ... &`) inherits SIGINT ignored (the shell
    does that to background jobs), so a user's `kill -INT` or Ctrl-C after `fg` did nothing: take it back, so
    that SIGINT stops the sweep cleanly like SIGTERM, and the same command resumes."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_devices(dev: Any, k: int) -> list[str | None]:
    """The device each of K `--parallel` workers trains on: on a CUDA machine whose sweep names no
    GPU (device auto or cuda), worker i takes cuda:(i % N) of the N GPUs, one worker per GPU first
    (docs/gpu.md: more workers than GPUs share them, best under MPS). None: the worker keeps the
    experiment's device (a CPU, or the one GPU the sweep named)."""
    if dev.type != "cuda" or dev.index is not None:
        return [None] * k
    import torch

    n = max(1, torch.cuda.device_count())
    return [f"cuda:{i % n}" for i in range(k)]


def worker_commands(base: list[str], dev: Any, k: int, threads: int | None) -> list[list[str]]:
    """The command line of each of K workers: the shared one, its thread count (CPU workers share the
    cores: `_set_threads`), its GPU (`worker_devices`)."""
    cmds = []
    for device in worker_devices(dev, k):
        cmd = list(base)
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if device is not None:
            cmd += ["--device", device]
        cmds.append(cmd)
    return cmds


def _set_threads(threads: int | None, dev: Any, parallel: int) -> int | None:
    """torch's CPU threads in this process: --threads, or the cores shared out among CPU workers
    (K workers with a thread per core each would fight over the same cores). On a GPU the workers'
    CPU threads only launch kernels and are not divided. Returns the count set."""
    if threads is None and dev.type == "cpu" and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def _execute(
    exp: Any, data: Any, dev: Any, *, parallel: int, threads: int | None, quiet: bool, worker: bool, costs: Any = None
) -> tuple[Any, int]:
    """Write config.toml (the workers and a resumed sweep read it), then train here or in K workers.
    SIGTERM stops like Ctrl-C. A fault of the machine (full disk, lost database) is one line, exit 1."""
    from bench.files import atomic_write
    from bench.sweep.experiment import to_toml

    console = _console()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if not worker:
            exp.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(exp.out_dir / "config.toml", lambda f: f.write(to_toml(exp)), mode="w")
        if parallel > 1 and not worker:
            return _run_parallel(exp, data, dev, parallel, threads, quiet, console, costs)
        return _run_here(exp, data, dev, quiet or worker, console, costs)
    except UserError as exc:  # e.g. a journal damaged by another program while we ran
        fail(str(exc))
    except Exception as exc:
        message = runtime_failure(exc)
        if message is None:
            raise
        fail(message, code=1)
    finally:
        signal.signal(signal.SIGTERM, old_term)


def _finish(exp: Any, status: Any, code: int, report: bool) -> None:
    """The summary table and where the runs are; the report only after a complete sweep."""
    console = _console()
    console.print(summary_table(status, f"{exp.name}: test accuracy (%) over seeds, per cell"))
    out = exp.out_dir
    console.print(f"runs: {out / 'runs.csv'} ({status.runs[0]} of {status.runs[1]} final runs)", highlight=False, markup=False)
    if code == 0 and report:
        write_report(out, console)


def sweep(
    config: Annotated[Path | None, typer.Option("--config", help="Experiment TOML file.")] = None,
    experiment: Annotated[str | None, typer.Option("--experiment", help="NAME: experiments/NAME.toml.")] = None,
    name: Annotated[str | None, typer.Option(help="Experiment name (default: the file's `name`, or its stem).")] = None,
    fractions: Annotated[str | None, typer.Option(help="Label fractions, e.g. 0.01,0.1,1.0.")] = None,
    backbones: Annotated[str | None, typer.Option(help="Comma-separated, of: {backbones}.")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated, of: {methods}.")] = None,
    recipes: Annotated[
        str | None, typer.Option(help="Comma-separated, of: tuned (searched), defaults (no search), article (the article's).")
    ] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="Number of seeds (0..N-1).")] = None,
    trials: Annotated[int | None, typer.Option(min=1, max=MAX_TRIALS, help="Optuna trials per tuned cell.")] = None,
    steps: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_STEPS, help="A fixed step budget for every cell (default: the protocol's rule, >= 500)."),
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="per_seed (each seed searches its own subset) or shared (seed 0's).")
    ] = None,
    cv_folds: Annotated[
        int | None, typer.Option("--cv-folds", min=1, help="k-fold cross-validated trial scores (k >= 2).")
    ] = None,
    resolution: Annotated[int | None, typer.Option(min=1, help="Input pixels for every backbone.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N].")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")] = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the end-to-end phase (speed only; not part of the run ids).")
    ] = False,
    compile_mode: Annotated[
        str | None,
        typer.Option(
            "--compile-mode",
            help="torch.compile mode, implies --compile: default, reduce-overhead (CUDA graphs), max-autotune, "
            "max-autotune-no-cudagraphs.",
        ),
    ] = None,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="CUDA: deterministic kernels only (docs/gpu.md); recorded per run.")
    ] = False,
    tf32: Annotated[
        bool | None,
        typer.Option("--tf32/--no-tf32", help="CUDA: let fp32 use TF32 (default: the experiment's tf32, false)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding cifar-10-batches-py.")] = None,
    results_dir: Annotated[Path | None, typer.Option(help="Results root; the experiment writes RESULTS_DIR/NAME.")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage: SQLAlchemy URL or journal file (default RESULTS_DIR/NAME/optuna.journal).")
    ] = None,
    parallel: Annotated[
        int,
        typer.Option(
            min=1, max=MAX_PARALLEL, help="Worker processes; on a CUDA machine worker i trains on cuda:(i % GPUs) (docs/gpu.md)."
        ),
    ] = 1,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads per worker (default: all, divided by --parallel).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of the live view.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and print the grid; train nothing, write nothing.")
    ] = False,
    download: Annotated[bool, typer.Option("--download/--no-download", help="Download CIFAR-10 when it is missing.")] = True,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report at the end.")] = True,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="Internal: a child of --parallel.")] = False,
) -> None:
    """Run an experiment grid: validate it, search every cell on validation data, retrain per seed, test once."""
    flags = dict(name=name, fractions=fractions, backbones=backbones, methods=methods, recipes=recipes, seeds=seeds)
    flags |= dict(trials=trials, steps=steps, search=search, cv_folds=cv_folds, resolution=resolution, device=device)
    flags |= dict(precision=precision, compile_=compile_, compile_mode=compile_mode, data_dir=data_dir, results_dir=results_dir)
    flags |= dict(storage=storage, deterministic=deterministic, tf32=tf32)
    try:
        exp = load(config, experiment, **flags)
        data, dev, warnings = validate(exp, download=download, parallel=parallel)
    except UserError as exc:
        fail(str(exc))
    from bench.train.device import Numerics, configure_numerics

    # every worker reads them from config.toml; each run records them
    configure_numerics(Numerics(deterministic=exp.deterministic, tf32=exp.tf32))
    _listen_to_sigint()
    n_threads = _set_threads(threads, dev, parallel)
    costs = None
    if not worker:
        console = _console()
        _announce(exp, dev, warnings, console)
        projection = _project(exp, data, dev, console)
        _print_projection(exp, projection, dev, parallel, console)
        costs = projection.costs
        if dry_run:
            _dry_run(exp, data, dev, projection, console)
            return
    status, code = _execute(exp, data, dev, parallel=parallel, threads=n_threads, quiet=quiet, worker=worker, costs=costs)
    if not worker:
        _finish(exp, status, code, report)
    raise typer.Exit(code)


def _run_here(exp: Any, data: Any, dev: Any, quiet: bool, console: Console, costs: Any = None) -> tuple[Any, int]:
    """One worker, this process. Exit code: 0 complete, 1 incomplete, 130/143 interrupted (work kept)."""
    from bench.sweep import Sweep, export_runs

    display = PlainDisplay(console, exp.name) if quiet else RichDisplay(console, exp.name)
    sweep = Sweep(exp, data, dev, progress=display)
    sweep.costs = costs
    code = 0
    try:
        with display:
            status = sweep.run()
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, _Stop) else 130
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
        try:
            export_runs(sweep)
            status = sweep.survey()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        console.print(
            f"interrupted: {status.runs[0]}/{status.runs[1]} final runs and {status.trials[0]}/{status.trials[1]} "
            "trials are done and kept; the same command resumes",
            highlight=False,
        )
        return status, code
    export_runs(sweep)
    status = sweep.survey()
    if not status.complete:
        code = 1
    return status, code


def _run_parallel(
    exp: Any, data: Any, dev: Any, k: int, threads: int | None, quiet: bool, console: Console, costs: Any = None
) -> tuple[Any, int]:
    """K independent workers on the same storage (exactly what several machines do), watched from here."""
    from bench.sweep import Sweep, export_runs
    from bench.sweep.journal import open_nofollow

    out = exp.out_dir
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "bench", "sweep", "--config", str(out / "config.toml"), "--worker", "--no-report"]
    env = dict(os.environ)
    # `-m bench` finds this checkout from any working directory, installed or not.
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    if "://" in exp.storage:  # config.toml has the URL without its password: hand it over privately
        import sqlalchemy

        password = sqlalchemy.engine.make_url(exp.storage).password
        if password and password != "***":
            env["SFT_BENCH_DB_PASSWORD"] = str(password)
    procs = []
    for i, cmd in enumerate(worker_commands(base, dev, k, threads)):
        log = open_nofollow(logs / f"worker-{i}.log")  # a link planted there is never followed
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    monitor = Sweep(exp, data, dev, read_only=True)
    monitor.costs = costs
    display = PlainDisplay(console, exp.name) if quiet else RichDisplay(console, exp.name)
    code = 0
    try:
        with display:
            while any(p.poll() is None for p, _ in procs):
                display.status(monitor.survey())
                time.sleep(2)
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, _Stop) else 130
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
    for i, (p, log) in enumerate(procs):
        log.close()
        if p.returncode not in (0, 130, 143) and code == 0:
            console.print(
                f"[red]worker {i} exited with code {p.returncode}; see {escape(str(logs / f'worker-{i}.log'))}[/]",
                highlight=False,
            )
            code = 1
    writer = Sweep(exp, data, dev)
    export_runs(writer)
    status = writer.survey()
    if code == 0 and not status.complete:
        code = 1
    return status, code
