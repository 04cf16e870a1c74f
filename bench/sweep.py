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
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from bench.budget import PROTOCOL
from bench.data import Cifar10
from bench.engine import Diverged
from bench.experiment import Cell, Experiment, check_writable
from bench.methods import METHODS, HParams
from bench.registry import UserError
from bench.run import RunConfig, atomic_write, execute, make_config
from bench.storage import BOOT_ID as BOOT_ID  # re-exported: the claims' owners (tests, tools)
from bench.storage import (
    HOST,
    clean_leftovers,
    masked,
    open_journal,
    open_nofollow,
    open_rdb,
    owner_alive,
    owner_id,
    with_password,
)

JOURNAL = "optuna.journal"
RUNS_CSV = "runs.csv"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HP_FIELDS = [f.name for f in fields(HParams)]

optuna.logging.set_verbosity(optuna.logging.WARNING)


class LostClaim(RuntimeError):
    """Another process declared our trial stale and took it over; drop our result."""


# ---------------------------------------------------------------- storage


def storage_location(exp: Experiment) -> str:
    """What `--storage` means: "" = the journal file in the results folder, a URL = RDB, else a journal path."""
    if not exp.storage:
        return str(exp.out_dir / JOURNAL)
    return exp.storage


def is_url(location: str) -> bool:
    return "://" in location


def open_storage(exp: Experiment, notes: list[str] | None = None) -> optuna.storages.BaseStorage:
    """The experiment's storage. A journal file is checked first (bench/storage.py): a torn tail left
    by a crash or a full disk is cut (kept aside; one line in `notes`), a damaged middle line refused;
    a database is opened so that any number of workers may create its schema at once."""
    location = storage_location(exp)
    if not is_url(location):
        storage: optuna.storages.BaseStorage = open_journal(location, notes)
    else:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if location.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        storage = open_rdb(with_password(location), kwargs)
    return signal_safe(storage)


