"""`backbones`, `methods` and `run`: list the plug-ins, train and evaluate one run (bench/train/).

    python cli.py backbones
    python cli.py run --backbone efficientnet_lite0 --method sft --fraction 0.1 --resolution 64

`run` checks every input and every output path before it reads the data, so a refused run
writes nothing; a run that trains writes one JSON record (and, if asked, predictions and a
checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bench.cli.errors import fail
from bench.cli.options import compile_mode_option
from bench.history import HistoryRow
from bench.models.hparams import MAX_BATCH, MAX_STEPS
from bench.registry import UserError, check_path, check_writable

DETERMINISTIC_HELP = (
    "CUDA: deterministic kernels only (cuDNN deterministic, no kernel search, torch's deterministic algorithms, "
    "cuBLAS workspace): the same run twice on the same GPU and software is bit-identical; recorded. A CPU is "
    "deterministic either way."
)
TF32_HELP = "CUDA: let fp32 matmuls and convolutions use TF32 (default: true IEEE fp32); recorded."


def _console() -> Console:
    """Made per call: CliRunner replaces sys.stdout for each invocation."""
    return Console()


def backbones() -> None:
    """List the backbones, where their weights come from and whether they are available now."""
    from bench.models.backbones import BACKBONES, get_backbone

    table = Table(title="backbones")
    for col in ("name", "features", "input px", "weights", "available now"):
        table.add_column(col)
    for name in BACKBONES:
        spec = get_backbone(name)
        ok, why = spec.available()
        table.add_row(
            name,
            str(spec.feature_dim),
            str(spec.input_size),
            spec.weights,
            f"[green]yes[/] ({why})" if ok else f"[red]no[/] ({why})",
        )
    table.add_row("timm:<name>", "model's", "model's", "timm / Hugging Face hub", "per model (needs the internet unless cached)")
    _console().print(table)


def methods() -> None:
    """List the methods."""
    from bench.models.kinds import METHODS

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("kind")  # whether the backbone trains and where the head starts (MethodKind)
    table.add_column("model")
    for name in METHODS:
        spec = METHODS.get(name)
        table.add_row(name, spec.kind.value.replace("_", " "), spec.summary)
    _console().print(table)


def parse_set(values: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """`NAME=VALUE` pairs; VALUE is JSON when it parses (numbers, true/false), else the string."""
    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise UserError(f"{flag} expects NAME=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@dataclass(frozen=True)
class RunOptions:
    """Every option of `run`, by name: the steps below read them from one place."""

    backbone: str
    method: str
    branch: str | None
    fraction: float
    seed: int
    recipe: str
    data_dir: Path
    results_dir: Path
    resolution: int | None
    scratch: bool
    steps: int | None
    bn: str | None
    lr: float | None
    batch_size: int | None
    optimizer: str | None
    weight_decay: float | None
    schedule: str | None
    label_smoothing: float | None
    backbone_lr_mult: float | None
    set_: list[str] | None
    probe_set: list[str] | None
    stage: str
    precision: str
    device: str
    record: Path | None
    save_predictions: Path | None
    save_model: Path | None
    compile_: bool
    compile_mode: str | None
    deterministic: bool
    tf32: bool

    def compile(self) -> bool | str:
        """What `execute` is given: the mode when one is named (it implies --compile), else the flag."""
        return self.compile_mode or self.compile_

    def overrides(self) -> dict[str, Any]:
        """The hyperparameters given as flags or --set (flags first, --set may add any other)."""
        named = dict(
            steps=self.steps,
            bn=self.bn,
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            label_smoothing=self.label_smoothing,
            backbone_lr_mult=self.backbone_lr_mult,
        )
        return {k: v for k, v in named.items() if v is not None} | parse_set(self.set_)

    def outputs(self) -> tuple[Path | None, ...]:
        """The files the run may write besides its default record path."""
        return (self.record, self.save_predictions, self.save_model)


def _check_inputs(opts: RunOptions) -> tuple[str, Any]:
    """Names, fraction, weights and every output path, checked before the data is read.
    Returns the registry's method name and the torch device."""
    from bench.models.backbones import get_backbone
    from bench.models.kinds import METHODS
    from bench.names import method_name
    from bench.provenance import resolve_device
    from bench.run_config import check_fraction
    from bench.sweep.experiment import MAX_SEED  # not at import time: bench.sweep imports torch
    from bench.train.compiling import COMPILE_MODES, check_compile

    if opts.seed > MAX_SEED:
        raise UserError(f"--seed must be in 0..{MAX_SEED}, got {opts.seed}")
    dev = resolve_device(opts.device)
    if opts.compile_mode is not None and opts.compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile-mode '{opts.compile_mode}' is not one of: {', '.join(COMPILE_MODES)}")
    check_compile(opts.compile())
    name = method_name(opts.method, opts.branch)
    METHODS.get(name)
    check_fraction(opts.fraction)
    spec = get_backbone(opts.backbone)
    if not opts.scratch:
        ok, why = spec.available()
        if not ok:
            raise UserError(f"pretrained weights for backbone '{opts.backbone}' are not available: {why}; or pass --scratch")
    for flag, file in zip(("--record", "--save-predictions", "--save-model"), opts.outputs(), strict=True):
        if file is None:
            continue
        check_path(file, flag)
        if file.is_dir():
            raise UserError(f"{file} is a folder; give a file path")
        check_writable(file.parent, flag)  # before training: a result that cannot be written is never computed
    if opts.record is None:
        check_writable(opts.results_dir, "--results-dir")
    if opts.probe_set and not (METHODS.get(name).probe_init or METHODS.get(name).is_probe):
        raise UserError(f"--probe-set applies to linear_probe and the methods that start from it (sft*, lp_ft), not '{name}'")
    return name, dev


