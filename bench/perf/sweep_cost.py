"""The cost of a finished sweep folder: wall time, trial states, final runs (`perf --sweep`)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.records import CacheCounts


def sweep_cost(folder: Path) -> dict:
    """Wall time, trial states and final runs of a finished sweep folder (runs.csv, optuna.journal).

    The wall time is from the first trial's start to the last final run's finish (or the
    last trial's end when there is no runs.csv): the time a user waits, not a sum over
    runs. The fraction pruned counts every finished trial of every study in the journal.
    `protocol`: the methods.md version the folder was produced under (1: epoch budgets, as
    results/quick; 2: step budgets; None: no readable config.toml), so a reader knows what
    its figures (the pruned fraction above all) were measured under.
    """
    folder = Path(folder)
    out: dict[str, Any] = {"folder": str(folder), "trials": 0, "states": {}, "studies": 0, "final_trials": 0}
    out["protocol"] = sweep_protocol(folder)
    starts, ends, trial_seconds, final_seconds = [], [], [], []
    # images through the backbone (the sweep records them since the grid-cost issue): searches' here
    out["trial_backbone_images"], out["trials_uncounted"] = 0, 0
    # what the feature and probe caches served (recorded per trial and final run since the same issue)
    trial_cache, final_cache = CacheCounts(), CacheCounts()
    journal = folder / "optuna.journal"
    if journal.is_file():
        from bench.sweep.storage import open_storage

        storage = open_storage(journal, read_only=True)
        studies = storage.get_all_studies()
        for st in studies:
            # The sweep records its final runs in studies named "<experiment>:final/...": not search trials.
            final = ":final/" in st.study_name
            out["studies"] += 0 if final else 1
            for t in storage.get_all_trials(storage.get_study_id_from_name(st.study_name), deepcopy=False):
                if final:
                    out["final_trials"] += 1
                    final_cache += CacheCounts.from_attr(t.user_attrs.get("cache"))
                else:
                    trial_cache += CacheCounts.from_attr(t.user_attrs.get("cache"))
                    out["trials"] += 1
                    out["states"][t.state.name] = out["states"].get(t.state.name, 0) + 1
                    if "backbone_images" in t.user_attrs:
                        out["trial_backbone_images"] += int(t.user_attrs["backbone_images"])
                    elif t.state.name in ("COMPLETE", "PRUNED"):
                        out["trials_uncounted"] += 1
                if t.datetime_start:
                    starts.append(t.datetime_start.astimezone(UTC))
                if t.datetime_complete:
                    ends.append(t.datetime_complete.astimezone(UTC))
                    if t.datetime_start:
                        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
                        (final_seconds if final else trial_seconds).append(seconds)
    finished = sum(out["states"].get(k, 0) for k in ("COMPLETE", "PRUNED", "FAIL"))
    out["pruned_fraction"] = out["states"].get("PRUNED", 0) / finished if finished else None
    out["trial_seconds"] = sum(trial_seconds)
    out["final_trial_seconds"] = sum(final_seconds)
    runs = folder / "runs.csv"
    out["final_runs"] = 0
    out["final_run_seconds"] = 0.0
    out["final_backbone_images"], out["finals_uncounted"] = 0, 0
    if runs.is_file():
        with open(runs, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        out["final_runs"] = len(rows)
        out["final_run_seconds"] = sum(float(r.get("wall_seconds") or 0) for r in rows)
        counted = [r for r in rows if r.get("backbone_images")]
        out["final_backbone_images"] = sum(int(r["backbone_images"]) for r in counted)
        out["finals_uncounted"] = len(rows) - len(counted)
        for r in rows:
            if r.get("finished_at"):
                end = datetime.fromisoformat(r["finished_at"].replace("Z", "+00:00"))
                ends.append(end if end.tzinfo else end.replace(tzinfo=UTC))
                starts.append(ends[-1] - timedelta(seconds=float(r.get("wall_seconds") or 0)))
    out["trial_cache"], out["final_cache"] = trial_cache, final_cache
    out["wall_seconds"] = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    out["first_start"] = min(starts).isoformat(timespec="seconds") if starts else None
    out["last_end"] = max(ends).isoformat(timespec="seconds") if ends else None
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


def sweep_markdown(cost: dict) -> str:
    """The sweep's cost as a Markdown table (perf.md's tail, or `perf --sweep` alone)."""
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(cost["states"].items())) or "no journal"
    wall = cost["wall_seconds"]
    pruned = cost["pruned_fraction"]
    lines = [
        f"## Sweep-level cost: `{cost['folder']}`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| wall time (first trial start to last final run end) | {'n/a' if wall is None else f'{wall / 60:.1f} min'} |",
        f"| protocol (../shared/docs/methods.md) | {PROTOCOLS[cost.get('protocol')]} |",
        f"| studies (searches: one per cell, or per cell and seed) | {cost['studies']} |",
        f"| trials | {cost['trials']} ({states}) |",
        f"| fraction of finished trials pruned | {'n/a' if pruned is None else f'{pruned:.1%}'} |",
        f"| search trial time, summed | {cost['trial_seconds'] / 60:.1f} min |",
        f"| final runs recorded in the journal | {cost['final_trials']}, {cost['final_trial_seconds'] / 60:.1f} min summed |",
        f"| final runs (runs.csv) | {cost['final_runs']}, {cost['final_run_seconds'] / 60:.1f} min summed |",
        f"| images through the backbone: searches | {_images(cost['trial_backbone_images'], cost['trials_uncounted'])} |",
        f"| images through the backbone: final runs | {_images(cost['final_backbone_images'], cost['finals_uncounted'])} |",
        f"| feature passes served by a cache (memory or the store): searches | {hit_rate(cost['trial_cache'])} |",
        f"| feature passes served by a cache: final runs | {hit_rate(cost['final_cache'])} |",
        f"| linear probes reused (searches; final runs) | {probe_rate(cost['trial_cache'])}; {probe_rate(cost['final_cache'])} |",
        f"| from | {cost['first_start']} to {cost['last_end']} |",
    ]
    return "\n".join(lines)


def hit_rate(c: CacheCounts) -> str:
    """Feature passes served from a cache out of all, and the same in images."""
    passes, images = c.feature_hits + c.feature_misses, c.feature_hit_images + c.feature_miss_images
    if not passes:
        return "none recorded"
    share = f"{c.feature_hits} of {passes} ({c.feature_hits / passes:.0%})"
    return f"{share}; {c.feature_hit_images:,} of {images:,} images ({c.feature_hit_images / images:.0%})"


def probe_rate(c: CacheCounts) -> str:
    """Probes reused out of all asked for."""
    n = c.probe_hits + c.probe_misses
    return f"{c.probe_hits} of {n} ({c.probe_hits / n:.0%})" if n else "none recorded"


def _images(n: int, uncounted: int) -> str:
    """A count of images, saying how many runs carried none (folders written before it was recorded)."""
    return f"{n:,}" + (f" ({uncounted} run(s) without a count)" if uncounted else "")
