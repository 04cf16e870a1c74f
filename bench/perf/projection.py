"""The projected cost of a grid (`perf --project`) from measured throughputs: what each cell's
searches and final runs train and evaluate, at the rates perf measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.budget import REPORTS, article_recipe_steps, step_budget
from bench.models.backbones import input_resolution
from bench.models.hparams import ARTICLE_RECIPE, HParams
from bench.models.kinds import METHODS
from bench.names import RECIPE_ALIASES
from bench.perf.rows import PerfRow
from bench.records import Cell
from bench.subsets import split_sizes

if TYPE_CHECKING:
    from bench.sweep.experiment import Experiment


@dataclass(frozen=True)
class GridRun:
    """What one cell of a grid costs to run: its searches' trials and its final runs (protocol v2)."""

    backbone: str
    method: str
    recipe: str
    fraction: float
    resolution: int
    trials: int  # search trials of the cell, every search seed's together (0: the article recipe, no search)
    search_seeds: int  # searches of the cell (per_seed: one per seed; shared: one)
    final_runs: int
    steps: int  # the cell's step budget S: every trial and final run of every method trains S steps
    batch_size: int
    folds: int  # trainings per trial (k folds x pooled seeds; 1: one validation split of one seed)
    frozen: bool  # the backbone never trains: its runs train a head on cached features
    features: bool  # its runs encode the labelled images once (frozen rows, and the probe of sft* / lp_ft)
    prune_at: float  # share of its steps a pruned trial trains at least (search.pruner_warmup)


def grid_runs(path: Path) -> tuple[list[GridRun], Experiment]:
    """The cells of an experiment file as the sweep reads it (bench.sweep.experiment), and the experiment.

    Each cell's step budget is what the sweep's `make_config` gives it: the grid's fixed
    `steps`, else the protocol's rule of its labelled-set size (bench/budget.py), the
    article's 10 epochs at batch 100 for the article recipe. Its resolution is
    `input_resolution`'s, the one rule `make_config` applies: the article's recipe at its
    32 px whatever the grid's resolution, else the grid's, else the backbone's own."""
    from bench.sweep.experiment import read_toml, resolve

    exp = resolve(read_toml(Path(path)), str(path))
    return [_grid_run(exp, cell) for cell in exp.cells()], exp


def _grid_run(exp: Experiment, cell: Cell) -> GridRun:
    """One cell's cost inputs."""
    article = RECIPE_ALIASES.get(cell.recipe, cell.recipe) == "article"
    spec = METHODS.get(cell.method)
    res = input_resolution(cell.backbone, cell.recipe, None if article else exp.resolution_for(cell.backbone))
    # as make_config resolves them: recipe, the method's defaults, then the grid's fixed values
    base = ARTICLE_RECIPE if article else HParams()
    hp = base.update(**spec.defaults).update(**({} if article else exp.fixed_hparams(cell.method)))
    n = sum(split_sizes(cell.fraction, exp.val_fraction))
    if exp.steps is not None:
        steps = exp.steps
    else:
        steps = article_recipe_steps(n, hp.batch_size) if article else step_budget(n, hp.batch_size)
    searches = len(exp.searches(cell))  # none for a fixed recipe and for the linear probe (protocol v3)
    return GridRun(
        cell.backbone,
        cell.method,
        cell.recipe,
        cell.fraction,
        int(res),
        exp.trials * searches,
        searches,
        len(exp.seeds),
        steps,
        hp.batch_size,
        exp.cv_folds * max(1, len(exp.pool_seeds)),  # a pooled trial trains once per pooled seed
        not spec.trains_backbone,
        spec.probe_init or not spec.trains_backbone,
        float(exp.search.pruner_warmup),
    )


@dataclass(frozen=True)
class CellCost(GridRun):
    """One cell of the grid with what it processes, the rates it was costed at, and its hours (None: this
    device measured no rate for its backbone and resolution)."""

    train_images: int
    eval_images: int
    train_ips: float | None
    eval_ips: float | None
    hours: float | None


