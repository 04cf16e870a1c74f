"""Finding and reading what a sweep leaves behind: the experiment folders, their runs table (checked, one row
per cell and seed) and the Optuna studies of their searches.

Why read-only and strict: a report must be rebuildable at any time from runs.csv and the Optuna storage, so
this module never writes to either; a runs table it cannot trust stops the report with one line naming the
problem (UserError) before anything is computed or written.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.names import METHOD_ALIASES, RECIPE_ALIASES
from bench.registry import UserError, check_path, did_you_mean
from bench.report.schema import JOURNAL, KEY, METRIC, REQUIRED, RUNS_CSV, STR_COLUMNS

# ---------------------------------------------------------------- experiment folders


def experiments_in(results_dir: Path) -> list[str]:
    """The experiments under a results folder: its subfolders holding a runs.csv, sorted."""
    if not results_dir.is_dir():
        return []
    return sorted(p.name for p in results_dir.iterdir() if (p / RUNS_CSV).is_file())


def find_experiment_dir(results_dir: Path, experiment: str | None = None) -> Path:
    """`--results-dir R --experiment E` -> R/E; without E: R itself if it holds runs.csv, or its only experiment."""
    results_dir = Path(results_dir)
    check_path(results_dir, "--results-dir")
    if experiment:
        check_experiment_name(experiment)
        cand = results_dir / experiment
        if (cand / RUNS_CSV).is_file():
            return cand
        names = experiments_in(results_dir)
        listed = f"; experiments there: {', '.join(names)}" if names else "; run `python cli.py sweep` first"
        raise UserError(f"no runs table at {cand / RUNS_CSV}{did_you_mean(experiment, names)}{listed}")
    if (results_dir / RUNS_CSV).is_file():
        return results_dir
    names = experiments_in(results_dir)
    if len(names) == 1:
        return results_dir / names[0]
    if not names:
        raise UserError(no_experiment_message(results_dir))
    raise UserError(f"{results_dir} holds several experiments ({', '.join(names)}); choose one with --experiment")


def no_experiment_message(results_dir: Path) -> str:
    """Why a results folder holds no experiment, and what to do instead, in one line. Why not "pass --results-dir":
    the user may have passed it; the line says what the folder holds and the folder or command that would work."""
    if not results_dir.is_dir():
        return f"{results_dir} does not exist; run `python cli.py sweep` first (it writes {results_dir}/<experiment>/{RUNS_CSV})"
    subdirs = sorted(p for p in results_dir.iterdir() if p.is_dir())
    nested = [(d, experiments_in(d)) for d in subdirs if experiments_in(d)]
    if nested:
        d, names = nested[0]
        return (
            f"no experiment directly under {results_dir}: {d} holds {', '.join(names)}; run "
            f"`python cli.py report --results-dir {d} --experiment {names[0]}`"
        )
    started = [d.name for d in subdirs if (d / "config.toml").is_file()]
    if started:
        return (
            f"no final run has finished yet in {results_dir}/{started[0]} (it has a config.toml but no {RUNS_CSV}); wait "
            "for the sweep's first final run, or resume it with the same `python cli.py sweep` command"
        )
    return (
        f"no experiment with a {RUNS_CSV} under {results_dir}; run `python cli.py sweep` first (it writes "
        f"{results_dir}/<experiment>/{RUNS_CSV})"
    )


def check_experiment_name(experiment: str) -> None:
    """--experiment names a folder under --results-dir, nothing else: '../outside' would read, and write
    the report, outside it (issue 19, audit item 7)."""
    if experiment in (".", "..") or any(c in experiment for c in "/\\"):
        raise UserError(
            f"--experiment takes an experiment's name under --results-dir, got '{experiment}'; give its folder as --results-dir"
        )
    check_path(experiment, "--experiment")


def resolve_experiment(arg: str | Path, results_dir: Path, experiment: str | None = None) -> Path:
    """For `compare`: an experiment folder, an experiment name under --results-dir, or a results
    folder (with --experiment, or holding exactly one experiment)."""
    check_path(arg, "an experiment")
    check_path(results_dir, "--results-dir")
    p = Path(arg)
    if (p / RUNS_CSV).is_file():
        return p
    if (Path(results_dir) / str(arg) / RUNS_CSV).is_file():
        return Path(results_dir) / str(arg)
    if p.is_dir():
        return find_experiment_dir(p, experiment)
    names = experiments_in(Path(results_dir))
    raise UserError(
        f"'{arg}' is neither an experiment folder (with {RUNS_CSV}) nor an experiment under {results_dir}"
        f"{did_you_mean(str(arg), names)}" + (f"; experiments there: {', '.join(names)}" if names else "")
    )


# ---------------------------------------------------------------- the runs table


def thread_notes(df: pd.DataFrame) -> list[str]:
    """One note per cell whose CPU runs used different torch thread counts: CPU results depend on it
    slightly (the order of reductions) and the run id does not include it, so the report says so."""
    if "threads" not in df.columns:
        return []
    cpu = df if "device_type" not in df.columns else df[df["device_type"] == "cpu"]
    cpu = cpu[pd.to_numeric(cpu["threads"], errors="coerce").notna()]
    notes = []
    for key, g in cpu.groupby(["backbone", "method", "recipe", "fraction"], sort=True):
        counts = sorted({int(t) for t in pd.to_numeric(g["threads"])})
        if len(counts) > 1:
            b, m, r, f = key
            notes.append(
                f"{b}/{m}/{r}/{f:g}: its CPU runs used different torch thread counts ({', '.join(map(str, counts))}); "
                "CPU results depend slightly on it and the run id does not include it (runs.csv column threads)."
            )
    return notes


def load_runs(experiment_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and check runs.csv; return the table (one row per cell and seed) and notes about it."""
    path = Path(experiment_dir) / RUNS_CSV
    if not path.is_file():
        raise UserError(f"no runs table at {path}; run `python cli.py sweep` first")
    try:
        df = pd.read_csv(path, dtype=dict.fromkeys(STR_COLUMNS, str))
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; no finished runs to report yet") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; is it a runs table written by the sweep?")
    if df.empty:
        raise UserError(f"{path} has no rows; no finished runs to report yet")
    for col in ("backbone", "method", "recipe"):
        if df[col].isna().any():
            raise UserError(f"{path}: {int(df[col].isna().sum())} row(s) have no {col}")
        df[col] = df[col].astype(str)
    # Tables written before the article's recipe got its name say "seed" / "seed_sft".
    df["recipe"] = df["recipe"].replace(RECIPE_ALIASES)
    df["method"] = df["method"].replace(METHOD_ALIASES)
    for col in ("fraction", "seed", METRIC):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = int(num.isna().sum())
        if bad:
            raise UserError(f"{path}: {bad} row(s) have a missing or non-numeric {col}")
        df[col] = num
    if ((df["fraction"] <= 0) | (df["fraction"] > 1)).any():
        raise UserError(f"{path}: fractions must lie in (0, 1]")
    if ((df[METRIC] < 0) | (df[METRIC] > 1)).any():
        raise UserError(f"{path}: {METRIC} must be a fraction in [0, 1]")
    df["seed"] = df["seed"].astype(int)
    df["fraction"] = df["fraction"].astype(float)
    notes = []
    order = df["finished_at"].astype(str) if "finished_at" in df.columns else pd.Series(range(len(df)), index=df.index)
    df = df.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
    dup = df.duplicated([*KEY, "seed"], keep="last")
    if dup.any():
        notes.append(
            f"{int(dup.sum())} row(s) of runs.csv repeat a (backbone, recipe, method, fraction, seed) already present; "
            "the latest by finished_at is used."
        )
        df = df[~dup]
    return df.reset_index(drop=True), notes


