"""`perf`: the speed benchmark against the hardware's ceiling and the article's pipeline (bench/perf/).

python cli.py perf                          # resnet18@32, efficientnet_lite0@32 and @64 (about 10 min on 2 cores)
python cli.py perf --quick --cases tiny@32  # a smoke run
python cli.py perf --project experiments/paper.toml --sweep results/quick
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.cli.errors import fail
from bench.models.hparams import MAX_BATCH, MAX_STEPS
from bench.registry import UserError, check_path

DEFAULT_CASES = "resnet18@32,efficientnet_lite0@32,efficientnet_lite0@64"


def _wait_for_quiet(threshold: float, max_wait: float, log: Callable[[str], None]) -> None:
    """Shared machines: wait (up to max_wait s) for the 1-minute load to drop below threshold."""
    from bench.perf import loadavg

    t0 = time.monotonic()
    while loadavg() >= threshold and time.monotonic() - t0 < max_wait:
        log(f"load {loadavg():.2f} >= {threshold}; waiting ({time.monotonic() - t0:.0f}/{max_wait:.0f} s)")
        time.sleep(15)


def _reports(P: Any, rows: list[Any], sweep: Path | None, project: Path | None) -> str:
    """The sweep-level cost of a finished sweep and the projection of a grid, as Markdown."""
    parts = []
    pruned, source = None, ""
    if sweep is not None:
        cost = P.sweep_cost(sweep)
        pruned = cost.pruned_fraction
        # a protocol v1 folder (results/quick) stays readable; the projection says what its pruning was measured under
        protocol = P.PROTOCOLS[cost.protocol]
        source = f"measured on {sweep}, protocol {protocol}" if pruned is not None else f"{sweep} has no finished trials"
        parts.append(P.sweep_markdown(cost))
    if project is not None:
        parts.append(P.projection_markdown(P.project_grid(project, rows, pruned_fraction=pruned, pruned_source=source)))
    return "\n\n".join(parts)


def _command(ctx: typer.Context) -> str:
    """The command line that reproduces this run: every option that differs from its default."""
    parts = ["python", "cli.py", ctx.info_name or "perf"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value == param.default or param.name is None:
            continue
        flag = param.opts[0]
        if isinstance(value, bool):
            parts.append(flag if value else (param.secondary_opts or [flag])[0])
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def perf(
    ctx: typer.Context,
    cases: Annotated[str, typer.Option(help="Comma-separated BACKBONE@PIXELS; BACKBONE: one of {backbones}.")] = DEFAULT_CASES,
    quick: Annotated[bool, typer.Option("--quick", help="Few steps per measurement: a smoke run, rough ratios.")] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH, help="Batch of (a) and (b); (c) uses the article's 100.")
    ] = 256,
    steps: Annotated[
        int | None, typer.Option(min=1, max=MAX_STEPS, help="Timed training steps per measurement (at most).")
    ] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Time limit per measurement after warm-up.")] = None,
    precision: Annotated[str, typer.Option(help="Suite precision in (b), (d), (e): auto, fp32, bf16.")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="Run (b) through torch.compile, as a run or sweep does.")] = False,
    compile_mode: Annotated[
        str | None, typer.Option("--compile-mode", help="torch.compile mode for (b), implies --compile (e.g. reduce-overhead).")
    ] = None,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="CUDA: deterministic kernels only, as run/sweep --deterministic.")
    ] = False,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="CUDA: let fp32 use TF32 (default: IEEE fp32).")] = False,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers of the article's pipeline (c).")] = 2,
    frozen_steps: Annotated[
        int | None,
        typer.Option(
            min=1, max=MAX_STEPS, help="Steps of (d)'s frozen trial. Default 20 (protocol trials: >= 500, slower to measure)."
        ),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=0, help="Alternating rounds per compared pair (A B, B A, ...); 0: none. Default 5.")
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Folder holding cifar-10-batches-py.")] = Path("data"),
    out: Annotated[Path, typer.Option(help="Where perf.csv, perf_summary.csv, perf.md and perf.json go.")] = Path("results/perf"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    project: Annotated[Path | None, typer.Option(help="Project this grid's cost (e.g. experiments/paper.toml).")] = None,
    throughputs: Annotated[
        Path | None, typer.Option(help="With --project and no measurement: a perf.csv to project from (skips measuring).")
    ] = None,
    sweep: Annotated[Path | None, typer.Option(help="Summarise a finished sweep folder (runs.csv, optuna.journal).")] = None,
    wait_load: Annotated[float, typer.Option(help="Wait until the 1-minute load average is below this (0: don't).")] = 0.0,
    wait_max: Annotated[float, typer.Option(help="Longest wait for --wait-load, seconds.")] = 600.0,
) -> None:
    """Measure training, evaluation and frozen-trial speed against the ceiling and the article's pipeline."""
    from rich.console import Console

    from bench import perf as P
    from bench.provenance import resolve_device

    console = Console()
    log = lambda msg: console.print(msg, highlight=False, markup=False)  # noqa: E731
    command = _command(ctx)
    try:
        if precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"precision '{precision}' is not one of: auto, fp32, bf16")
        _check_wait(wait_load, wait_max)
        from bench.train.compiling import COMPILE_MODES

        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise UserError(f"--compile-mode '{compile_mode}' is not one of: {', '.join(COMPILE_MODES)}")
        _check_files(P, project, throughputs, sweep, out)
        # Report-only modes: nothing is measured.
        if throughputs is not None or (sweep is not None and project is None):
            rows = P.read_rows(throughputs) if throughputs is not None else []
            typer.echo(_reports(P, rows, sweep, project))
            return
        selected = P.parse_cases(cases)
        kw = dict(batch_size=batch_size, precision=precision, compile=compile_mode or compile, workers=workers)
        given = dict(steps=steps, max_seconds=max_seconds, rounds=rounds, frozen_steps=frozen_steps)
        kw.update({k: v for k, v in given.items() if v is not None})
        settings = P.PerfSettings.quick(**kw) if quick else P.PerfSettings(**kw)
        dev = resolve_device(device)
        from bench.numerics import Numerics, configure_numerics
        from bench.train.caches import Caches

        configure_numerics(Numerics(deterministic=deterministic, tf32=tf32))  # perf.json's machine records them
        caches = Caches.from_env()  # SFT_BENCH_FEATURE_CACHE_MB is read here, at the entry point
        data = caches.data.get(data_dir)
    except UserError as exc:
        fail(str(exc))
    if wait_load > 0:
        _wait_for_quiet(wait_load, wait_max, log)

    def reports(rows: list[Any]) -> str:
        """perf.md's tail: the sweep's cost and the grid's projection from the rows just measured."""
        return _reports(P, rows, sweep, project)

    try:
        kw = dict(log=log, projection=reports, command=command, caches=caches)
        result = P.run_perf(selected, data, dev, settings, out, **kw)
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        log("interrupted; nothing written")
        raise typer.Exit(130) from None
    console.print(_summary_table(result.info, result.summary))
    for f in result.files:
        log(f"wrote {f}")