@dataclass(frozen=True)
class GridProjection:
    """`project_grid`'s answer: every cell's cost, the assumptions as sentences, the total hours of the
    measured cells, and the (backbone@resolution) it could not cost."""

    cells: list[CellCost]
    notes: list[str]
    hours: float
    missing: list[str]


def project_grid(
    path: Path, rows: list[PerfRow], pruned_fraction: float | None = None, pruned_source: str = ""
) -> GridProjection:
    """Cost of a grid from measured throughputs (rows of a perf run); assumptions in `notes`.

    Per cell, with S its step budget and B its batch: every search trial (trials x search
    seeds, x folds) that trains the backbone sees S x B images at the suite's training
    rate (b) and validates every S/10 steps (10 passes over its validation images) at the
    evaluation rate (e); a cell whose runs need frozen features (frozen rows, the probe of
    sft* / lp_ft) encodes its labelled images once per search seed and fold (the feature
    cache), and frozen rows train only heads on them (not counted). Then one final run per
    seed: S x B training images when it trains the backbone, the features when it needs
    them, and 10,000 test images. Pruned trials stop at search.pruner_warmup of their steps.
    """
    runs, exp = grid_runs(path)
    speed: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        if r.id.path in ("b_suite_train", "e_suite_eval") and r.id.setting == "suite":
            speed.setdefault((r.id.case.backbone, r.id.case.resolution), {})[r.id.path] = float(r.images_per_second)
    p = pruned_fraction or 0.0
    cells = []
    for g in runs:
        t = speed.get((g.backbone, g.resolution), {})
        t_train, t_eval = t.get("b_suite_train"), t.get("e_suite_eval")
        n_train, n_val = split_sizes(g.fraction, exp.val_fraction)
        n = n_train + n_val
        v = n_val if g.folds == 1 else n / g.folds  # validation images of one training of a trial
        run = 0 if g.frozen else g.steps * g.batch_size  # training images of one run (or fold of a trial)
        search = g.trials * g.folds * (1 - p * (1 - g.prune_at))  # trainings, pruned ones counted in part
        features = g.search_seeds * g.folds * ((n - v) + (v if g.frozen else 0)) if g.features else 0
        train_imgs = search * run + g.final_runs * run
        eval_imgs = search * (0 if g.frozen else REPORTS * v) + features + g.final_runs * ((n if g.features else 0) + 10_000)
        hours = (train_imgs / t_train + eval_imgs / t_eval) / 3600 if t_train and t_eval else None
        cells.append(
            CellCost(
                **asdict(g),
                train_images=int(train_imgs),
                eval_images=int(eval_imgs),
                train_ips=t_train,
                eval_ips=t_eval,
                hours=hours,
            )
        )
    tuned = [g for g in runs if g.trials]
    per_search = exp.trials
    searches = f"{tuned[0].search_seeds} search seed(s), search mode {exp.search.mode}" if tuned else "no search"
    folds = f", {exp.cv_folds}-fold cross-validated trials" if exp.cv_folds > 1 else ""
    budget = f"the grid's fixed steps = {exp.steps}" if exp.steps is not None else "the protocol's rule"
    source = pruned_source or ("measured on the --sweep folder" if pruned_fraction is not None else "no sweep given")
    article = sum(RECIPE_ALIASES.get(g.recipe, g.recipe) == "article" for g in runs if not g.trials)
    pooled = f", each trial trained on {len(exp.pool_seeds)} pooled seeds" if exp.search.mode == "pooled" and tuned else ""
    notes = [
        f"grid {path}: {len(runs)} cells ({len(tuned)} searched with {per_search if tuned else 0} trials per search x "
        f"{searches}{folds}{pooled}; {article} with the article's fixed recipe; {len(runs) - len(tuned) - article} without "
        f"a search: the linear probe, the defaults recipe), {runs[0].final_runs if runs else 0} final run(s) per cell",
        f"steps: each cell's step budget S ({budget}: max(500, ceil(10 n / batch)) for n labelled images, "
        "10 epochs at batch 100 for the article recipe); every trial and final run that trains the backbone "
        "sees S x batch images, and a trial validates every S/10 steps (10 passes over its validation images)",
        "frozen-backbone rows (linear_probe, sft-mlp-frozen, sft-side-frozen) and the linear probe that sft* and lp_ft "
        "start from cost one feature pass over the labelled images per search seed and fold and per final run, thanks "
        "to the shared feature cache; head-only steps on cached features are ignored",
        f"pruned trials: {p:.0%} of trials ({source}), assumed to stop at {runs[0].prune_at if runs else 0.5:.0%} of "
        "their steps (search.pruner_warmup: the earliest the pruner may stop a trial)",
        "rates: the suite's training (b) and evaluation (e) images/s measured by `perf` on the device that wrote them, "
        "at batch 256; start-up, model building and Optuna overheads are not counted",
    ]
    total = sum(c.hours for c in cells if c.hours is not None)
    missing = sorted({f"{c.backbone}@{c.resolution}" for c in cells if c.hours is None})
    return GridProjection(cells, notes, total, missing)


