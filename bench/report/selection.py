"""How firmly each search chose: the kept candidate's validation score beside the runner-up's, and the
standard error of such a score (tables/selection.*, and one line of the summary).

Why the report says this itself: protocol v2's reviewer found its searches decided by 2-3 of 100
validation images, a standard error of about 5 points, and its two worst results were such flips. Protocol
v3 pools the seeds to shrink that error, but at 1% of CIFAR-10 a pooled score over 3 seeds is still a
mean over 300 images (one standard error about 2.8 points at 63%). A choice inside that error is a coin
flip between configurations; pooling keeps it out of the spread across seeds (every seed runs the same
choice), not out of a difference between two methods whose cells chose differently. A reader needs to
see which choices were decided and which were not, from the report, not from a reviewer.

The yardstick is the binomial standard error of the kept score, sqrt(p(1 - p) / N), N the validation images
behind one score (per seed, times the pooled seeds; every labelled image once under k-fold scoring). Two
candidates scored on the same images have a difference with a smaller error when they agree on most images,
so "within one standard error" is a warning, not a test; the gap is also given in images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from bench.report.load import StudyInfo, read_config
from bench.report.render import Cell, TableModel
from bench.report.schema import row_sort_key
from bench.report.text import frac_label, pct, points, slug, tex_escape
from bench.subsets import split_sizes

DEFAULT_VAL_FRACTION = 0.2  # the sweep's default, for studies that predate recording it


@dataclass(frozen=True)
class Choice:
    """One search's choice: its candidates' scores and how many validation images stand behind a score."""

    backbone: str
    method: str
    recipe: str
    fraction: float
    seeds: tuple[int, ...]  # whose validation images score a candidate (pooled: several)
    candidates: int  # completed trials among those the search counted
    pruned: int  # pruned trials among them (protocol v1/v2 searches pruned against a single reference)
    kept: str  # "defaults", the changes from the defaults, or "trial k"
    best: float
    runner_up: float  # nan: a single completed candidate
    images: int  # validation images behind one score
    ahead: tuple[int, int] | None = None  # (pooled seeds or folds where the kept candidate scored higher, of how many)

    @property
    def se(self) -> float:
        """Binomial standard error of the kept score (a fraction)."""
        return math.sqrt(self.best * (1 - self.best) / self.images) if self.images > 0 else math.nan

    @property
    def gap(self) -> float:
        return self.best - self.runner_up

    @property
    def gap_images(self) -> float:
        """The gap as a count of validation images (over all pooled seeds)."""
        return self.gap * self.images

    @property
    def gap_se(self) -> float:
        return self.gap / self.se if self.se > 0 else math.nan

    @property
    def reading(self) -> str:
        if not math.isfinite(self.runner_up):
            return f"one completed candidate ({self.pruned} pruned)" if self.pruned else "one candidate"
        if self.gap_se < 1:
            return "within one standard error"
        if self.gap_se < 2:
            return "1 to 2 standard errors"
        return "decided"


def _label(hparams: dict, defaults: dict | None, number: int) -> str:
    """A candidate's name: "defaults" (the first trial of a search that starts from them), else what differs
    from the defaults ("backbone_lr_mult=0.1"), else its trial number."""
    if defaults is None:
        return f"trial {number + 1}"
    if hparams == defaults:
        return "defaults"
    changed = [f"{k}={hparams[k]:g}" if isinstance(hparams[k], float) else f"{k}={hparams[k]}" for k in sorted(hparams)
               if defaults.get(k) != hparams.get(k)]  # fmt: skip
    return ", ".join(changed) if changed else "defaults"


def choices(studies: list[StudyInfo], experiment_dir: Path) -> list[Choice]:
    """Every search's choice, as the sweep made it: the first `trials` finished trials count, the best completed
    one is kept, a tie goes to the lowest slot (bench/sweep/status.py)."""
    cfg = read_config(experiment_dir)
    trials, search = cfg.get("trials"), cfg.get("search")
    budget = trials if isinstance(trials, int) and trials > 0 else None
    # older folders wrote `search = "per_seed"` (a mode, not a table); their first trial was the defaults too
    first_defaults = str(search.get("first_trial", "defaults") if isinstance(search, dict) else "defaults") == "defaults"
    out = []
    for s in studies:
        finished = sorted((t for t in s.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.number)
        counted = finished[:budget] if budget else finished
        complete = [t for t in counted if t.state == TrialState.COMPLETE and t.value is not None]
        if not complete:
            continue
        slot = lambda t: int(t.user_attrs.get("slot", t.number))  # noqa: E731
        ranked = sorted(complete, key=lambda t: (-float(t.value), slot(t)))
        attrs = s.study.user_attrs
        settings = attrs.get("settings") or {}
        val_fraction = float(settings.get("val_fraction") or cfg.get("val_fraction") or DEFAULT_VAL_FRACTION)
        folds = int(settings.get("cv_folds") or cfg.get("cv_folds") or 1)
        if attrs.get("search_mode") == "pooled" and attrs.get("pool"):
            seeds = tuple(int(x) for x in attrs["pool"])
        else:
            seeds = (int(s.seed if s.seed is not None else attrs.get("seed", 0)),)
        # as the trial recorded them; before it did (study64's code), CIFAR-10's balanced classes give the count
        train, val = split_sizes(s.fraction, val_fraction)
        per_seed = train + val if folds > 1 else val  # k-fold: every labelled image is scored once
        zero = next((t for t in finished if slot(t) == 0), None) if first_defaults else None
        defaults = None if zero is None else dict(zero.user_attrs.get("hparams") or zero.params)
        kept = ranked[0]
        ahead = _ahead(kept, ranked[1]) if len(ranked) > 1 else None
        out.append(
            Choice(
                s.backbone, s.method, s.recipe, s.fraction, seeds, len(complete), len(counted) - len(complete),
                _label(dict(kept.user_attrs.get("hparams") or kept.params), defaults, kept.number),
                float(kept.value), float(ranked[1].value) if len(ranked) > 1 else math.nan,
                int(kept.user_attrs.get("val_images") or per_seed * len(seeds)), ahead,
            )
        )  # fmt: skip
    return sorted(out, key=lambda c: (row_sort_key((c.backbone, c.recipe, c.method)), c.fraction, c.seeds))


def _ahead(kept: FrozenTrial, other: FrozenTrial) -> tuple[int, int] | None:
    """On how many of the pooled seeds (or folds) the kept candidate scored above the runner-up: recorded by
    trials since `fold_val_accuracy` was (None before, and for a single split)."""
    a, b = kept.user_attrs.get("fold_val_accuracy"), other.user_attrs.get("fold_val_accuracy")
    if not a or not b or len(a) != len(b):
        return None
    return sum(float(x) > float(y) for x, y in zip(a, b, strict=True)), len(a)


def _short(c: Choice, backbones: int, recipes: int) -> str:
    """A cell's name in a summary sentence (the backbone and recipe only where the experiment has several)."""
    where = f", {c.backbone}" if backbones > 1 else ""
    seeds = f", seed {c.seeds[0]}" if len(c.seeds) == 1 else ""
    recipe = f" ({c.recipe})" if recipes > 1 else ""
    return f"`{c.method}`{recipe} at {frac_label(c.fraction)}{seeds}{where}"