def experiment_name(df: pd.DataFrame, experiment_dir: Path) -> str:
    """The experiment's name as the runs recorded it (the Optuna study names start with it), else the folder's."""
    if "experiment" in df.columns:
        names = df["experiment"].dropna().astype(str).unique()
        if len(names) == 1:
            return str(names[0])
    return Path(experiment_dir).resolve().name


# ---------------------------------------------------------------- Optuna studies


@dataclass
class StudyInfo:
    """One search study of a cell (or, per-seed search, of a cell and seed), with its trials read once."""

    name: str
    backbone: str
    method: str
    recipe: str
    fraction: float
    trials: list  # FrozenTrial
    study: Any  # optuna.Study (for importances)
    seed: int | None = None  # per-seed search (protocol v2): the seed whose subset this study searched
    search_mode: str = ""


SEED_PART = re.compile(r"^seed(-?\d+)$")


def read_config(experiment_dir: Path) -> dict[str, Any]:
    """The folder's config.toml (written by the sweep) as data; {} where it is absent or unreadable, so that each
    reader falls back to its default (a report never fails on it; grid.py says when it cannot check the grid)."""
    path = Path(experiment_dir) / "config.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return {}


def storage_location(experiment_dir: Path, storage: str | None) -> str:
    """`storage` argument, else the `storage` of the experiment's config.toml, else R/E/optuna.journal."""
    if storage:
        return storage
    return str(read_config(experiment_dir).get("storage", "") or "") or str(Path(experiment_dir) / JOURNAL)


