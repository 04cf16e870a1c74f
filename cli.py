"""sft-bench command line: one command per verb; the work is done in `bench`.

python cli.py backbones
python cli.py run --backbone efficientnet_lite0 --method sft --fraction 0.1 --resolution 64
python cli.py sweep --config experiments/quick.toml
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.registry import UserError, check_writable

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Benchmark supervised fine-tuning (SFT) against fine-tuning with few labels."
)
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """One line, no traceback, exit code 2: the contract for every bad input."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
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
    console.print(table)


@app.command()
def methods() -> None:
    """List the methods."""
    from bench.models.methods import METHODS

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("model")
    for name in METHODS:
        table.add_row(name, METHODS.get(name).summary)
    console.print(table)


def _parse_set(values: list[str] | None) -> dict:
    out = {}
    for item in values or []:
        if "=" not in item:
            raise UserError(f"--set expects NAME=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@app.command()
def run(
    backbone: Annotated[str, typer.Option(help="Registry name or timm:<name> (see `backbones`).")] = "efficientnet_lite0",
    method: Annotated[str, typer.Option(help="finetune, linear_probe, lp_ft, sft, sft-mlp, ... (see `methods`).")] = "sft",
    branch: Annotated[str | None, typer.Option(help="sft's branch: linear, mlp or side.")] = None,
    fraction: Annotated[float, typer.Option(help="Label fraction in (0, 1], per class.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Data and training seed.")] = 0,
    recipe: Annotated[str, typer.Option(help="tuned (hyperparameters from flags) or seed (the article's).")] = "tuned",
    data_dir: Annotated[Path, typer.Option(help="Folder holding cifar-10-batches-py.")] = Path("data"),
    results_dir: Annotated[Path, typer.Option(help="Where the record goes by default.")] = Path("results"),
    resolution: Annotated[int | None, typer.Option(help="Input pixels (default: the backbone's; 32 for --recipe seed).")] = None,
    scratch: Annotated[bool, typer.Option("--scratch", help="Random initialisation instead of pretrained weights.")] = False,
    steps: Annotated[
        int | None, typer.Option(help="Optimiser steps (default: the protocol's rule, at least 500; less is a smoke test).")
    ] = None,
    bn: Annotated[str | None, typer.Option(help="BatchNorm of a trained backbone: frozen (default) or train.")] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adamw.")] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    schedule: Annotated[str | None, typer.Option(help="cosine, onecycle or constant.")] = None,
    label_smoothing: Annotated[float | None, typer.Option()] = None,
    backbone_lr_mult: Annotated[
        float | None, typer.Option(help="Backbone lr multiplier (> 0; frozen backbones are their own methods).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any other hyperparameter, NAME=VALUE.")] = None,
    probe_set: Annotated[
        list[str] | None,
        typer.Option("--probe-set", help="sft*/lp_ft: a hyperparameter of the linear probe they start from, NAME=VALUE."),
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
) -> None:
    """Train and evaluate one (backbone, method, fraction, seed) run."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.budget import MIN_STEPS
    from bench.models.methods import method_name
    from bench.train.engine import Diverged
    from bench.train.run import execute, get_data, make_config, write_record

    try:
        overrides = {
            k: v
            for k, v in dict(
                steps=steps,
                bn=bn,
                lr=lr,
                batch_size=batch_size,
                optimizer=optimizer,
                weight_decay=weight_decay,
                schedule=schedule,
                label_smoothing=label_smoothing,
                backbone_lr_mult=backbone_lr_mult,
            ).items()
            if v is not None
        }
        overrides.update(_parse_set(set_))
        from bench.sweep.experiment import MAX_SEED

        if not 0 <= seed <= MAX_SEED:
            raise UserError(f"--seed must be in 0..{MAX_SEED}, got {seed}")
        dev = _device(device)
        name = method_name(method, branch)
        from bench.data import check_fraction
        from bench.models.methods import METHODS

        METHODS.get(name)  # names and the fraction are checked before the data is read
        check_fraction(fraction)
        from bench.models.backbones import get_backbone

        bspec = get_backbone(backbone)
        if not scratch:
            ok, why = bspec.available()
            if not ok:
                raise UserError(f"pretrained weights for backbone '{backbone}' are not available: {why}; or pass --scratch")
        # Every output is checked now, not after the training.
        for file in (record, save_predictions, save_model):
            if file is not None and file.is_dir():
                raise UserError(f"{file} is a folder; give a file path")
        folders = [results_dir if record is None else record.parent]
        folders += [file.parent for file in (save_predictions, save_model) if file is not None]
        for folder in folders:
            check_writable(folder)
        probe_changes = _parse_set(probe_set)
        if probe_changes and not METHODS.get(name).probe_init:
            raise UserError(f"--probe-set applies to methods that start from a linear probe (sft*, lp_ft), not '{name}'")
        data = get_data(data_dir)
        probe = None
        if probe_changes:
            from bench.models.methods import HParams
            from bench.train.engine import default_probe

            base = HParams().update(**METHODS.get(name).defaults).update(**overrides)
            probe = default_probe(base).update(**probe_changes)
        cfg = make_config(
            backbone,
            name,
            fraction,
            seed,
            recipe=recipe,
            resolution=resolution,
            pretrained=not scratch,
            overrides=overrides,
            stage=stage,
            precision=precision,
            device=dev,
            data=data,
            probe=probe,
        )
    except UserError as exc:
        fail(str(exc))
    console.print(
        f"run [bold]{cfg.run_id}[/]: {cfg.backbone} / {cfg.method} / {cfg.recipe}, fraction {cfg.fraction:g}, "
        f"seed {cfg.seed}, {cfg.resolution} px, {cfg.precision} on {dev}, {cfg.hp.steps} steps"
        + (f" (+ {cfg.probe.steps} probe steps)" if cfg.probe is not None else "")
        + (
            f"; below the protocol's minimum of {MIN_STEPS}: a smoke test"
            if cfg.hp.steps < MIN_STEPS and cfg.recipe == "tuned"
            else ""
        ),
        highlight=False,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def on_progress(row: dict) -> None:
            phase = row["phase"]
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=row["steps"], info="")
            info = f"loss {row['loss']:.3f}  train acc {row['train_accuracy']:.3f}"
            if "val_accuracy" in row:
                info += f"  val acc {row['val_accuracy']:.3f}"
            bar.update(tasks[phase], completed=row["step"], info=info)

        try:
            rec = execute(
                cfg,
                data,
                dev,
                on_progress=on_progress,
                save_predictions=save_predictions,
                save_model=save_model,
                compile=compile_,
            )
        except UserError as exc:
            fail(str(exc))
        except Diverged as exc:  # a learning rate too high for this run: bad input, not a crash
            fail(f"training diverged: {exc}; nothing written (lower --lr, or set grad_clip)")
        except KeyboardInterrupt:
            err.print("interrupted; nothing written")
            raise typer.Exit(130) from None
    path = record or results_dir / "runs" / f"{cfg.run_id}.json"
    write_record(path, rec)
    key = "test_accuracy" if cfg.stage == "final" else "val_accuracy"
    table = Table(title=f"run {cfg.run_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(key, f"{rec[key]:.4f}")
    if "macro_f1" in rec:
        table.add_row("macro_f1", f"{rec['macro_f1']:.4f}")
    table.add_row("steps (+ probe)", f"{rec['steps']} (+ {rec['probe_steps']})")
    table.add_row("trainable params", f"{rec['trainable_params']:,}")
    table.add_row("train images/s", f"{rec['images_per_second']:.0f}")
    table.add_row("wall seconds", f"{rec['wall_seconds']:.1f}")
    table.add_row("peak memory MB", f"{rec['peak_memory_mb']:.0f}")
    console.print(table)
    console.print(f"record: {path}", highlight=False, markup=False)


def _device(name: str) -> object:
    from bench.provenance import resolve_device

    return resolve_device(name)


# The other verbs live beside their library code; each module adds its commands to `app`.
for _module in ("bench.cli_sweep", "bench.cli_report", "bench.cli_perf"):
    __import__(_module, fromlist=["register"]).register(app)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*md5 sums differ.*")  # printed once by the loader below
    try:
        app()
    except UserError as exc:  # any bad input that escaped a command
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
