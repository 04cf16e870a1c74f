"""The command line: one Typer app, one module per verb family, one error contract (errors.py).

    python cli.py backbones | methods | run | sweep | report | compare | perf
    python -m bench ...                 # the same app

Where a verb lives: run.py (run, backbones, methods), sweep.py (+ display.py, its live and plain
views), report.py (report, compare), perf.py. The work itself is done in bench/; these modules
parse options, call the library and print.
"""

from __future__ import annotations

import warnings

import typer

from bench.cli import perf, report, run, sweep
from bench.cli.errors import Command, OneLineErrorGroup

app = typer.Typer(
    cls=OneLineErrorGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Benchmark supervised fine-tuning (SFT) against fine-tuning with few labels.",
)


def configure_runtime() -> None:
    """Process-wide settings, made at the entry point instead of as side effects of importing a library
    module: Optuna logs only warnings (its per-trial INFO lines would bury the sweep's own view),
    CUDA's numerical defaults (bench/numerics.py `Numerics()`: cuDNN picks the fastest kernels for
    the fixed input shapes of a run, and fp32 is IEEE fp32, no TF32; `--deterministic` and `--tf32`
    of run, sweep and perf change them before training), and the CIFAR loader's md5 notice (printed
    once by the loader itself) is not repeated as a warning. Idempotent."""
    warnings.filterwarnings("ignore", message=".*md5 sums differ.*")
    import optuna

    from bench.numerics import Numerics, configure_numerics

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configure_numerics(Numerics())


@app.callback()
def _entry() -> None:
    """Runs before every command (not for `--help` of the app), from main() and from Typer's CliRunner alike:
    the one place where the process settings are made."""
    configure_runtime()


app.command("backbones", cls=Command)(run.backbones)
app.command("methods", cls=Command)(run.methods)
app.command("run", cls=Command)(run.run)
app.command("sweep", cls=Command)(sweep.sweep)
app.command("report", cls=Command)(report.report)
app.command("compare", cls=Command)(report.compare)
app.command("perf", cls=Command)(perf.perf)


def main() -> None:
    """`python cli.py`, `python -m bench` and the `sft-bench` script. The process settings come from the
    app's callback (`_entry`), which runs before every command whatever the entry point; `--help` and a
    refused option never pay for importing torch and Optuna."""
    app()