def _brief(kept: str) -> str:
    """A kept configuration's name in a sentence: as in the table when short, else "a sampled configuration"."""
    return kept if len(kept) <= 32 else "a sampled configuration"


def _yardstick(close: list[Choice]) -> str:
    """The standard errors behind the named choices, one range per number of validation images."""
    by_n: dict[int, list[float]] = {}
    for c in close:
        by_n.setdefault(c.images, []).append(100 * c.se)
    parts = []
    for n, ses in sorted(by_n.items()):
        lo, hi = f"{min(ses):.1f}", f"{max(ses):.1f}"
        parts.append(f"{lo if lo == hi else f'{lo}-{hi}'} points over {n} validation images")
    return "; ".join(parts)


MAX_NAMED = 6  # choices named in the summary sentence; the table has them all


def summary_line(found: list[Choice], tests: pd.DataFrame | None = None) -> str | None:
    """One summary bullet: which choices were within one standard error of their runner-up, and which primary
    comparisons join two cells that chose differently (None: no search, or every choice decided).

    Why the comparisons: `sft` is `lp_ft` with a doubled head step; when their cells keep different
    configurations on a coin flip, "sft against lp_ft" compares configurations as well as methods, and a
    reader of the verdict must be told so where the verdict is."""
    close = [c for c in found if c.reading == "within one standard error"]
    if not close:
        return None
    nb, nr = len({c.backbone for c in found}), len({c.recipe for c in found})
    named = [f"{_short(c, nb, nr)}: kept {_brief(c.kept)}, {pct(c.best)}% against {pct(c.runner_up)}%" for c in close[:MAX_NAMED]]
    more = f"; and {len(close) - MAX_NAMED} more" if len(close) > MAX_NAMED else ""
    yardstick = _yardstick(close)
    line = (
        f"{len(close)} of {len(found)} search choices {'was' if len(close) == 1 else 'were'} within one standard error of "
        "the runner-up candidate "
        f"(tables/selection.md): {'; '.join(named)}{more} (one standard error: {yardstick}). {_where(found)}"
    )
    return line + _mixed(found, tests, nb)


def _cells(found: list[Choice]) -> dict[tuple, list[Choice]]:
    """The choices of each cell: one (pooled or shared search) or one per seed (per-seed search)."""
    by_cell: dict[tuple, list[Choice]] = {}
    for c in found:
        by_cell.setdefault((c.backbone, c.recipe, c.method, round(c.fraction, 12)), []).append(c)
    return by_cell