ASSUMED_GPU_RATES = (2_000, 5_000, 10_000)  # training images/s, for scale only: not measured


def projection_markdown(proj: GridProjection, assumed_rates: tuple[int, ...] = ASSUMED_GPU_RATES) -> str:
    """Per backbone and resolution: images to process, hours at the measured rates, and hours at
    a few assumed one-GPU rates (labelled as assumptions) so the scale is visible before a GPU run."""
    by: dict[tuple, dict] = {}
    for c in proj.cells:
        k = (c.backbone, c.resolution)
        agg = by.setdefault(k, {"cells": 0, "train_images": 0, "eval_images": 0, "hours": 0.0, "ips": c.train_ips})
        agg["cells"] += 1
        agg["train_images"] += c.train_images
        agg["eval_images"] += c.eval_images
        agg["hours"] = None if c.hours is None or agg["hours"] is None else agg["hours"] + c.hours

    def assumed(train: float, evals: float, rate: float) -> float:
        return (train / rate + evals / (3 * rate)) / 3600  # forward only: about a third of a training step

    rate_cols = " | ".join(f"h at {r / 1000:g}k img/s (assumed)" for r in assumed_rates)
    lines = [
        "## Projected cost of the grid",
        "",
        "| backbone @ px | cells | training images (M) | evaluation images (M) | measured train img/s | hours measured | "
        f"{rate_cols} |",
        "|---|---|---|---|---|---|" + "---|" * len(assumed_rates),
    ]
    for (b, res), a in by.items():
        hours = "not measured" if a["hours"] is None else f"{a['hours']:.1f}"
        ips = "not measured" if not a["ips"] else f"{a['ips']:.0f}"
        millions = f"{a['train_images'] / 1e6:.1f} | {a['eval_images'] / 1e6:.2f}"
        extra = " | ".join(f"{assumed(a['train_images'], a['eval_images'], r):.1f}" for r in assumed_rates)
        lines.append(f"| {b} @ {res} | {a['cells']} | {millions} | {ips} | {hours} | {extra} |")
    total_train = sum(a["train_images"] for a in by.values())
    total_eval = sum(a["eval_images"] for a in by.values())
    extra = ", ".join(f"{assumed(total_train, total_eval, r):.0f} h at {r / 1000:g}k" for r in assumed_rates)
    lines += [
        "",
        f"Total: {total_train / 1e6:.1f} M training images and {total_eval / 1e6:.1f} M evaluated; "
        f"{proj.hours:.1f} h at the measured rates (measured cases only); {extra} images/s (assumed rates).",
    ]
    if proj.missing:
        lines.append(f"Not measured on this device (add them with `perf --cases`): {', '.join(proj.missing)}.")
    lines += ["", "Assumptions:", *[f"- {n}" for n in proj.notes]]
    lines.append(
        f"- the assumed rates ({', '.join(f'{r:,}' for r in assumed_rates)} training images/s, evaluation 3x faster) are "
        "not measurements: they only show the scale until `perf --device cuda` measures the GPU"
    )
    return "\n".join(lines)
