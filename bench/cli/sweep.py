"""`python cli.py sweep`: parse the flags, call `bench.sweep.run`, print what it says (bench/sweep/runner.py).

    python cli.py sweep                                   # experiments/default.toml
    python cli.py sweep --experiment quick                # experiments/quick.toml
    python cli.py sweep --config my.toml --fractions 0.01,0.1 --seeds 5 --parallel 2
    python cli.py sweep --experiment paper --storage postgresql://u:p@db/sft   # one per machine

Everything the grid could fail on is checked before anything is written; each problem
is one line on stderr and exit code 2. Ctrl-C stops cleanly (exit code 130): the run in
progress is given back to the storage and the same command resumes. The control flow is the
library's (`bench.sweep.run`, which a notebook calls too); this module only prints its events.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bench.budget import MIN_STEPS
from bench.cli.display import PlainDisplay, RichDisplay, summary_table
from bench.cli.errors import fail, warning_line
from bench.cli.options import compile_mode_option
from bench.registry import UserError
from bench.sweep import events as E
from bench.sweep.runner import run as run_sweep
from bench.sweep.validate import MAX_PARALLEL, MAX_STEPS, MAX_TRIALS


def _console() -> Console:
    """stdout; a log file (not a terminal, no COLUMNS) gets 160 columns so the tables' rows stay on one line."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def _announce(e: E.Planned, console: Console) -> None:
    """Before any work: the warnings, then the grid's size in one line (and a smoke test called one)."""
    exp, dev = e.experiment, e.device
    for w in e.warnings:
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


def _print_projection(e: E.Projected, console: Console) -> None:
    """The projection in one line (and the advice line when it is more than a day)."""
    from bench.sweep.projection import hours

    p, exp, dev, parallel = e.projection, e.experiment, e.device, e.parallel
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
    if e.done is not None:
        d = e.done
        rest = "" if d.seconds is None else f"; the rest projects to {hours(d.seconds)} with one worker ({d.basis})"
        console.print(
            f"already done in {exp.out_dir}: {d.finals[0]}/{d.finals[1]} final runs and {d.trials[0]}/{d.trials[1]} trials{rest}",
            highlight=False,
        )
    if e.advice is not None:
        warning_line(e.advice)


def _train_rate(r: Any) -> str:
    """A rate's training figure: images/s, or what a frozen row trains instead (nan: not measured)."""
    return "head only (frozen backbone)" if r.train != r.train else f"{r.train:.0f} img/s"


def _dry_run(e: E.DryRun, console: Console) -> None:
    """The grid, each cell's step budget, and the rates its projection used."""
    for b in e.budgets:
        if b.probe:
            what = f"a logistic-regression probe ({b.folds}-fold CV of its L2 strength), no optimiser steps"
        else:
            what = f"{b.steps} steps at batch {b.batch_size}"
        console.print(f"  {b.label}: {what}, {b.resolution} px", highlight=False)
    for r in e.projection.rates:
        console.print(
            f"  {r.backbone} @ {r.resolution} px, batch {r.batch_size}, {r.precision}: train {_train_rate(r)}, "
            f"evaluate {r.forward:.0f} img/s ({'cached, ' if r.cached else ''}measured {r.measured_at or '?'}, "
            f"load {r.load:g})",
            highlight=False,
        )
    console.print("dry run: nothing trained, nothing written", highlight=False)


def _print_report(e: E.Reported, console: Console) -> None:
    """Where the report is, or why there is none (the sweep's results stand either way)."""
    if e.skipped is not None:
        console.print(f"report: skipped ({e.skipped})", highlight=False, markup=False)
    elif e.error is not None:
        console.print(
            f"[yellow]report: not written ({type(e.error).__name__}: {escape(str(e.error))}); "
            f"the results in {escape(str(e.out_dir))} are intact[/]",
            highlight=False,
        )
    else:
        console.print(f"report: {e.result if e.result is not None else e.out_dir}", highlight=False, markup=False)


