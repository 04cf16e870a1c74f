"""Does a sweep with K workers give what one worker gives, for a given checkout and search setting?

Why: a long study may change its worker count half-way (the 64 px study went from one worker
to two once the machine was its own, docs/studies.md). That is only honest if, for the study's
code and search settings, K workers choose the same hyperparameters and produce the same rows.
This runs a small grid with the same [search] settings twice from CODE (one worker, then K) and
compares runs.csv (run id, accuracies, hyperparameters), the decompressed predictions and every
Optuna trial (number, parameters, value).

    OMP_NUM_THREADS=1 python scripts/workers_identity.py --code /work/study64-code \
        --data /work/sweeps/data --out /tmp/workers_identity --workers 2

Prints a verdict line per comparison and writes them to OUT/workers_identity.md; exit code 1
when anything differs.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

# study64's search settings (pooled over 3 seeds, the defaults and a gentle-backbone candidate,
# TPE's random start-up covering both trials, no pruner) on the tiny backbone; a frozen row too,
# whose second trial is the sampler's.
GRID = """\
name = "widentity"
description = "K workers against one, with study64's search settings"
backbones = ["tiny"]
methods = ["finetune", "lp_ft", "sft-mlp-frozen"]
recipes = ["tuned"]
fractions = [0.01]
seeds = 4
trials = 2
resolution = 32
device = "cpu"
precision = "auto"

[search]
mode = "pooled"
pool = 3
candidates = [{ backbone_lr_mult = 0.1 }]
startup_trials = 2
pruner = "none"

[hparams]
batch_size = 64
"""

KEY = ["method", "recipe", "fraction", "seed"]
COMPARED = ["run_id", "test_accuracy", "macro_f1", "hparams"]


def sweep(code: Path, config: Path, data: Path, results: Path, workers: int, steps: int) -> float:
    cmd = [
        sys.executable,
        "cli.py",
        "sweep",
        "--config",
        str(config),
        "--results-dir",
        str(results),
        "--data-dir",
        str(data),
        "--threads",
        "1",
        "--parallel",
        str(workers),
        "--quiet",
        "--no-report",
        "--steps",
        str(steps),
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=code, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def trials(folder: Path) -> list[tuple]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
    out = []
    for name in sorted(optuna.get_all_study_names(storage)):
        for t in optuna.load_study(study_name=name, storage=storage).trials:
            out.append((name, t.number, tuple(sorted(t.params.items())), t.value, t.state.name))
    return out


def predictions(folder: Path) -> dict[str, bytes]:
    # gzip headers carry a write time: compare what they hold.
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted((folder / "predictions").glob("*.csv.gz"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, required=True, help="checkout whose cli.py runs the sweeps")
    ap.add_argument("--data", type=Path, required=True, help="folder holding cifar-10-batches-py")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    config = a.out / "widentity.toml"
    config.write_text(GRID)
    secs = {k: sweep(a.code, config, a.data, a.out / f"workers{k}", k, a.steps) for k in (1, a.workers)}
    one, many = (a.out / f"workers{k}" / "widentity" for k in (1, a.workers))
    r1 = pd.read_csv(one / "runs.csv").sort_values(KEY).reset_index(drop=True)
    rk = pd.read_csv(many / "runs.csv").sort_values(KEY).reset_index(drop=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=a.code, capture_output=True, text=True).stdout.strip()
    checks = {
        f"runs.csv rows ({len(r1)} and {len(rk)})": len(r1) == len(rk)
        and bool((r1[KEY + COMPARED] == rk[KEY + COMPARED]).all().all()),
        f"predictions ({len(predictions(one))} files)": predictions(one) == predictions(many),
        f"Optuna trials ({len(trials(one))})": trials(one) == trials(many),
    }
    lines = [
        f"# 1 worker against {a.workers}: code at {commit} ({a.code}), --steps {a.steps}",
        "",
        f"`{' '.join(sys.argv)}`",
        "",
        f"wall: 1 worker {secs[1]:.0f} s, {a.workers} workers {secs[a.workers]:.0f} s (one run each, not a speed comparison)",
        "",
    ]
    lines += [f"- {what}: {'identical' if ok else 'DIFFERENT'}" for what, ok in checks.items()]
    lines += [
        "",
        "chosen hyperparameters (1 worker):",
        "",
        "```",
        r1[KEY + ["test_accuracy", "hp_lr", "hp_backbone_lr_mult", "hp_weight_decay"]].to_string(index=False),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    (a.out / "workers_identity.md").write_text(text)
    print(text)
    raise SystemExit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
