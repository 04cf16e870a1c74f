"""The cost of a finished sweep folder: wall time, trial states, final runs (`perf --sweep`)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.records import CacheCounts
from bench.registry import UserError


@dataclass(frozen=True)
class SweepCost:
    """What a finished sweep folder cost: `perf --sweep`'s table, the projection's pruned
    fraction and scripts/grid_cost.py's per-sweep figures all read these fields.

    `wall_seconds` runs from the first trial's start to the last final run's finish (or the
    last trial's end when there is no runs.csv): the time a user waits, not a sum over runs.
    `pruned_fraction` counts every finished search trial of every study in the journal (None:
    none finished). `protocol` is the methods.md version the folder was produced under (1:
    epoch budgets, as results/quick; 2: step budgets; None: no readable config.toml), so a
    reader knows what its figures, the pruned fraction above all, were measured under.
    Images through the backbone and cache counts are recorded since the grid-cost issue; the
    `*_uncounted` fields say how many trials or runs came from code that did not record them.
    """

    folder: str
    protocol: int | None
    studies: int  # searches: one per cell, or per cell and seed
    trials: int  # search trials
    states: dict[str, int]  # search trials per Optuna state name
    final_trials: int  # the sweep's journal records of final runs
    pruned_fraction: float | None
    trial_seconds: float  # summed over search trials
    final_trial_seconds: float
    final_runs: int  # rows of runs.csv
    final_run_seconds: float
    trial_backbone_images: int
    trials_uncounted: int
    final_backbone_images: int
    finals_uncounted: int
    trial_cache: CacheCounts
    final_cache: CacheCounts
    wall_seconds: float | None
    first_start: str | None
    last_end: str | None


def sweep_cost(folder: Path) -> SweepCost:
    """Wall time, trial states, images and cache counts of a finished sweep folder (runs.csv,
    optuna.journal); folders from older code read with what they recorded."""
    folder = Path(folder)
    studies = trials = final_trials = trial_images = trials_uncounted = 0
    states: dict[str, int] = {}
    starts: list[datetime] = []
    ends: list[datetime] = []
    trial_seconds: list[float] = []
    final_seconds: list[float] = []
    trial_cache, final_cache = CacheCounts(), CacheCounts()
    journal = folder / "optuna.journal"
    if journal.is_file():
        from bench.sweep.storage import open_storage

        storage = open_storage(journal, read_only=True)
        for st in storage.get_all_studies():
            # The sweep records its final runs in studies named "<experiment>:final/...": not search trials.
            final = ":final/" in st.study_name
            studies += 0 if final else 1
            for t in storage.get_all_trials(storage.get_study_id_from_name(st.study_name), deepcopy=False):
                if final:
                    final_trials += 1
                    final_cache += CacheCounts.from_attr(t.user_attrs.get("cache"))
                else:
                    trial_cache += CacheCounts.from_attr(t.user_attrs.get("cache"))
                    trials += 1
                    states[t.state.name] = states.get(t.state.name, 0) + 1
                    if "backbone_images" in t.user_attrs:
                        trial_images += int(t.user_attrs["backbone_images"])
                    elif t.state.name in ("COMPLETE", "PRUNED"):
                        trials_uncounted += 1
                if t.datetime_start:
                    starts.append(t.datetime_start.astimezone(UTC))
                if t.datetime_complete:
                    ends.append(t.datetime_complete.astimezone(UTC))
                    if t.datetime_start:
                        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
                        (final_seconds if final else trial_seconds).append(seconds)
    finished = sum(states.get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
    rows = _final_runs(folder / "runs.csv") if (folder / "runs.csv").is_file() else []
    counted = [r for r in rows if r.images is not None]
    for r in rows:
        if r.end is not None:
            ends.append(r.end)
            starts.append(r.end - timedelta(seconds=r.wall_seconds))
    return SweepCost(
        folder=str(folder),
        protocol=sweep_protocol(folder),
        studies=studies,
        trials=trials,
        states=states,
        final_trials=final_trials,
        pruned_fraction=states.get("PRUNED", 0) / finished if finished else None,
        trial_seconds=sum(trial_seconds),
        final_trial_seconds=sum(final_seconds),
        final_runs=len(rows),
        final_run_seconds=sum(r.wall_seconds for r in rows),
        trial_backbone_images=trial_images,
        trials_uncounted=trials_uncounted,
        final_backbone_images=sum(r.images or 0 for r in counted),
        finals_uncounted=len(rows) - len(counted),
        trial_cache=trial_cache,
        final_cache=final_cache,
        wall_seconds=(max(ends) - min(starts)).total_seconds() if starts and ends else None,
        first_start=min(starts).isoformat(timespec="seconds") if starts else None,
        last_end=max(ends).isoformat(timespec="seconds") if ends else None,
    )


@dataclass(frozen=True)
class _FinalRun:
    """What the cost reads of one runs.csv row: when it finished, its wall seconds, its images (None: not recorded)."""

    end: datetime | None
    wall_seconds: float
    images: int | None


def _final_runs(path: Path) -> list[_FinalRun]:
    """runs.csv's rows, read by column name on purpose (folders from older code lack the newer columns); a
    file that is not a runs table (binary, garbage rows) is one line naming the row, not a traceback."""
    hint = "is it a runs table written by the sweep?"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; {hint}") from None
    out = []
    for number, r in enumerate(rows, start=2):  # line 1 is the header
        try:
            end = None
            if r.get("finished_at"):
                end = datetime.fromisoformat(str(r["finished_at"]).replace("Z", "+00:00"))
                end = end if end.tzinfo else end.replace(tzinfo=UTC)
            wall = float(r.get("wall_seconds") or 0)
            images = int(r["backbone_images"]) if r.get("backbone_images") else None
            if not math.isfinite(wall) or wall < 0 or (images is not None and images < 0):
                raise ValueError("a negative or non-finite count")
        except (ValueError, TypeError, OverflowError) as exc:
            raise UserError(f"{path}: line {number} is not a runs.csv row ({exc}); {hint}") from None
        out.append(_FinalRun(end, wall, images))
    return out


def sweep_protocol(folder: Path) -> int | None:
    """1 when the folder's config.toml has protocol v1's epoch keys, 2 when it has none, None without one."""
    import tomllib

    try:
        with open(Path(folder) / "config.toml", "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    from bench.sweep.experiment import V1_KEYS, V1_SEARCH_KEYS

    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    return 1 if set(raw) & set(V1_KEYS) or set(search) & set(V1_SEARCH_KEYS) else 2


PROTOCOLS = {1: "v1 (epoch budgets)", 2: "v2 (step budgets)", None: "unknown (no config.toml)"}


def sweep_markdown(cost: SweepCost) -> str:
    """The sweep's cost as a Markdown table (perf.md's tail, or `perf --sweep` alone)."""
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(cost.states.items())) or "no journal"
    wall, pruned = cost.wall_seconds, cost.pruned_fraction
    lines = [
        f"## Sweep-level cost: `{cost.folder}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| wall time (first trial start to last final run end) | {'n/a' if wall is None else f'{wall / 60:.1f} min'} |",
        f"| protocol (../shared/docs/methods.md) | {PROTOCOLS[cost.protocol]} |",
        f"| studies (searches: one per cell, or per cell and seed) | {cost.studies} |",
        f"| trials | {cost.trials} ({states}) |",
        f"| fraction of finished trials pruned | {'n/a' if pruned is None else f'{pruned:.1%}'} |",
        f"| search trial time, summed | {cost.trial_seconds / 60:.1f} min |",
        f"| final runs recorded in the journal | {cost.final_trials}, {cost.final_trial_seconds / 60:.1f} min summed |",
        f"| final runs (runs.csv) | {cost.final_runs}, {cost.final_run_seconds / 60:.1f} min summed |",
        f"| images through the backbone: searches | {_images(cost.trial_backbone_images, cost.trials_uncounted)} |",
        f"| images through the backbone: final runs | {_images(cost.final_backbone_images, cost.finals_uncounted)} |",
        f"| feature passes served by a cache (memory or the store): searches | {hit_rate(cost.trial_cache)} |",
        f"| feature passes served by a cache: final runs | {hit_rate(cost.final_cache)} |",
        f"| linear probes reused (searches; final runs) | {probe_rate(cost.trial_cache)}; {probe_rate(cost.final_cache)} |",
        f"| from | {cost.first_start} to {cost.last_end} |",
    ]
    return "\n".join(lines)


def hit_rate(c: CacheCounts) -> str:
    """Feature passes served from a cache out of all, and the same in images."""
    if not c.feature_passes:
        return "none recorded"
    share = f"{c.feature_hits} of {c.feature_passes} ({c.feature_hits / c.feature_passes:.0%})"
    return f"{share}; {c.feature_hit_images:,} of {c.feature_images:,} images ({c.feature_hit_images / c.feature_images:.0%})"


def probe_rate(c: CacheCounts) -> str:
    """Probes reused out of all asked for."""
    return f"{c.probe_hits} of {c.probes} ({c.probe_hits / c.probes:.0%})" if c.probes else "none recorded"


def _images(n: int, uncounted: int) -> str:
    """A count of images, saying how many runs carried none (folders written before it was recorded)."""
    return f"{n:,}" + (f" ({uncounted} run(s) without a count)" if uncounted else "")
