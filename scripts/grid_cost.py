"""The cost of a whole grid, two ways, measured in alternation: A B, B A, ... whole sweeps, each
into a fresh results folder, then per side the wall time (median and range), the images through
the backbone (searches and final runs, from `perf --sweep`'s counting) and whether both sides
produced the same results (test accuracy per run id).

Why alternation: wall times of two sweeps run an hour apart on a shared machine are weather (the
standards: never a ratio of two figures taken minutes apart). Images through the backbone do not
depend on load; wall time does, so it gets rounds and a range.

    # the feature store off (memory caches only, per process) against on, 2 rounds each, 2 workers
    python scripts/grid_cost.py --config experiments/quick.toml --out /tmp/gc --rounds 2 \\
        --a-env SFT_BENCH_FEATURE_STORE=off --a-name no-store --b-name store -- --parallel 2
    # another checkout (e.g. `git worktree add /tmp/before 9e41928`) against this one; each sweep
    # runs in its own checkout, so an absolute --data-dir gives both sides this one's data
    python scripts/grid_cost.py --config experiments/quick.toml --out /tmp/gc --a-code /tmp/before \
        -- --data-dir "$PWD/data"
    # the default search against multi-fidelity on the same grid (other hyperparameters: the
    # accuracy each cell's choice gave, side by side)
    python scripts/grid_cost.py --a-config experiments/quick.toml --b-config experiments/quick-halving.toml \\
        --out /tmp/gc-mf --rounds 1 --a-name median --b-name halving

Arguments after `--` go to every `cli.py sweep`. Writes OUT/grid_cost.md and OUT/grid_cost.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.records import CacheCounts  # noqa: E402  (this checkout's, after the path above)


@dataclass
class Side:
    """One way of running the grid: which checkout's cli.py, with which environment."""

    name: str
    code: Path
    config: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Sweep:
    """One whole sweep of one side: its wall time, what it cost in images, what it found."""

    side: str
    round: int
    wall_seconds: float
    exit_code: int
    trial_images: int
    final_images: int
    uncounted: int  # trials or runs without a count (a checkout from before it was recorded)
    accuracies: dict[str, str]  # run id -> test accuracy, as runs.csv writes it
    cells: dict[str, float]  # "method fraction" -> mean test accuracy over the seeds
    cache: CacheCounts  # what the caches served, searches and final runs together


def parse_env(text: str) -> dict[str, str]:
    pairs = [p for p in text.split(",") if p.strip()]
    if any("=" not in p for p in pairs):
        raise SystemExit(f"error: --a-env/--b-env take KEY=VALUE[,KEY=VALUE], got {text!r}")
    return dict(p.split("=", 1) for p in pairs)