def _finish(e: E.Finished, console: Console) -> None:
    """The summary table and where the runs are (the report follows, after a complete sweep)."""
    console.print(summary_table(e.status, f"{e.experiment.name}: test accuracy (%) over seeds, per cell"))
    out = e.experiment.out_dir
    console.print(
        f"runs: {out / 'runs.csv'} ({e.status.runs[0]} of {e.status.runs[1]} final runs)", highlight=False, markup=False
    )


def _write_report(out: Path) -> Any:
    """The report of a complete sweep (bench.report, imported only now: the command starts without it)."""
    try:
        from bench.report import write_report
    except Exception as exc:  # broken: the sweep's results stand on their own
        raise E.ReportUnavailable(f"bench.report could not be imported: {type(exc).__name__}: {exc}") from exc
    return write_report(out)


class _View:
    """What the command shows: each event of `bench.sweep.run` printed, and the live view (or `--quiet`'s
    log lines), made once the grid is known and handed to the sweep through an events.Relay."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.console = _console()
        self.progress = E.Relay()

    def event(self, e: E.SweepEvent) -> None:
        """Print one step of the sweep, as the command always has."""
        if isinstance(e, E.Planned):
            _announce(e, self.console)
        elif isinstance(e, E.Projecting):
            self.console.print(
                f"projecting the grid's cost on {e.device} (measured rates, cached in {e.cache_path or 'memory'})…",
                highlight=False,
            )
        elif isinstance(e, E.Projected):
            _print_projection(e, self.console)
        elif isinstance(e, E.DryRun):
            _dry_run(e, self.console)
        elif isinstance(e, E.Starting):
            name = e.experiment.name
            self.progress.target = PlainDisplay(self.console, name) if self.quiet else RichDisplay(self.console, name)
        elif isinstance(e, E.Interrupted):
            self.console.print(
                f"interrupted: {e.status.runs[0]}/{e.status.runs[1]} final runs and {e.status.trials[0]}/{e.status.trials[1]} "
                "trials are done and kept; the same command resumes",
                highlight=False,
            )
        elif isinstance(e, E.WorkerFailed):
            self.console.print(
                f"[red]worker {e.index} exited with code {e.returncode}; see {escape(str(e.log))}[/]", highlight=False
            )
        elif isinstance(e, E.Finished):
            _finish(e, _console())
        elif isinstance(e, E.Reported):
            _print_report(e, self.console)


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
    compile_mode: Annotated[str | None, compile_mode_option()] = None,
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
        bool,
        typer.Option(
            "--dry-run", help="Print the grid, its projected cost and what is left of it; train nothing, write nothing."
        ),
    ] = False,
    download: Annotated[bool, typer.Option("--download/--no-download", help="Download CIFAR-10 when it is missing.")] = True,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report at the end.")] = True,
    worker: Annotated[bool, typer.Option("--worker", hidden=True, help="Internal: a child of --parallel.")] = False,
) -> None:
    """Run an experiment grid: validate it, search every cell on validation data, retrain per seed, test once."""
    flags = dict(name=name, fractions=fractions, backbones=backbones, methods=methods, recipes=recipes, seeds=seeds)
    flags |= dict(trials=trials, steps=steps, search=search, cv_folds=cv_folds, resolution=resolution)
    flags |= dict(precision=precision, compile_=compile_, compile_mode=compile_mode)
    flags |= dict(storage=storage, deterministic=deterministic, tf32=tf32)
    view = _View(quiet or worker)
    try:
        result = run_sweep(
            experiment,
            config=config,
            results_dir=results_dir,
            data_dir=data_dir,
            device=device,
            parallel=parallel,
            threads=threads,
            dry_run=dry_run,
            download=download,
            report=_write_report if report else None,
            worker=worker,
            progress=view.progress,
            on_event=view.event,
            **flags,
        )
    except UserError as exc:
        fail(str(exc))
    except E.MachineFault as exc:
        fail(str(exc), code=1)
    raise typer.Exit(result.code)