def signal_safe(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """Every storage call finishes before a Ctrl-C or SIGTERM is delivered.

    Why: a KeyboardInterrupt inside the journal file's lock or its replay leaves the lock
    file behind or the in-memory replay half-applied (measured: a traceback from optuna's
    lock release instead of a clean exit 130). Storage calls take milliseconds, so holding
    the signal that long costs nothing.
    """
    for name in dir(type(storage)):
        if name.startswith("_"):
            continue
        method = getattr(storage, name, None)
        if callable(method):
            setattr(storage, name, _deferring(method))
    return storage


def _deferring(method: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return method(*args, **kwargs)

    call.__name__ = getattr(method, "__name__", "call")
    call.__doc__ = method.__doc__
    return call


def check_storage(exp: Experiment) -> str | None:
    """Validate the storage without writing to it; return a warning line or None."""
    location = storage_location(exp)
    if not is_url(location):
        path = Path(location)
        if path.exists() and not path.is_file():
            raise UserError(f"storage {path} exists and is not a file")
        check_writable(path.parent)
        return None
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(location)
    except Exception:
        raise UserError(f"--storage '{masked(location)}' is not an SQLAlchemy URL (e.g. postgresql://user@host/db)") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            folder = Path(url.database).expanduser().resolve().parent
            if not folder.is_dir():
                raise UserError(f"storage {shown}: folder {folder} does not exist; create it or give another path")
            check_writable(folder)
        return (
            'SQLite storage is unsafe with several writers ("database is locked"); for processes on one machine '
            "use the default journal file, for several machines PostgreSQL"
        )
    url = sqlalchemy.engine.make_url(with_password(location))
    try:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        raise UserError(driver_missing(url.drivername, exc.name or "")) from None
    except Exception as exc:
        raise UserError(f"--storage '{shown}': {str(exc).splitlines()[0]}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot connect to storage {shown}: {why}") from None
    finally:
        engine.dispose()
    return None


def driver_missing(drivername: str, module: str) -> str:
    """The one line for a missing database driver, naming the package that provides it."""
    if module.startswith("psycopg2"):
        return (
            f"the driver for {drivername} URLs is not installed (module {module}): pip install psycopg2-binary, "
            "or write the URL as postgresql://... (psycopg 3: pip install 'sft-bench[postgres]')"
        )
    if module.startswith("psycopg"):
        return (
            f"the driver for {drivername} URLs is not installed (module {module}): pip install 'sft-bench[postgres]' "
            "(or pip install 'psycopg[binary]')"
        )
    return f"the driver for {drivername} URLs is not installed (module {module}); install it with pip"


def storage_exists(exp: Experiment) -> bool:
    location = storage_location(exp)
    if not is_url(location):
        return Path(location).is_file()
    import sqlalchemy

    if location.startswith("sqlite"):
        db = sqlalchemy.engine.make_url(location).database
        if not db or not Path(db).is_file():
            return False
    engine = sqlalchemy.create_engine(with_password(location))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def check_settings(exp: Experiment, storage: optuna.storages.BaseStorage) -> None:
    """Refuse to mix an existing experiment's studies with a search under other settings, and
    refuse to extend a study written under protocol v1 (epoch budgets, per-method BN)."""
    cells = {(c.backbone, c.method, c.recipe, float(c.fraction)): c for c in exp.cells()}
    studies = storage.get_all_studies()
    if any("protocol" not in s.user_attrs for s in studies):
        # A worker starting at the same moment writes a new study, then its attributes: look again
        # a moment later before calling it a protocol v1 study.
        time.sleep(1.0)
        studies = storage.get_all_studies()
    for s in studies:
        name = s.study_name
        if not (name.startswith(f"{exp.name}/") or name.startswith(f"{exp.name}:final/")):
            continue
        if "protocol" not in s.user_attrs and not storage.get_all_trials(s._study_id, deepcopy=False):
            # created, then killed before its attributes were written (they are one journal line each):
            # no result in it under any protocol; Sweep.study_id completes it
            continue
        if s.user_attrs.get("protocol") != PROTOCOL:
            raise UserError(
                f"experiment '{exp.name}' in this storage was written under protocol v{s.user_attrs.get('protocol', 1)} "
                f"(study {name}); new sweeps (protocol v{PROTOCOL}) do not extend it: use another experiment name (--name) "
                "or results folder; report and compare still read the old one"
            )
        if "settings" not in s.user_attrs:
            continue
        attrs = s.user_attrs
        cell = cells.get((attrs.get("backbone"), attrs.get("method"), attrs.get("recipe"), float(attrs.get("fraction", -1))))
        if cell is None:
            continue
        old, new = attrs["settings"], json.loads(json.dumps(exp.search_settings(cell)))
        # Keys known to both sides only: a study written by an older version of the suite stays usable.
        differ = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
        if differ:
            key = differ[0]
            raise UserError(
                f"experiment '{exp.name}' already has a search for {cell.label} with other settings "
                f"({key}: {json.dumps(old.get(key))} there, {json.dumps(new.get(key))} now); "
                "use another experiment name (--name) or results folder, or restore the settings"
            )


# ---------------------------------------------------------------- liveness


def heartbeat_time(t: FrozenTrial) -> float:
    hb = t.user_attrs.get("heartbeat")
    if isinstance(hb, dict) and "time" in hb:
        return float(hb["time"])
    return t.datetime_start.timestamp() if t.datetime_start else 0.0


def is_live(t: FrozenTrial, stale_after: float, now: float | None = None) -> bool:
    if t.state != TrialState.RUNNING:
        return False
    alive = owner_alive(t.user_attrs.get("owner", ""))
    if alive is not None:
        return alive
    return (now or time.time()) - heartbeat_time(t) < stale_after


class Heartbeat:
    """A daemon thread that refreshes the heartbeat of the one trial this process works on."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.lock = threading.Lock()
        self.trial_id: int | None = None
        self.lost = False
        self.progress = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def attach(self, trial_id: int) -> None:
        with self.lock:
            self.trial_id, self.lost, self.progress = trial_id, False, ""

    def detach(self) -> None:
        with self.lock:
            self.trial_id = None

    def beat(self) -> None:
        with self.lock:
            if self.trial_id is None:
                return
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", {"time": time.time(), "progress": self.progress})
            except UpdateFinishedTrialError:
                self.lost = True
            except Exception:  # a flaky database connection: the next beat retries
                pass

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.beat()


@contextlib.contextmanager
def signals_deferred() -> Any:
    """Hold Ctrl-C and SIGTERM while a few storage writes must land together (a claim and the
    knowledge of its id; a result, its attributes and its COMPLETE); deliver them right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            handler = old[got[0]]
            if callable(handler):
                handler(got[0], None)  # default_int_handler raises KeyboardInterrupt; the CLI's SIGTERM handler too
            elif handler != signal.SIG_IGN:
                os.kill(os.getpid(), got[0])


def new_claim(storage: optuna.storages.BaseStorage, study_id: int, attrs: dict) -> int:
    """A RUNNING trial with owner, heartbeat and `attrs`, created in one write (atomic claim)."""
    now = time.time()
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=dt.datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={"owner": owner_id(), "worker": f"{HOST}:{os.getpid()}", "heartbeat": {"time": now, "progress": ""}, **attrs},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    return storage.create_new_trial(study_id, template_trial=template)


def finish(
    storage: optuna.storages.BaseStorage, trial_id: int, state: TrialState, reason: str = "", value: float | None = None
) -> None:
    """Best effort: a trial someone else already finished stays as it is."""
    with contextlib.suppress(UpdateFinishedTrialError, KeyError):
        if reason:
            storage.set_trial_user_attr(trial_id, "fail_reason" if state == TrialState.FAIL else "reason", reason)
        storage.set_trial_state_values(trial_id, state, None if value is None else [value])


def recover(storage: optuna.storages.BaseStorage, trials: list[FrozenTrial], stale_after: float) -> bool:
    """Free the RUNNING trials of dead processes; adopt those that had finished their work."""
    changed = False
    now = time.time()
    for t in trials:
        if t.state != TrialState.RUNNING or is_live(t, stale_after, now):
            continue
        if "result_value" in t.user_attrs:  # killed between saving the result and marking it done
            reason = f"adopted: worker {t.user_attrs.get('worker', '?')} stopped after saving the result"
            finish(storage, t._trial_id, TrialState.COMPLETE, reason, value=float(t.user_attrs["result_value"]))
        else:
            who = t.user_attrs.get("worker", "?")
            finish(
                storage,
                t._trial_id,
                TrialState.FAIL,
                f"stale: worker {who} stopped (no heartbeat since {time.ctime(heartbeat_time(t))})",
            )
        changed = True
    return changed


# ---------------------------------------------------------------- search spaces


class SpaceTrial:
    """What a method's `search_space(trial)` sees: the Optuna trial, with the experiment's
    fixed hyperparameters answered without asking and its [space] distributions swapped in."""

    def __init__(self, trial: Any, fixed: dict, space: dict) -> None:
        self.trial, self.fixed, self.space = trial, fixed, space
        self.asked: set[str] = set()

    def _route(self, name: str, ask: Callable[[], Any]) -> Any:
        self.asked.add(name)
        if name in self.fixed:
            return self.fixed[name]
        if name in self.space:
            return self.suggest(name, self.space[name])
        return ask()

    def suggest(self, name: str, dist: dict) -> Any:
        self.asked.add(name)
        if "choices" in dist:
            return self.trial.suggest_categorical(name, list(dist["choices"]))
        lo, hi, log = dist["low"], dist["high"], bool(dist.get("log", False))
        if isinstance(lo, int) and isinstance(hi, int):
            return self.trial.suggest_int(name, lo, hi, step=int(dist.get("step", 1)), log=log)
        return self.trial.suggest_float(name, float(lo), float(hi), step=dist.get("step"), log=log)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> Any:
        return self._route(name, lambda: self.trial.suggest_float(name, low, high, step=step, log=log))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Any:
        return self._route(name, lambda: self.trial.suggest_int(name, low, high, step=step, log=log))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._route(name, lambda: self.trial.suggest_categorical(name, choices))


def sample_hparams(trial: Any, exp: Experiment, method: str) -> dict[str, Any]:
    """The hyperparameter changes of one trial: the shared space plus the method's own (declared
    with the method in bench/methods.py), the experiment's [space] and [hparams]. The BatchNorm
    policy is fixed ("frozen") unless [search] bn = true; the step budget is never searched."""
    spec = METHODS.get(method)
    fixed = exp.fixed_hparams(method)
    if spec.trains_backbone and not exp.search.bn:
        fixed.setdefault("bn", "frozen")
    space = exp.space_for(method)
    proxy = SpaceTrial(trial, fixed, space)
    changes = dict(spec.search_space(proxy))
    for name, dist in space.items():
        if name not in proxy.asked and name not in fixed:
            changes[name] = proxy.suggest(name, dist)
    changes.update(fixed)
    return changes


class _DefaultsTrial:
    """A stand-in trial answering every suggestion with the method's default value, and keeping
    the defaults that lie inside their distribution (the first trial's fixed parameters)."""

    def __init__(self, defaults: HParams) -> None:
        self.defaults = defaults
        self.params: dict[str, Any] = {}

    def _take(self, name: str, inside: Callable[[Any], bool], fallback: Any) -> Any:
        value = getattr(self.defaults, name, None)
        if value is not None and inside(value):
            self.params[name] = value
            return value
        return fallback

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> Any:
        return self._take(name, lambda v: low <= v <= high, low)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Any:
        return self._take(name, lambda v: low <= v <= high and (v - low) % step == 0, low)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._take(name, lambda v: v in list(choices), list(choices)[0])


def default_params(exp: Experiment, method: str) -> dict[str, Any]:
    """The searched hyperparameters' values in the method's defaults (where the space contains them).

    Why: with the few trials a CPU grid affords, a search of random draws can miss every good
    region (measured: quick's 4-trial search at 10% chose finetune hyperparameters 20 points
    below the defaults). So every search, for every method alike, spends its first trial on
    the defaults, and TPE learns from it like from any other trial (Optuna's enqueue mechanism)."""
    defaults = HParams().update(**METHODS.get(method).defaults).update(**exp.fixed_hparams(method))
    probe = _DefaultsTrial(defaults)
    sample_hparams(probe, exp, method)
    return probe.params


def take_slot(trials: list[FrozenTrial], tid: int, budget: int, stale_after: float, now: float) -> int | None:
    """The slot of claim `tid` among a search's trials, or None when the budget is spent.

    The trials that count are the finished ones and the live claims. Each keeps the slot it
    recorded; the claims that have not recorded one yet take the lowest free slots in claim (trial
    id) order. Not the claim's rank: a counted claim freed later (a worker that died, a zombie
    not yet reaped, another host's claim gone stale) would shift every later rank, so one slot
    would be drawn twice and another never, and a parallel search would choose otherwise than a
    one-worker run.
    """
    counted = sorted(
        (t for t in trials if t.state in FINISHED or (t.state == TrialState.RUNNING and is_live(t, stale_after, now))),
        key=lambda t: t._trial_id,
    )
    if tid not in {t._trial_id for t in counted}:
        return None
    taken = {t.user_attrs["slot"] for t in counted if "slot" in t.user_attrs and t._trial_id != tid}
    free = iter([s for s in range(budget) if s not in taken])
    for t in counted:
        if "slot" in t.user_attrs and t._trial_id != tid:
            continue
        slot = next(free, None)
        if t._trial_id == tid:
            return slot
    return None


def slot_seed(study_name: str, data_seed: int, slot: int) -> int:
    return int(hashlib.sha256(f"{study_name}|{data_seed}|{slot}".encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------- progress


class Progress(Protocol):
    """What the sweep tells its display (bench/cli_sweep.py has a rich one and a plain one)."""

    def status(self, status: GridStatus) -> None: ...
    def item_start(self, item: WorkItem) -> None: ...
    def epoch(self, row: dict) -> None: ...
    def item_end(self, item: WorkItem, outcome: str) -> None: ...
    def log(self, message: str) -> None: ...


class NullProgress:
    def status(self, status: GridStatus) -> None:
        pass

    def item_start(self, item: WorkItem) -> None:
        pass

    def epoch(self, row: dict) -> None:
        pass

    def item_end(self, item: WorkItem, outcome: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


# ---------------------------------------------------------------- grid status


@dataclass
class WorkItem:
    kind: str  # "trial" or "final"
    cell: Cell
    study_id: int
    slot: int = 0  # trial: the slot number; final: the seed
    cfg: RunConfig | None = None
    seed: int = 0  # trial: the seed whose subset it searches on
    probe: HParams | None = None  # trial: the linear probe it starts from (probe_init methods)
    per_seed: bool = False

    @property
    def label(self) -> str:
        if self.kind == "trial":
            return f"trial {self.slot + 1}{f' · seed {self.seed}' if self.per_seed else ''} · {self.cell.label}"
        return f"final seed {self.slot} · {self.cell.label}"


@dataclass
class SearchStatus:
    """One search study: the cell's (shared) or one seed's (per_seed)."""

    seed: int
    study_id: int | None
    budget: int
    done: int = 0
    pruned: int = 0
    diverged: int = 0
    best_value: float | None = None
    best_hparams: dict | None = None
    trial_seconds: list[float] = field(default_factory=list)
    can_ask: bool = False
    failed: str = ""

    @property
    def complete(self) -> bool:
        return self.done >= self.budget or bool(self.failed)


@dataclass
class CellStatus:
    cell: Cell
    trials_budget: int
    searches: dict[int, SearchStatus] = field(default_factory=dict)  # search seed -> its study
    finals_total: int = 0
    finals: dict[int, dict] = field(default_factory=dict)  # seed -> record
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> why no final run (diverged or unsearchable)
    failed: str = ""  # why this cell cannot produce any final run
    run_ids: dict[int, str] = field(default_factory=dict)
    free_finals: list[tuple[int, RunConfig]] = field(default_factory=list)

    @property
    def trials_done(self) -> int:
        return sum(s.done for s in self.searches.values())

    @property
    def trials_pruned(self) -> int:
        return sum(s.pruned for s in self.searches.values())

    @property
    def trials_diverged(self) -> int:
        return sum(s.diverged for s in self.searches.values())

    @property
    def trial_seconds(self) -> list[float]:
        return [t for s in self.searches.values() for t in s.trial_seconds]

    @property
    def search_done(self) -> bool:
        return all(s.complete for s in self.searches.values())

    @property
    def can_ask(self) -> bool:
        return any(s.can_ask for s in self.searches.values())

    @property
    def best_value(self) -> float | None:
        """The best validation accuracy (mean over the seeds' searches when per seed)."""
        vals = [s.best_value for s in self.searches.values() if s.best_value is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def best_hparams(self) -> dict | None:
        """The first searching seed's choice (the summary shows one; records have every seed's)."""
        for s in self.searches.values():
            if s.best_hparams is not None:
                return s.best_hparams
        return None

    @property
    def finals_done(self) -> int:
        return len(self.finals) + len(self.diverged)

    @property
    def done(self) -> bool:
        return bool(self.failed) or (self.search_done and self.finals_done >= self.finals_total)

    @property
    def accuracies(self) -> list[float]:
        return [r["test_accuracy"] for r in self.finals.values()]


@dataclass
class GridStatus:
    cells: list[CellStatus]
    running: list[dict]  # live claims: worker, item, progress
    eta_seconds: float | None = None

    @property
    def complete(self) -> bool:
        return all(c.done for c in self.cells)

    @property
    def trials(self) -> tuple[int, int]:
        return sum(min(c.trials_done, c.trials_budget) for c in self.cells), sum(c.trials_budget for c in self.cells)

    @property
    def runs(self) -> tuple[int, int]:
        return sum(c.finals_done for c in self.cells), sum(c.finals_total for c in self.cells)

    @property
    def cells_done(self) -> tuple[int, int]:
        return sum(c.done for c in self.cells), len(self.cells)


# ---------------------------------------------------------------- the sweep


class Sweep:
    """One worker process on an experiment's storage; `run()` works until the grid is done."""

    def __init__(
        self,
        exp: Experiment,
        data: Cifar10,
        device: torch.device,
        *,
        storage: optuna.storages.BaseStorage | None = None,
        progress: Progress | None = None,
        poll_seconds: float = 2.0,
        read_only: bool = False,
    ) -> None:
        self.exp, self.data, self.device = exp, data, device
        self.progress = progress or NullProgress()
        notes: list[str] = []
        self.storage = storage or open_storage(exp, notes)
        for note in notes:
            self.progress.log(note)
        self.poll_seconds = poll_seconds
        self.read_only = read_only
        self.out = exp.out_dir
        self.cells = exp.cells()
        self._study_ids: dict[str, int] = {}
        self._resolution: dict[str, int | None] = {}
        self.heartbeat = Heartbeat(self.storage, exp.workers.heartbeat_seconds)
        self.executed: list[WorkItem] = []  # what this process trained (tests, summary)
        self._started: dict[str, int] = {}  # items started by kind (SFT_BENCH_TEST_FAULT)

    # ------------------------------------------------ studies

    def study_id(self, name: str, attrs: dict) -> int | None:
        if name in self._study_ids:
            return self._study_ids[name]
        try:
            sid = self.storage.get_study_id_from_name(name)
            have = self.storage.get_study_user_attrs(sid)
        except KeyError:
            if self.read_only:
                return None
            study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize", load_if_exists=True)
            sid, have = study._study_id, {}
        if not self.read_only:
            # The attributes are written one at a time, "protocol" first: a process killed in between
            # leaves a study that the next start completes (check_settings lets such a study through).
            for k in sorted(attrs, key=lambda k: k != "protocol"):
                if k not in have:
                    self.storage.set_study_user_attr(sid, k, attrs[k])
        self._study_ids[name] = sid
        return sid

    def search_name(self, cell: Cell, seed: int) -> str:
        return cell.study_name(self.exp.name, seed if self.exp.search.mode == "per_seed" else None)

    def search_study(self, cell: Cell, seed: int) -> int | None:
        attrs = {
            "experiment": self.exp.name,
            "backbone": cell.backbone,
            "method": cell.method,
            "recipe": cell.recipe,
            "fraction": cell.fraction,
            "kind": "search",
            "seed": seed,
            "search_mode": self.exp.search.mode,
            "protocol": PROTOCOL,
            "settings": json.loads(json.dumps(self.exp.search_settings(cell))),
        }
        return self.study_id(self.search_name(cell, seed), attrs)

    def finals_study(self, cell: Cell) -> int | None:
        attrs = {
            "experiment": self.exp.name,
            "backbone": cell.backbone,
            "method": cell.method,
            "recipe": cell.recipe,
            "fraction": cell.fraction,
            "kind": "final",
            "protocol": PROTOCOL,
        }
        return self.study_id(cell.finals_name(self.exp.name), attrs)

    def trials(self, study_id: int | None) -> list[FrozenTrial]:
        if study_id is None:
            return []
        trials = self.storage.get_all_trials(study_id, deepcopy=False)
        if not self.read_only and recover(self.storage, trials, self.exp.workers.stale_after_seconds):
            trials = self.storage.get_all_trials(study_id, deepcopy=False)
        return trials

    def resolution(self, cell: Cell) -> int | None:
        if cell.recipe == "seed":
            return None  # the article's recipe exactly: 32 px (make_config's default for it)
        if cell.backbone not in self._resolution:
            from bench.backbones import get_backbone

            self._resolution[cell.backbone] = self.exp.resolution_for(cell.backbone) or get_backbone(cell.backbone).input_size
        return self._resolution[cell.backbone]

    def config(self, cell: Cell, seed: int, overrides: dict | None, stage: str, probe: HParams | None = None) -> RunConfig:
        changes = dict(overrides or {}) if cell.recipe == "tuned" else {}
        if self.exp.steps is not None:  # a fixed budget (smoke tests), for every cell alike
            changes["steps"] = self.exp.steps
        return make_config(
            cell.backbone,
            cell.method,
            cell.fraction,
            seed,
            recipe=cell.recipe,
            resolution=self.resolution(cell),
            pretrained=self.exp.pretrained,
            overrides=changes,
            stage=stage,
            precision=self.exp.precision,
            device=self.device,
            data=self.data,
            val_fraction=self.exp.val_fraction,
            probe=probe,
            cv_folds=self.exp.cv_folds if stage == "trial" else 1,
        )

    def probe_cell(self, cell: Cell) -> Cell | None:
        """The linear_probe row whose model a probe-initialised method starts from."""
        if not METHODS.get(cell.method).probe_init:
            return None
        return Cell(cell.backbone, "linear_probe", cell.recipe, cell.fraction)

    # ------------------------------------------------ survey

    def survey(self) -> GridStatus:
        """Read the whole grid's state from the storage (and free dead processes' claims).

        linear_probe cells are read first: a probe-initialised cell's trials and final runs
        for seed s start from the linear probe that linear_probe's search chose for s, so
        they wait until that search is complete."""
        now = time.time()
        running: list[dict] = []
        by_cell: dict[Cell, CellStatus] = {}
        order = sorted(self.cells, key=lambda c: self.probe_cell(c) is not None)
        for cell in order:
            tuned = cell.recipe == "tuned"
            seeds = self.exp.search_seeds if tuned else ()
            cs = CellStatus(cell, self.exp.trials * len(seeds), finals_total=len(self.exp.seeds))
            probe_of = self.probe_cell(cell)
            lp = by_cell.get(probe_of) if probe_of is not None else None
            for seed in seeds:
                ss = SearchStatus(seed, self.search_study(cell, seed), self.exp.trials)
                ready = lp is None or self.probe_hparams(lp, seed, "trial") is not None
                self._survey_search(ss, cell, now, running, ready)
                lp_search = None if lp is None else lp.searches.get(self.exp.searched_by(seed))
                if not ready and lp_search is not None and lp_search.failed:
                    ss.failed = f"its linear probe could not be chosen (linear_probe: {lp_search.failed})"
                cs.searches[seed] = ss
            if cs.search_done:
                failed = [ss for ss in cs.searches.values() if ss.failed]
                if failed and len(failed) == len(cs.searches):
                    cs.failed = failed[0].failed
                else:
                    self._survey_finals(cs, lp, now, running)
            by_cell[cell] = cs
        status = GridStatus([by_cell[c] for c in self.cells], running)
        status.eta_seconds = self._eta(status)
        return status

    def _survey_search(self, ss: SearchStatus, cell: Cell, now: float, running: list[dict], ready: bool) -> None:
        stale_after = self.exp.workers.stale_after_seconds
        trials = self.trials(ss.study_id)
        finished = sorted((t for t in trials if t.state in FINISHED), key=lambda t: t._trial_id)
        live = [t for t in trials if is_live(t, stale_after, now)]
        counted = finished[: ss.budget]
        ss.done = len(finished)
        ss.pruned = sum(t.state == TrialState.PRUNED for t in counted)
        ss.diverged = sum("pruned_reason" in t.user_attrs for t in counted)
        ss.trial_seconds = [
            (t.datetime_complete - t.datetime_start).total_seconds() for t in finished if t.datetime_complete and t.datetime_start
        ]
        ss.can_ask = ready and not ss.complete and len(finished) + len(live) < ss.budget
        running += [self._running(t, "trial", cell) for t in live]
        complete = [t for t in counted if t.state == TrialState.COMPLETE]
        if complete:
            # ties go to the lowest slot, not the lowest trial id: slots are the same whatever order
            # workers (or a killed and re-asked trial) created the trials in
            best = max(complete, key=lambda t: (t.value, -int(t.user_attrs.get("slot", t._trial_id))))
            ss.best_value, ss.best_hparams = best.value, best.user_attrs.get("hparams")
        elif ss.complete:
            ss.failed = f"all {ss.budget} trials were pruned or diverged; no hyperparameters to retrain with"

    def probe_hparams(self, lp: CellStatus, seed: int, stage: str) -> HParams | None:
        """The linear probe that seed `seed`'s trial or final run starts from: the linear_probe row's
        hyperparameters as its search chose them for that seed (None until that search is complete)."""
        if lp.cell.recipe != "tuned":
            return self.config(lp.cell, seed, None, stage).hp
        ss = lp.searches.get(self.exp.searched_by(seed))
        if ss is None or not ss.complete or ss.best_hparams is None:
            return None
        return self.config(lp.cell, seed, ss.best_hparams, stage).hp

    def _survey_finals(self, cs: CellStatus, lp: CellStatus | None, now: float, running: list[dict]) -> None:
        stale_after = self.exp.workers.stale_after_seconds
        trials = self.trials(self.finals_study(cs.cell))
        by_run: dict[str, list[FrozenTrial]] = {}
        for t in trials:
            by_run.setdefault(t.user_attrs.get("run_id", ""), []).append(t)
        for seed in self.exp.seeds:
            hparams = None
            if cs.cell.recipe == "tuned":
                ss = cs.searches[self.exp.searched_by(seed)]
                if ss.failed:
                    cs.diverged[seed] = f"no final run: seed {ss.seed}'s search failed ({ss.failed})"
                    continue
                hparams = ss.best_hparams
            probe = None if lp is None else self.probe_hparams(lp, seed, "final")
            if lp is not None and probe is None:
                own = lp.searches.get(self.exp.searched_by(seed))
                reason = lp.failed or (own.failed if own is not None else "")
                if reason:  # else: linear_probe's search for this seed is not complete yet
                    cs.diverged[seed] = f"no final run: its linear probe could not be chosen ({reason})"
                continue
            cfg = self.config(cs.cell, seed, hparams, "final", probe=probe)
            cs.run_ids[seed] = cfg.run_id
            claims = sorted(by_run.get(cfg.run_id, []), key=lambda t: t._trial_id)
            done = [t for t in claims if t.state == TrialState.COMPLETE]
            diverged = [t for t in claims if t.state == TrialState.FAIL and "diverged" in t.user_attrs]
            live = [t for t in claims if is_live(t, stale_after, now)]
            if done:
                cs.finals[seed] = json.loads(done[0].user_attrs["record"])
            elif diverged:
                cs.diverged[seed] = diverged[0].user_attrs["diverged"]
            elif live:
                running.append(self._running(live[0], "final", cs.cell))
            else:
                cs.free_finals.append((seed, cfg))

    def _running(self, t: FrozenTrial, kind: str, cell: Cell) -> dict:
        hb = t.user_attrs.get("heartbeat") or {}
        what = f"trial {t.number + 1}" if kind == "trial" else f"final seed {t.user_attrs.get('seed')}"
        return {"worker": t.user_attrs.get("worker", "?"), "item": f"{what} · {cell.label}", "progress": hb.get("progress", "")}

    def _eta(self, status: GridStatus) -> float | None:
        """Remaining seconds from the measured times of finished trials and runs (any process's).

        An item is estimated from items of the same backbone, method and kind: the mean at its
        own fraction when measured, else a line through the measured fractions (time = fixed
        cost + cost per label fraction), else proportional to the one measured fraction; with
        nothing measured for its method, from every method's items alike."""
        samples: dict[tuple, list[tuple[float, float]]] = {}
        for cs in status.cells:
            c = cs.cell
            points = [("trial", s) for s in cs.trial_seconds] + [("final", r["wall_seconds"]) for r in cs.finals.values()]
            for kind, seconds in points:
                for key in ((c.backbone, c.method, kind), (kind,)):
                    samples.setdefault(key, []).append((c.fraction, seconds))

        def estimate(c: Cell, kind: str) -> float | None:
            pts = samples.get((c.backbone, c.method, kind)) or samples.get((kind,))
            scale = 1.0
            if not pts:  # no final run measured yet: a trial on all labels plus the test set, roughly
                other = "trial" if kind == "final" else "final"
                pts = samples.get((c.backbone, c.method, other)) or samples.get((other,))
                scale = 1.25 if kind == "final" else 0.8
            if not pts:
                return None
            same = [s for f, s in pts if f == c.fraction]
            if same:
                return scale * sum(same) / len(same)
            fs = sorted({f for f, _ in pts})
            mean_f = sum(f for f, _ in pts) / len(pts)
            mean_s = sum(s for _, s in pts) / len(pts)
            if len(fs) >= 2:
                var = sum((f - mean_f) ** 2 for f, _ in pts)
                slope = max(0.0, sum((f - mean_f) * (s - mean_s) for f, s in pts) / var)
                return scale * max(0.0, mean_s + slope * (c.fraction - mean_f))
            return scale * mean_s * c.fraction / fs[0]

        total = 0.0
        for cs in status.cells:
            if cs.done:
                continue
            left = (("trial", max(0, cs.trials_budget - cs.trials_done)), ("final", cs.finals_total - cs.finals_done))
            for kind, n in left:
                if n:
                    t = estimate(cs.cell, kind)
                    if t is None:
                        return None
                    total += n * t
        workers = max(1, len({r["worker"] for r in status.running}))
        return total / workers

    # ------------------------------------------------ the work loop

    def run(self) -> GridStatus:
        """Work until every cell is done (waiting while other processes hold the last items)."""
        if self.read_only:
            raise RuntimeError("a read-only sweep cannot run")
        self.out.mkdir(parents=True, exist_ok=True)
        # Temporary files of processes killed outright (SIGKILL, power cut) on this machine.
        leftovers = clean_leftovers(
            [self.out, self.out / "predictions", self.out / "records"], older_than=self.exp.workers.stale_after_seconds
        )
        if leftovers:
            self.progress.log(f"removed {len(leftovers)} temporary file(s) killed processes left in {self.out}")
        self.heartbeat.start()
        try:
            while True:
                status = self.survey()
                self.progress.status(status)
                item = self._next(status)
                if item is None:
                    if status.complete or not status.running:
                        return status
                    time.sleep(self.poll_seconds)
                    continue
                if item.kind == "trial":
                    self._trial(item)
                else:
                    self._final(item)
        finally:
            self.heartbeat.stop()

    def _next(self, status: GridStatus) -> WorkItem | None:
        """Final runs first (they finish cells), linear_probe cells before the cells waiting on them."""
        lp: dict[Cell, CellStatus] = {cs.cell: cs for cs in status.cells if METHODS.get(cs.cell.method).is_probe}
        for cs in sorted(status.cells, key=lambda cs: not METHODS.get(cs.cell.method).is_probe):
            if cs.free_finals:
                seed, cfg = cs.free_finals[0]
                return WorkItem("final", cs.cell, self.finals_study(cs.cell), seed, cfg)
            for ss in cs.searches.values():
                if ss.can_ask:
                    probe_of = self.probe_cell(cs.cell)
                    probe = None if probe_of is None else self.probe_hparams(lp[probe_of], ss.seed, "trial")
                    per_seed = self.exp.search.mode == "per_seed"
                    return WorkItem("trial", cs.cell, ss.study_id, ss.done, seed=ss.seed, probe=probe, per_seed=per_seed)
        return None

    def _on_progress(self, row: dict) -> None:
        self.heartbeat.progress = f"{row['phase']} {row['step']}/{row['steps']}"
        self.progress.epoch(row)
        if self.heartbeat.lost:
            raise LostClaim("another process declared this trial stale and took it over")

    # ------------------------------------------------ one search trial

    def _trial(self, item: WorkItem) -> None:
        exp, cell, storage = self.exp, item.cell, self.storage
        tid: int | None = None
        try:
            with signals_deferred():
                tid = new_claim(storage, item.study_id, {"kind": "trial"})
                self.heartbeat.attach(tid)
            trials = storage.get_all_trials(item.study_id, deepcopy=False)
            slot = take_slot(trials, tid, exp.trials, exp.workers.stale_after_seconds, time.time())
            if slot is None:
                finish(storage, tid, TrialState.FAIL, "over budget: another process took the last slot")
                return
            item.slot = slot
            name = self.search_name(cell, item.seed)
            sampler = optuna.samplers.TPESampler(
                seed=slot_seed(name, item.seed, item.slot), n_startup_trials=exp.startup_trials()
            )
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
            if item.slot == 0 and exp.search.first_trial == "defaults":
                # the first slot asks the method's defaults: Optuna's enqueue_trial stores the same attribute
                storage.set_trial_system_attr(tid, "fixed_params", default_params(exp, cell.method))
            # With a database, load_study wraps the storage in Optuna's trial cache, which has not seen
            # our claim (written before, straight to the database): read it in, or a suggestion whose
            # sampler reads no trials first (a single choice, ...) fails with KeyError on the trial id.
            study.get_trials(deepcopy=False)
            trial = optuna.Trial(study, tid)
            changes = sample_hparams(trial, exp, cell.method)
            cfg = self.config(cell, item.seed, changes, "trial", probe=item.probe)
            # The pruner's clock is the optimiser step; it never stops a trial before
            # pruner_warmup (>= half) of its budget: slow starters are methods too.
            if exp.search.pruner == "median":
                study.pruner = optuna.pruners.MedianPruner(
                    n_startup_trials=exp.pruner_startup_trials(),
                    n_warmup_steps=math.ceil(exp.search.pruner_warmup * cfg.hp.steps * cfg.cv_folds),
                )
            else:
                study.pruner = optuna.pruners.NopPruner()
            trial.set_user_attr("hparams", json.loads(json.dumps(changes)))
            trial.set_user_attr("run_id", cfg.run_id)
            trial.set_user_attr("slot", item.slot)
            self.progress.item_start(item)
            self.executed.append(item)
            self._test_fault(item.kind)

            def on_progress(row: dict) -> None:
                self._on_progress(row)
                if row["phase"] == "train" and "val_accuracy" in row:
                    trial.report(row["val_accuracy"], row["step"])
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"median at step {row['step']} (val acc {row['val_accuracy']:.4f})")

            try:
                rec = execute(cfg, self.data, self.device, on_progress=on_progress, compile=self.exp.compile)
            except optuna.TrialPruned as exc:
                self.heartbeat.detach()
                with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
                    trial.set_user_attr("pruned_by", str(exc))
                    study.tell(trial, state=TrialState.PRUNED)
                self.progress.item_end(item, f"pruned ({exc})")
                return
            except Diverged as exc:
                self.heartbeat.detach()
                with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
                    trial.set_user_attr("pruned_reason", f"diverged: {exc}")
                    study.tell(trial, state=TrialState.PRUNED)
                self.progress.item_end(item, f"pruned: diverged ({exc})")
                return
            value = rec["val_accuracy"]
            with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
                trial.set_user_attr("wall_seconds", rec["wall_seconds"])
                trial.set_user_attr("result_value", value)
                self.heartbeat.detach()
                study.tell(trial, value)
            self.progress.item_end(item, f"val acc {value:.4f}")
        except LostClaim as exc:
            self.progress.log(f"{item.label}: {exc}; dropped")
        except BaseException as exc:
            self.heartbeat.detach()
            if tid is not None:
                # Best effort: with the disk full or the database gone this fails too, and the claim
                # of a dead process is free at the next start anyway.
                with contextlib.suppress(Exception):
                    finish(storage, tid, TrialState.FAIL, _reason(exc))
            raise
        finally:
            self.heartbeat.detach()

    # ------------------------------------------------ one final run

    def _final(self, item: WorkItem) -> None:
        storage, cfg = self.storage, item.cfg
        assert cfg is not None
        run_id = cfg.run_id
        tid: int | None = None
        try:
            with signals_deferred():
                tid = new_claim(storage, item.study_id, {"kind": "final", "run_id": run_id, "seed": item.slot})
                self.heartbeat.attach(tid)
            if not self._won(item.study_id, tid, run_id):
                finish(storage, tid, TrialState.FAIL, "lost claim: another process runs it")
                return
            self.progress.item_start(item)
            self.executed.append(item)
            self._test_fault(item.kind)
            preds_dir = self.out / "predictions"
            preds_dir.mkdir(parents=True, exist_ok=True)
            tmp = preds_dir / f".{run_id}.{os.getpid()}.csv"
            try:
                rec = execute(
                    cfg, self.data, self.device, on_progress=self._on_progress, save_predictions=tmp, compile=self.exp.compile
                )
                pred_path = preds_dir / f"{run_id}.csv.gz"
                atomic_write(pred_path, lambda f: _gzip_into(tmp, f))
            except Diverged as exc:
                self.heartbeat.detach()
                with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
                    storage.set_trial_user_attr(tid, "diverged", str(exc))
                    storage.set_trial_state_values(tid, TrialState.FAIL)
                self.progress.item_end(item, f"diverged ({exc})")
                return
            finally:
                tmp.unlink(missing_ok=True)
            cell = item.cell
            rec["experiment"] = self.exp.name
            tuned = cell.recipe == "tuned"
            rec["study"] = self.search_name(cell, self.exp.searched_by(item.slot)) if tuned else ""
            rec["search_mode"] = self.exp.search.mode if tuned else ""
            rec["predictions"] = f"predictions/{run_id}.csv.gz"
            rec["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            from bench.run import write_record

            with signals_deferred():  # a finished run is never lost to a Ctrl-C here
                write_record(self.out / "records" / f"{run_id}.json", rec)
                self.heartbeat.detach()
                try:
                    storage.set_trial_user_attr(tid, "record", json.dumps(rec))
                    storage.set_trial_user_attr(tid, "result_value", rec["test_accuracy"])
                    storage.set_trial_state_values(tid, TrialState.COMPLETE, [rec["test_accuracy"]])
                except UpdateFinishedTrialError:
                    raise LostClaim("another process declared this run stale") from None
                self.progress.item_end(item, f"test acc {rec['test_accuracy']:.4f}")
                export_runs(self)
        except LostClaim as exc:
            self.progress.log(f"{item.label}: {exc}; dropped")
        except BaseException as exc:
            self.heartbeat.detach()
            if tid is not None:
                # Best effort: with the disk full or the database gone this fails too, and the claim
                # of a dead process is free at the next start anyway.
                with contextlib.suppress(Exception):
                    finish(storage, tid, TrialState.FAIL, _reason(exc))
            raise
        finally:
            self.heartbeat.detach()

    def _test_fault(self, kind: str) -> None:
        """Tests only: SFT_BENCH_TEST_FAULT="final:2:KILL,trial:1:INT" sends this process the signal when
        it starts its 2nd final run (its 1st trial), claim made and training not begun: a fault at a
        known point, instead of a signal after a sleep that a fast machine outruns."""
        spec = os.environ.get("SFT_BENCH_TEST_FAULT")
        if not spec:
            return
        self._started[kind] = self._started.get(kind, 0) + 1
        for part in spec.split(","):
            k, n, sig = part.strip().split(":")
            if k == kind and int(n) == self._started[kind]:
                os.kill(os.getpid(), getattr(signal, f"SIG{sig.upper()}"))
                time.sleep(0.1)  # let the handler run here, at this point

    def _won(self, study_id: int, tid: int, run_id: str) -> bool:
        """The lowest live claim (or a finished run) wins. With a database, commits can land out of
        id order, so look twice, a moment apart; the journal file is totally ordered already."""
        for attempt in range(1 if not is_url(storage_location(self.exp)) else 2):
            if attempt:
                time.sleep(0.5)
            now = time.time()
            for t in sorted(self.storage.get_all_trials(study_id, deepcopy=False), key=lambda t: t._trial_id):
                if t.user_attrs.get("run_id") != run_id or t._trial_id == tid:
                    continue
                if t.state == TrialState.COMPLETE or "diverged" in t.user_attrs:
                    return False
                if t._trial_id < tid and is_live(t, self.exp.workers.stale_after_seconds, now):
                    return False
        return True


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]


def _gzip_into(src: Path, f: Any) -> None:
    with open(src, "rb") as s, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
        shutil.copyfileobj(s, g)


# ---------------------------------------------------------------- the tidy table


def runs_columns(classes: tuple[str, ...]) -> list[str]:
    return [
        "experiment",
        "backbone",
        "method",
        "recipe",
        "fraction",
        "seed",
        "run_id",
        "resolution",
        "pretrained",
        "precision",
        "device_type",
        "test_accuracy",
        "macro_f1",
        *[f"acc_{c}" for c in classes],
        "trainable_params",
        "train_seconds",
        "wall_seconds",
        "images_per_second",
        "peak_memory_mb",
        "n_train",
        "protocol",
        "steps",
        "probe_steps",
        "min_steps",
        "search_mode",
        "augment",
        "bn",
        "hparams",
        *[f"hp_{f}" for f in HP_FIELDS],
        "study",
        "predictions",
        "git_commit",
        "device",
        "threads",
        "torch_version",
        "finished_at",
    ]


def record_row(rec: dict) -> dict[str, Any]:
    prov = rec.get("provenance", {})
    row = {k: rec.get(k) for k in ("experiment", "backbone", "method", "recipe", "fraction", "seed", "run_id", "resolution")}
    row.update(
        pretrained=rec["pretrained"],
        precision=rec["precision"],
        device_type=rec["device_type"],
        test_accuracy=rec["test_accuracy"],
        macro_f1=rec["macro_f1"],
        **{f"acc_{c}": a for c, a in zip(rec["classes"], rec["per_class_accuracy"], strict=True)},
        trainable_params=rec["trainable_params"],
        train_seconds=rec["train_seconds"],
        wall_seconds=rec["wall_seconds"],
        images_per_second=rec["images_per_second"],
        peak_memory_mb=rec["peak_memory_mb"],
        n_train=rec["n_train"],
        protocol=rec["protocol"],
        steps=rec["steps"],
        probe_steps=rec["probe_steps"],
        min_steps=rec["min_steps"],
        search_mode=rec.get("search_mode", ""),
        augment=rec["augment"],
        bn=rec["bn"],
        hparams=json.dumps(rec["hparams"], sort_keys=True),
        **{f"hp_{f}": rec["hparams"].get(f) for f in HP_FIELDS},
        study=rec.get("study", ""),
        predictions=rec.get("predictions", ""),
        git_commit=prov.get("git_commit", ""),
        device=prov.get("device", ""),
        threads=prov.get("threads", ""),
        torch_version=(prov.get("versions") or {}).get("torch", ""),
        finished_at=rec.get("finished_at", ""),
    )
    return row


def collect_rows(sweep: Sweep, status: GridStatus | None = None) -> list[dict]:
    status = status or sweep.survey()
    rows = []
    for cs in status.cells:
        for seed in sorted(cs.finals):
            rows.append(record_row(cs.finals[seed]))
    return rows


def export_runs(sweep: Sweep) -> Path:
    """Rewrite R/E/runs.csv from the storage (under a file lock, so the last writer has the latest
    view), and restore any record file missing here (runs finished on another machine)."""
    import fcntl

    out = sweep.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUNS_CSV
    with open_nofollow(out / ".runs.csv.lock") as lock:  # a link planted there is never followed
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            status = sweep.survey()  # inside the lock: the latest state, whatever the caller saw
            rows = collect_rows(sweep, status)
            cols = runs_columns(sweep.data.classes)

            def write(f: Any) -> None:
                w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    w.writerow({k: _csv_value(v) for k, v in r.items()})

            atomic_write(path, write, mode="w")
            for cs in status.cells:
                for rec in cs.finals.values():
                    p = out / "records" / f"{rec['run_id']}.json"
                    if not p.exists():
                        from bench.run import write_record

                        write_record(p, rec)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, bool):
        return str(v).lower()
    return v


def summary_rows(status: GridStatus) -> list[dict]:
    """One row per cell: what the terminal summary and the live table show."""
    out = []
    for cs in status.cells:
        accs = cs.accuracies
        n = len(accs)
        mean = sum(accs) / n if n else None
        std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else (0.0 if n == 1 else None)
        out.append(
            {
                "cell": cs.cell,
                "n": n,
                "mean": mean,
                "std": std,
                "best_val": cs.best_value,
                "trials": f"{min(cs.trials_done, cs.trials_budget)}/{cs.trials_budget}" if cs.trials_budget else "-",
                "pruned": cs.trials_pruned,
                "diverged": cs.trials_diverged + len(cs.diverged),
                "failed": cs.failed,
                "hparams": cs.best_hparams,
            }
        )
    return out


def hparams_brief(hp: dict | None) -> str:
    """The searched hyperparameters in a few characters, for tables."""
    if not hp:
        return ""
    short = {
        "lr": "lr",
        "weight_decay": "wd",
        "label_smoothing": "ls",
        "warmup": "wu",
        "backbone_lr_mult": "mult",
        "bn": "bn",
        "branch_width": "width",
    }
    parts = [str(hp["optimizer"])] if "optimizer" in hp else []
    for k, name in short.items():
        if k in hp:
            v = hp[k]
            parts.append(f"{name} {v:.2g}" if isinstance(v, float) else f"{name} {v}")
    return " ".join(parts)