def load_studies(experiment_dir: Path, experiment: str, storage: str | None, notes: list[str]) -> list[StudyInfo]:
    """The search studies of this experiment, read-only: "{experiment}/{backbone}/{method}/{recipe}/{fraction}"
    (one per cell: shared search, and protocol v1) and ".../seed{s}" (one per cell and seed: per-seed search).
    The study's user_attrs win over its name where both are present."""
    import optuna

    loc = storage_location(experiment_dir, storage)
    if storage and "://" not in storage and not Path(storage).is_file():
        # asked for by name: a typo must not cost the previous report its search plots (they would be removed)
        raise UserError(
            f"--storage {storage}: no journal file there; give the experiment's journal or database URL, or leave --storage out"
        )
    try:
        if "://" not in loc and not Path(loc).is_file():
            notes.append(f"No Optuna storage at {loc}: hyperparameter importances and optimisation histories are omitted.")
            return []
        from bench.sweep.storage import open_storage

        store: Any = open_storage(loc, read_only=True)
        summaries = store.get_all_studies()
    except Exception as exc:  # a damaged or unreachable storage must not cost the whole report
        from bench.sweep.storage import masked

        why = str(exc).replace(loc, masked(loc))  # a URL's password is never written into the report
        notes.append(f"Could not read the Optuna storage {masked(loc)} ({type(exc).__name__}: {why}); its plots are omitted.")
        return []
    out = []
    prefix = f"{experiment}/"
    for s in summaries:
        a = s.user_attrs
        if not s.study_name.startswith(prefix) or a.get("kind") == "final":
            continue
        parts = s.study_name[len(prefix) :].split("/")
        try:
            b, m, r, f = (
                (a["backbone"], a["method"], a["recipe"], float(a["fraction"]))
                if "backbone" in a
                else (*parts[:3], float(parts[3]))
            )
            tail = SEED_PART.match(parts[4]) if len(parts) > 4 else None
            mode = str(a.get("search_mode") or ("per_seed" if tail else ""))
            # A shared search records the seed whose subset it searched too; only a per-seed study is one seed's.
            seed = (int(a["seed"]) if a.get("seed") is not None else int(tail[1])) if mode == "per_seed" else None
        except (KeyError, IndexError, ValueError, TypeError):
            notes.append(f"Study '{s.study_name}' names no cell; skipped.")
            continue
        study = optuna.load_study(study_name=s.study_name, storage=store)
        out.append(StudyInfo(s.study_name, str(b), str(m), str(r), f, study.get_trials(deepcopy=False), study, seed, mode))
    return out


def search_seconds(studies: list[StudyInfo]) -> float:
    """Wall seconds the search trials took (started and completed ones): the compute the searches cost."""
    total = 0.0
    for s in studies:
        for t in s.trials:
            if t.datetime_start and t.datetime_complete:
                total += (t.datetime_complete - t.datetime_start).total_seconds()
    return total