def _prepare(opts: RunOptions, caches: Any) -> tuple[Any, Any, Any]:
    """The run's config, its data and device; every bad input raises UserError before anything is written."""
    from bench.models.backbones import input_resolution
    from bench.models.hparams import ProbeSpec
    from bench.names import recipe_name
    from bench.run_config import make_config

    overrides = opts.overrides()
    probe_changes = parse_set(opts.probe_set, "--probe-set")
    name, dev = _check_inputs(opts)
    data = caches.data.get(opts.data_dir)
    recipe = recipe_name(opts.recipe)
    probe = None
    if probe_changes:
        if "l2" in probe_changes:  # one strength, no cross-validation
            probe_changes["l2_grid"] = (probe_changes.pop("l2"),)
        if isinstance(probe_changes.get("l2_grid"), list | float | int):
            grid = probe_changes["l2_grid"]
            probe_changes["l2_grid"] = tuple(grid) if isinstance(grid, list) else (grid,)
        probe = ProbeSpec().update(**probe_changes)
    cfg = make_config(
        backbone=opts.backbone,
        method=name,
        fraction=opts.fraction,
        seed=opts.seed,
        recipe=recipe,
        resolution=input_resolution(opts.backbone, recipe, opts.resolution),
        pretrained=not opts.scratch,
        overrides=overrides,
        stage=opts.stage,
        precision=opts.precision,
        device=dev,
        data=data,
        probe=probe,
    )
    return cfg, data, dev


def _announce(cfg: Any, dev: Any) -> None:
    """One line saying what will train; a budget below the protocol's floor is called a smoke test."""
    from bench.budget import MIN_STEPS
    from bench.models.kinds import METHODS

    is_probe = METHODS.get(cfg.method).is_probe
    smoke = cfg.hp.steps < MIN_STEPS and cfg.recipe != "article" and not is_probe
    if is_probe:
        what = f"a logistic-regression probe, its L2 strength chosen by {cfg.probe.folds}-fold cross-validation"
    else:
        what = f"{cfg.hp.steps} steps" + (" after a logistic-regression probe" if cfg.probe is not None else "")
    _console().print(
        f"run [bold]{cfg.run_id}[/]: {cfg.backbone} / {cfg.method} / {cfg.recipe}, fraction {cfg.fraction:g}, "
        f"seed {cfg.seed}, {cfg.resolution} px, {cfg.precision} on {dev}, {what}"
        + (f"; below the protocol's minimum of {MIN_STEPS}: a smoke test" if smoke else ""),
        highlight=False,
    )


