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
    validate.py     the checks a TOML file passes before anything runs (validate_hparams.py: [hparams], [space])
    storage.py      opening the storage (the one `open_storage`), URLs without passwords
    journal.py      the journal file that survives crashes; who owns a lock or a claim
    signals.py      Ctrl-C and SIGTERM held back around storage writes; SIGTERM stops like Ctrl-C
    studies.py      the studies of an experiment: names, attributes, the settings check
    claims.py       claims, heartbeats, recovery, slots: the only user of Optuna's private API
    search.py       what a trial asks: spaces, the defaults-first trial, seeded samplers
    status.py       the grid's state, read-only, and the ETA
    worker.py       the `Sweep` loop: schedule, claim, train, record
    export.py       runs.csv, records/ and the summary rows, rebuilt from the storage
    projection.py   how long a grid will take on this device (`sweep --dry-run`)

    prepare.py      an experiment file with its overrides, and every check before anything runs
    runner.py       `run`: the whole sweep as one call (the CLI and notebooks)
    events.py       what `run` tells its caller (events, the Relay of its progress) and returns
    parallel.py     `--parallel K`: K worker processes on one storage, watched from here

The public API is the handful of names below (`bench.sweep.run(...)`, see docs/python-api.md); everything
else is imported from its module (`from bench.sweep.worker import Sweep`). Plain imports, none of them
torch's: `import bench.sweep` (and so `bench.sweep.storage`, which the report reads) costs about 0.1 s
without torch, against 2.3 s with it measured on this 2-core CPU, and tests/test_report.py checks that a
report never imports torch; runner.py imports the training stack inside `run`.
"""

from __future__ import annotations

from bench.sweep.events import MachineFault, SweepEvent, SweepResult
from bench.sweep.experiment import Experiment
from bench.sweep.prepare import check, load
from bench.sweep.runner import run

__all__ = ["Experiment", "MachineFault", "SweepEvent", "SweepResult", "check", "load", "run"]
