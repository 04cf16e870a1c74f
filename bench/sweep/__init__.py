"""The sweep: search every cell with Optuna, then retrain the best per seed and test once.

    python cli.py sweep --config experiments/quick.toml
    python cli.py sweep --experiment paper --storage postgresql://user@db/sft   # on every machine

State lives in the Optuna storage, never in one process's memory, so any number of
`sweep` processes (one machine or several) can share one grid, and a process killed at
any moment loses only the trial or run it was in the middle of:

- Per cell (backbone, method, recipe, fraction) a *search study* (the contract's name
  "{experiment}/{backbone}/{method}/{recipe}/{fraction:g}"): a process takes a slot by
  creating a RUNNING trial; COMPLETE, PRUNED and live RUNNING trials count toward the
  budget (trial ids break ties), so killed trials are redone and the budget is never
  exceeded. Each slot's TPE sampler is seeded from (cell, slot number), so a resumed
  search asks exactly what the uninterrupted one would have.
- Per cell a *finals study* ("{experiment}:final/..."): one trial per final run, named
  by the run id (user_attr run_id). A process claims a run by creating a RUNNING trial
  carrying its run id in one atomic write; the lowest live claim wins, the others step
  back. The finished record (JSON) lives on the trial, so `runs.csv`, `records/` and the
  summary can always be rebuilt from the storage.
- Liveness: every claim carries its owner (host, boot id, pid, process start time) and a
  heartbeat user_attr refreshed by a background thread. A RUNNING trial whose owner is a
  dead process on this machine is free at once (Ctrl-C, SIGKILL, crash); one from another
  machine after `stale_after_seconds` without a heartbeat. Optuna 5's JournalStorage has
  no heartbeat of its own (only RDBStorage does), hence this one, the same on both.

The modules, one idea each (read them in this order):

    experiment.py   an experiment: the dataclasses, reading and writing its TOML file
    validate.py     the checks a TOML file passes before anything runs
    storage.py      opening the storage (the one `open_storage`), URLs without passwords
    journal.py      the journal file that survives crashes; who owns a lock or a claim
    signals.py      Ctrl-C and SIGTERM held back around storage writes
    studies.py      the studies of an experiment: names, attributes, the settings check
    claims.py       claims, heartbeats, recovery, slots: the only user of Optuna's internals
    search.py       what a trial asks: spaces, the defaults-first trial, seeded samplers
    status.py       the grid's state, read-only, and the ETA
    worker.py       the `Sweep` loop: schedule, claim, train, record
    export.py       runs.csv, records/ and the summary rows, rebuilt from the storage
    projection.py   how long a grid will take on this device (`sweep --dry-run`)

This package imports its modules when a name is first used (below), so `bench.sweep.storage`
or `bench.sweep.experiment` can be imported without torch (the report reads storages too).
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each name `from bench.sweep import NAME` (or `bench.sweep.NAME`) finds lives.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "bench.records": (
        "Cell",
        "CellStatus",
        "CellSummary",
        "Claim",
        "GridStatus",
        "RunRecord",
        "RunsRow",
        "SearchStatus",
        "runs_columns",
    ),
    "bench.sweep.experiment": ("Experiment",),
    "bench.sweep.storage": (
        "JOURNAL",
        "check_storage",
        "driver_missing",
        "is_url",
        "masked",
        "open_rdb",
        "open_storage",
        "storage_exists",
        "storage_location",
        "with_password",
    ),
    "bench.sweep.journal": ("BOOT_ID", "HOST", "clean_leftovers", "open_journal", "open_nofollow", "owner_alive", "owner_id"),
    "bench.sweep.signals": ("signal_safe", "signals_deferred"),
    "bench.sweep.studies": ("check_settings", "ensure_study", "find_study"),
    "bench.sweep.claims": (
        "FINISHED",
        "Heartbeat",
        "HeartbeatLost",
        "LostClaim",
        "claim",
        "failure_reason",
        "finish",
        "heartbeat_time",
        "is_live",
        "new_claim",
        "recover",
        "take_slot",
        "won",
    ),
    "bench.sweep.search": ("SpaceTrial", "default_params", "sample_hparams", "slot_seed"),
    "bench.sweep.status": ("Grid", "eta"),
    "bench.sweep.worker": ("NullProgress", "Progress", "Sweep", "WorkItem"),
    "bench.sweep.export": ("RUNS_CSV", "collect_rows", "export_runs", "hparams_brief", "summary_rows"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first use (PEP 562) and keep the name here."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bench.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