def _where(found: list[Choice]) -> str:
    """Where selection noise goes: into the spread across seeds (a choice per seed) or not (a choice per cell)."""
    if any(len(v) > 1 for v in _cells(found).values()):
        return (
            "Each seed's final run inherits its own seed's choice (per-seed search), so this noise is in the spread "
            "across seeds and in every difference between methods."
        )
    return "Every seed's final run inherits its cell's choice, so such a choice is not in the spread across seeds."


def _mixed(found: list[Choice], tests: pd.DataFrame | None, nb: int) -> str:
    """ " Primary comparisons between cells that chose differently: ..." where a coin flip is one of the two."""
    if tests is None or not len(tests) or "family" not in tests:
        return ""
    one = {k: v[0] for k, v in _cells(found).items() if len(v) == 1}  # a per-seed search has no single choice per cell
    out = []
    for t in tests[tests["family"] == "primary"].to_dict("records"):
        b, f = t["backbone"], round(float(t["fraction"]), 12)
        base_recipe = str(t.get("baseline", "")).rpartition("/")[2] or t["recipe"]
        a, z = one.get((b, t["recipe"], t["method"], f)), one.get((b, base_recipe, t["baseline_method"], f))
        if a is None or z is None or a.kept == z.kept:
            continue
        if "within one standard error" not in (a.reading, z.reading):
            continue
        out.append(f"`{t['method']}` against `{t['baseline_method']}` at {frac_label(f)}{f', {b}' if nb > 1 else ''} "
                   f"({_brief(a.kept)} against {_brief(z.kept)})")  # fmt: skip
    if not out:
        return ""
    return (
        " Primary comparisons whose two cells kept different configurations, one of them on such a choice, so that "
        f"they compare configurations as well as methods: {'; '.join(out)}."
    )


def table(found: list[Choice], experiment: str) -> TableModel:
    """tables/selection.*: one row per search."""
    head = ["backbone", "method", "recipe", "fraction", "scored on", "kept", "val. %: kept / runner-up",
            "gap: points (images)", "1 SE (points)", "reading"]  # fmt: skip
    per_seed = any(c.ahead is not None for c in found)  # recorded by newer trials only: the column where it is
    if per_seed:
        head.insert(-1, "kept ahead on")
    rows = []
    for c in found:
        seeds = ",".join(map(str, c.seeds))
        scored = f"seed {seeds}" if len(c.seeds) == 1 else f"seeds {seeds}"
        two = math.isfinite(c.runner_up)
        vals: list[Cell] = [
            f"{pct(c.best)} / {pct(c.runner_up)}" if two else f"{pct(c.best)} / –",
            f"{points(c.gap)} ({c.gap_images:.0f} of {c.images})" if two else "–",
            pct(c.se),
            *([f"{c.ahead[0]} of {c.ahead[1]}" if c.ahead else "–"] if per_seed else []),
            c.reading,
        ]
        rows.append(([c.backbone, c.method, c.recipe, frac_label(c.fraction), scored, c.kept], vals))
    notes = [
        "Each candidate's score is its mean validation accuracy over the seeds it was scored on; 1 SE is the binomial "
        "standard error of the kept score over that many validation images. Within one standard error, the choice "
        "between the configurations is a coin flip. A pooled or shared search runs its choice for every seed: the "
        "flip is not in the spread across seeds, but it is in any difference between two methods whose cells chose "
        "differently. A per-seed search's flips are in the spread.",
        "Candidates scored on the same images err together, so their difference is often known better than one SE: "
        "a warning, not a test.",
        *(["Kept ahead on: on how many of the pooled seeds (or folds) the kept candidate scored above the runner-up."]
          if per_seed else []),
    ]  # fmt: skip
    frame = pd.DataFrame(
        [
            dict(
                backbone=c.backbone,
                method=c.method,
                recipe=c.recipe,
                fraction=c.fraction,
                seeds=" ".join(map(str, c.seeds)),
                candidates=c.candidates,
                pruned=c.pruned,
                kept=c.kept,
                best=c.best,
                runner_up=c.runner_up,
                gap=c.gap,
                validation_images=c.images,
                se=c.se,
                ahead=None if c.ahead is None else c.ahead[0],
                ahead_of=None if c.ahead is None else c.ahead[1],
                gap_se=c.gap_se,
                reading=c.reading,
            )
            for c in found
        ]  # fmt: skip
    )
    return TableModel(
        stem="selection",
        head=head,
        n_labels=6,
        rows=rows,
        notes=notes,
        float_notes=[],
        caption=f"How firmly each search of experiment {tex_escape(experiment)} chose: the kept candidate's and the "
        "runner-up's validation accuracy, their gap, and one binomial standard error of the kept score.",
        tex_label=f"tab:selection-{slug(experiment)}",
        tex_align="r" * (len(head) - 7) + "l",  # 6 label columns, the reading last
        md_right=False,
        frame=frame,
    )