def run_sweep(side: Side, out: Path, extra: list[str]) -> tuple[float, int, Path]:
    """One sweep into a fresh folder: (wall seconds, exit code, the experiment's folder)."""
    results = out / "results"
    cmd = [sys.executable, str(side.code / "cli.py"), "sweep", "--config", str(side.config), "--results-dir", str(results)]
    cmd += ["--quiet", "--no-report", *extra]
    env = {**os.environ, **side.env}
    t0 = time.perf_counter()
    with open(out / "sweep.log", "w") as log:
        code = subprocess.run(cmd, cwd=side.code, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    folders = [p for p in results.iterdir() if p.is_dir()] if results.is_dir() else []
    if len(folders) != 1:
        raise SystemExit(f"error: {out}: expected one experiment folder under {results}, found {len(folders)}")
    return seconds, code, folders[0]


def measure(side: Side, i: int, out: Path, extra: list[str]) -> Sweep:
    from bench.perf.sweep_cost import sweep_cost  # this checkout's counting, whichever side ran

    folder = out / f"{side.name}-{i}"
    folder.mkdir(parents=True)
    seconds, code, exp = run_sweep(side, folder, extra)
    cost = sweep_cost(exp)
    accs, per_cell = {}, {}
    if (exp / "runs.csv").is_file():
        with open(exp / "runs.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        accs = {r["run_id"]: r["test_accuracy"] for r in rows}
        for r in rows:
            per_cell.setdefault(f"{r['method']} {float(r['fraction']):g}", []).append(float(r["test_accuracy"]))
    return Sweep(
        side.name,
        i,
        seconds,
        code,
        cost.trial_backbone_images,
        cost.final_backbone_images,
        cost.trials_uncounted + cost.finals_uncounted,
        accs,
        {k: statistics.mean(v) for k, v in sorted(per_cell.items())},
        cost.trial_cache + cost.final_cache,
    )


def hit_share(c: CacheCounts) -> str:
    """Feature passes (and images) a cache served, and probes reused, out of all asked for: a
    table cell's worth of perf --sweep's hit_rate and probe_rate."""
    if not c.feature_passes:
        return "not recorded"
    out = f"{c.feature_hits}/{c.feature_passes} passes, {c.feature_hit_images / c.feature_images:.0%} of images"
    return out + (f"; probes {c.probe_hits}/{c.probes}" if c.probes else "")


def summary(sides: list[Side], sweeps: list[Sweep]) -> str:
    """grid_cost.md: per side wall time (median, range), images, cache hits, and whether the results agree."""
    lines = [
        "| side | sweeps | wall time, median (range) | images through the backbone: searches + finals | served by a cache "
        "| exit codes |",
        "|---|---|---|---|---|---|",
    ]
    for s in sides:
        mine = [w for w in sweeps if w.side == s.name]
        walls = [w.wall_seconds / 60 for w in mine]
        images = {(w.trial_images, w.final_images, w.uncounted) for w in mine}
        img = "; ".join(f"{t:,} + {f:,}" + (f" ({u} uncounted)" if u else "") for t, f, u in sorted(images))
        wall = f"{statistics.median(walls):.1f} min ({min(walls):.1f}–{max(walls):.1f})"
        hits = "; ".join(sorted({hit_share(w.cache) for w in mine}))
        lines.append(f"| {s.name} | {len(mine)} | {wall} | {img} | {hits} | {sorted({w.exit_code for w in mine})} |")
    first = [w for w in sweeps if w.side == sides[0].name]
    second = [w for w in sweeps if w.side == sides[1].name]
    ratios = [a.wall_seconds / b.wall_seconds for a, b in zip(first, second, strict=False)]
    same = all(w.accuracies == first[0].accuracies for w in sweeps) and bool(first[0].accuracies)
    within = all(w.accuracies == first[0].accuracies for w in first) and all(w.accuracies == second[0].accuracies for w in second)
    lines += [
        "",
        f"Wall time {sides[0].name} / {sides[1].name}, per round: {', '.join(f'{r:.2f}' for r in ratios)} "
        f"(median {statistics.median(ratios):.2f})."
        if ratios
        else "",
        f"Results identical on every sweep (test accuracy per run id): {'yes' if same else 'NO'}"
        + ("." if same else f"; within each side: {'yes' if within else 'NO'}."),
    ]
    if not same and first[0].cells and second[0].cells:
        # different configs (a pruner against another) choose other hyperparameters: what it cost in accuracy
        a, b = first[0].cells, second[0].cells
        lines += [
            "",
            f"| cell | {sides[0].name}: mean test acc. % | {sides[1].name} | {sides[1].name} − {sides[0].name} |",
            "|---|---:|---:|---:|",
        ]
        for cell in sorted(set(a) | set(b)):
            va, vb = a.get(cell), b.get(cell)
            diff = f"{100 * (vb - va):+.2f}" if va is not None and vb is not None else "–"
            lines.append(
                f"| {cell} | {'–' if va is None else f'{100 * va:.2f}'} | {'–' if vb is None else f'{100 * vb:.2f}'} | {diff} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, help="the experiment both sides run")
    ap.add_argument("--a-config", type=Path, help="side A's experiment instead (e.g. another pruner)")
    ap.add_argument("--b-config", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="a new folder")
    ap.add_argument("--rounds", type=int, default=2, help="sweeps per side, in alternation (A B, B A, ...)")
    ap.add_argument("--a-name", default="a")
    ap.add_argument("--b-name", default="b")
    ap.add_argument("--a-code", type=Path, default=REPO, help="checkout whose cli.py runs side A")
    ap.add_argument("--b-code", type=Path, default=REPO)
    ap.add_argument("--a-env", default="", help="KEY=VALUE[,...] for side A")
    ap.add_argument("--b-env", default="")
    ap.add_argument("extra", nargs="*", help="after --: arguments for every `cli.py sweep`")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; give a new folder")
    if args.rounds < 1 or args.a_name == args.b_name:
        raise SystemExit("error: --rounds must be >= 1 and the two sides need different names")
    a_config, b_config = args.a_config or args.config, args.b_config or args.config
    if a_config is None or b_config is None:
        raise SystemExit("error: give --config, or --a-config and --b-config")
    sides = [
        Side(args.a_name, args.a_code.resolve(), a_config.resolve(), parse_env(args.a_env)),
        Side(args.b_name, args.b_code.resolve(), b_config.resolve(), parse_env(args.b_env)),
    ]
    sweeps: list[Sweep] = []
    for i in range(args.rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:
            w = measure(side, i, args.out, args.extra)
            print(f"{side.name} round {i}: {w.wall_seconds / 60:.1f} min, exit {w.exit_code}", flush=True)
            sweeps.append(w)
    text = summary(sides, sweeps)
    (args.out / "grid_cost.md").write_text(text)
    (args.out / "grid_cost.json").write_text(json.dumps([asdict(w) for w in sweeps], indent=2))
    print(text)


if __name__ == "__main__":
    main()
