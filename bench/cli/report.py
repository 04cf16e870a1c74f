"""`report` and `compare`: tables, statistics and plots of finished sweeps (the work is in bench/report/).

python cli.py report --results-dir results --experiment quick
python cli.py compare results/quick results_gpu/quick --output quick-cpu-vs-gpu.md

compare writes its Markdown to results/compare/ unless told otherwise: beside experiment A, as it once did, the
README's own example (A = results/examples/quick-v1) wrote into a committed example folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.cli.errors import fail
from bench.registry import UserError

console = Console()  # no file of its own: it writes to whatever sys.stdout is at print time (CliRunner's too)
COMPARE_DIR = Path("results") / "compare"  # compare's default output folder (ignored by git, no experiment's own)


def report(
    results_dir: Annotated[Path, typer.Option(help="Folder holding the experiments (or one experiment's folder).")] = Path(
        "results"
    ),
    experiment: Annotated[str | None, typer.Option(help="Experiment name under --results-dir (default: the only one).")] = None,
    test: Annotated[
        str,
        typer.Option(
            help="ttest (paired t-test) or wilcoxon (signed-rank), over paired seeds; wilcoxon is refused where the "
            "seed count cannot reach --alpha (2/2^n > alpha: at alpha 0.05 it needs 6 or more paired seeds)."
        ),
    ] = "ttest",
    alpha: Annotated[
        float | None,
        typer.Option(help="Significance level after Holm's correction; default: the experiment's [stats] alpha, else 0.05."),
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage (journal path or URL); default: config.toml's, else optuna.journal.")
    ] = None,
) -> None:
    """Tables (md, tex, csv), plots (png, pdf), label efficiency and report.html from runs.csv and the Optuna storage."""
    from bench.report import write

    try:
        res = write(results_dir, experiment, test=test, alpha=alpha, storage=storage)
    except UserError as exc:
        fail(str(exc))
    except OSError as exc:  # a fault of the machine (a full disk): the report was staged apart, the old one stands
        what = f"{exc.strerror or type(exc).__name__}" + (f" ({exc.filename})" if exc.filename else "")
        fail(
            f"cannot write the report: {what}; the previous report is intact; free some space or fix the folder, "
            "then run the same command",
            code=1,
        )
    if res.grid is not None and not res.grid.complete:  # first, so that no number below passes for the grid's
        console.print(f"[bold yellow]{escape(res.grid.line())}[/]", highlight=False, soft_wrap=True)
    wtl = res.win_tie_loss
    if len(wtl):
        t = Table(title="verdicts against each baseline (cells; Holm within each family, TOST for equivalence)")
        cols = ("method", "baseline", "family", "better", "worse", "equivalent", "inconclusive", "untested")
        for col in cols:
            t.add_column(col, justify="left" if col in ("method", "baseline", "family") else "right")
        for r in wtl.to_dict("records"):
            t.add_row(*(str(r[c]) for c in cols))
        console.print(t)
    for line in res.summary:
        console.print(escape(line.replace("`", "")), highlight=False, soft_wrap=True)
    for note in res.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    console.print(
        f"{len(res.files)} files in {res.experiment_dir} (tables/, plots/) in {res.seconds:.1f} s; open {res.html}",
        highlight=False,
    )


def compare(
    a: Annotated[str, typer.Argument(help="Experiment A: its folder, or its name under --results-dir.")],
    b: Annotated[str, typer.Argument(help="Experiment B: its folder, or its name under --results-dir.")],
    results_dir: Annotated[Path, typer.Option(help="Where experiment names are looked up.")] = Path("results"),
    experiment: Annotated[str | None, typer.Option(help="When A and B are results folders: the experiment in both.")] = None,
    test: Annotated[
        str, typer.Option(help="ttest or wilcoxon (paired over shared seeds); wilcoxon refused where it cannot reach --alpha.")
    ] = "ttest",
    alpha: Annotated[float, typer.Option(help="Significance level after Holm's correction.")] = 0.05,
    output: Annotated[Path | None, typer.Option(help="Markdown file (default: results/compare/<A>_vs_<B>.md).")] = None,
) -> None:
    """Two experiments side by side: per cell, B − A and whether it is significant."""
    from bench.report import atomic_write_text, compare, resolve_experiment, slug

    try:
        pa = resolve_experiment(a, results_dir, experiment)
        pb = resolve_experiment(b, results_dir, experiment)
        res = compare(pa, pb, test=test, alpha=alpha)
        out = output or COMPARE_DIR / f"{slug(res.label_a)}_vs_{slug(res.label_b)}.md"
        if out.exists() and out.is_dir():
            raise UserError(f"--output {out} is a folder; give a file name")
    except UserError as exc:
        fail(str(exc))
    try:  # the file first: a reader piping the table into `head` still gets it
        atomic_write_text(out, res.markdown())
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    t = Table(title=f"A = {res.label_a}   B = {res.label_b}")
    for col in res.HEAD:
        t.add_column(col, justify="left" if col in ("backbone", "method", "recipe", "test") else "right", no_wrap=True)
    for row in res.display_rows():
        t.add_row(*row)
    # Piped or redirected output is not squeezed to 80 columns.
    (console if console.is_terminal else Console(width=200)).print(t)
    for note in res.notes():
        console.print(note, highlight=False, soft_wrap=True, markup=False)
    console.print(f"wrote {out} (Markdown: both sides' provenance, the table, the notes)", highlight=False, markup=False)