def _check_wait(wait_load: float, wait_max: float) -> None:
    """--wait-load nan or -1 and --wait-max -5 were taken silently for "don't wait"; refused instead."""
    if not math.isfinite(wait_load) or wait_load < 0:
        raise UserError(f"--wait-load must be a load average >= 0 (0: do not wait), got {wait_load}")
    if not math.isfinite(wait_max) or wait_max < 0:
        raise UserError(f"--wait-max must be a number of seconds >= 0, got {wait_max}")


def _check_files(P: Any, project: Path | None, throughputs: Path | None, sweep: Path | None, out: Path) -> None:
    """Every file and folder named on the command line, checked before minutes of measuring."""
    for flag, path in (("--project", project), ("--throughputs", throughputs), ("--sweep", sweep), ("--out", out)):
        if path is not None:
            check_path(path, flag)
    if project is not None and not project.is_file():
        raise UserError(f"grid {project} does not exist (write it, or leave out --project)")
    if throughputs is not None and not throughputs.is_file():
        raise UserError(f"throughput table {throughputs} does not exist (run `python cli.py perf` first)")
    if sweep is not None and not sweep.is_dir():
        raise UserError(f"sweep folder {sweep} does not exist (run `python cli.py sweep --config ...` first)")
    P.check_writable(out)
    if project is not None:
        P.grid_runs(project)  # a bad grid fails now, not after the measurements


def _summary_table(info: dict, summary: list[Any]) -> Any:
    """Each ratio against its target, met or not: the figures a reader of perf.md looks for first."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"perf on {info['device']} (load {info['loadavg_start']:.2f} -> {info['loadavg_end']:.2f})")
    for col in ("case", "metric", "value", "range", "target", "met", "detail"):
        table.add_column(col, justify="right" if col in ("value", "range", "target") else "left")
    for r in summary:
        met = {"yes": "[green]yes[/]", "no": "[red]no[/]", "untrusted": "[yellow]untrusted[/]"}.get(r.met, "")
        target = "" if r.target is None else f">= {r.target:g}"
        # An untrusted ratio is not printed as a result: its range says why.
        value = "" if r.value is None or r.met == "untrusted" else f"{r.value:.2f}"
        spread = "" if r.low is None else f"{r.low:.2f}-{r.high:.2f}"
        table.add_row(r.case, r.metric, value, spread, target, met, escape(r.detail))
    return table