def _train(cfg: Any, data: Any, dev: Any, opts: RunOptions, caches: Any) -> Any:
    """Train with a progress bar per phase; divergence and Ctrl-C end the command with nothing written."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.train.compiling import compile_spec
    from bench.train.context import FitContext
    from bench.train.loop import Diverged
    from bench.train.run import SaveTo, execute

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    with Progress(*columns, TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=_console()) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(row: HistoryRow) -> None:
            """One bar per phase (probe, train), advanced at each history row."""
            phase = row.phase
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=row.steps, info="")
            if row.tick:  # a step between history rows: the count moves, the figures stay
                bar.update(tasks[phase], completed=row.step)
                return
            info = f"loss {row.loss:.3f}  train acc {row.train_accuracy:.3f}"
            if row.val_accuracy is not None:
                info += f"  val acc {row.val_accuracy:.3f}"
            bar.update(tasks[phase], completed=row.step, info=info)

        try:
            return execute(
                cfg,
                data,
                dev,
                FitContext(on_progress=on_progress, compile=compile_spec(opts.compile()), caches=caches),
                SaveTo(predictions=opts.save_predictions, model=opts.save_model),
            )
        except UserError as exc:
            fail(str(exc))
        except Diverged as exc:  # a learning rate too high for this run: bad input, not a crash
            fail(f"training diverged: {exc}; nothing written (lower --lr, or set grad_clip)")
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted; nothing written")
            raise typer.Exit(130) from None


def _print_result(cfg: Any, rec: Any, path: Path) -> None:
    """The record's headline figures (a RunRecord, bench/records.py), then where it is."""
    key = "test_accuracy" if cfg.stage == "final" else "val_accuracy"
    table = Table(title=f"run {cfg.run_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(key, f"{getattr(rec, key):.4f}")
    if rec.macro_f1 is not None:
        table.add_row("macro_f1", f"{rec.macro_f1:.4f}")
    table.add_row("steps (+ probe)", f"{rec.steps} (+ {rec.probe_steps})")
    table.add_row("trainable params", f"{rec.trainable_params:,}")
    table.add_row("train images/s", f"{rec.images_per_second:.0f}")
    if rec.compile_seconds:
        table.add_row("compile seconds (apart)", f"{rec.compile_seconds:.1f} ({rec.compiled_graphs} new graph(s))")
    table.add_row("wall seconds", f"{rec.wall_seconds:.1f}")
    table.add_row("peak memory MB", f"{rec.peak_memory_mb:.0f}")
    console = _console()
    console.print(table)
    console.print(f"record: {path}", highlight=False, markup=False)


def run(
    backbone: Annotated[str, typer.Option(help="One of: {backbones} (see `backbones`).")] = "efficientnet_lite0",
    method: Annotated[str, typer.Option(help="One of: {methods} (see `methods`).")] = "sft",
    branch: Annotated[str | None, typer.Option(help="sft's branch: linear, mlp or side.")] = None,
    fraction: Annotated[float, typer.Option(help="Label fraction in (0, 1], per class.")] = 0.1,
    seed: Annotated[int, typer.Option(min=0, help="Data and training seed (at most 2**32 - 1).")] = 0,
    recipe: Annotated[
        str, typer.Option(help="tuned (hyperparameters from flags) or article (the article's; 'seed' is its old name).")
    ] = "tuned",
    data_dir: Annotated[Path, typer.Option(help="Folder holding cifar-10-batches-py.")] = Path("data"),
    results_dir: Annotated[Path, typer.Option(help="Where the record goes by default.")] = Path("results"),
    resolution: Annotated[
        int | None, typer.Option(help="Input pixels (default: the backbone's; 32 for --recipe article).")
    ] = None,
    scratch: Annotated[bool, typer.Option("--scratch", help="Random initialisation instead of pretrained weights.")] = False,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, max=MAX_STEPS, help="Optimiser steps (default: the protocol's rule, at least 500; less is a smoke test)."
        ),
    ] = None,
    bn: Annotated[str | None, typer.Option(help="BatchNorm of a trained backbone: frozen (default) or train.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=MAX_BATCH, help="Batch size.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adamw.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (>= 0).")] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine, onecycle or constant.")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing.")] = None,
    backbone_lr_mult: Annotated[
        float | None, typer.Option(help="Backbone lr multiplier (> 0; frozen backbones are their own methods).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any other hyperparameter, NAME=VALUE.")] = None,
    probe_set: Annotated[
        list[str] | None,
        typer.Option(
            "--probe-set",
            help="linear_probe, sft*, lp_ft: a setting of the logistic-regression probe, NAME=VALUE "
            "(l2=0.1 for one strength; folds, tol, max_iter).",
        ),
    ] = None,
    stage: Annotated[str, typer.Option(help="final (train on all labels, test once) or trial (validation only).")] = "final",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    record: Annotated[Path | None, typer.Option(help="JSON record path (default: RESULTS_DIR/runs/RUN_ID.json).")] = None,
    save_predictions: Annotated[Path | None, typer.Option(help="CSV of test predictions and probabilities.")] = None,
    save_model: Annotated[Path | None, typer.Option(help="Checkpoint (loads with weights_only=True).")] = None,
    compile_: Annotated[
        bool, typer.Option("--compile", help="torch.compile the training step (speed only; not part of the run id).")
    ] = False,
    compile_mode: Annotated[str | None, compile_mode_option()] = None,
    deterministic: Annotated[bool, typer.Option("--deterministic", help=DETERMINISTIC_HELP)] = False,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help=TF32_HELP)] = False,
) -> None:
    """Train and evaluate one (backbone, method, fraction, seed) run."""
    opts = RunOptions(**locals())  # first statement: locals() is exactly the options here
    from bench.numerics import Numerics, configure_numerics
    from bench.train.caches import Caches
    from bench.train.run import write_record

    configure_numerics(Numerics(deterministic=opts.deterministic, tf32=opts.tf32))  # recorded in the provenance
    try:
        caches = Caches.from_env()  # SFT_BENCH_FEATURE_CACHE_MB is read here, at the entry point
        cfg, data, dev = _prepare(opts, caches)
    except UserError as exc:
        fail(str(exc))
    _announce(cfg, dev)
    rec = _train(cfg, data, dev, opts, caches)
    path = opts.record or opts.results_dir / "runs" / f"{cfg.run_id}.json"
    write_record(path, rec)
    _print_result(cfg, rec, path)
