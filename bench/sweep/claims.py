"""Claims: how processes that share one storage split the work without a coordinator.

A process takes an item (a search trial's slot, a final run) by creating a RUNNING trial
that carries its owner and a heartbeat, in one write (`new_claim`): the claim is atomic
because the storage orders the writes. Who wins a contested item is decided by reading the
trials back (`take_slot` for a search's slots, `won` for a final run), never by memory.

- Liveness: every claim carries its owner (host, boot id, pid, process start time) and a
  heartbeat user_attr refreshed by a background thread (`Heartbeat`). A RUNNING trial whose
  owner is a dead process on this machine is free at once (Ctrl-C, SIGKILL, crash); one from
  another machine after `stale_after_seconds` without a heartbeat (`is_live`). Optuna 5's
  JournalStorage has no heartbeat of its own (only RDBStorage does), hence this one, the
  same on both.
- `recover` frees the claims of dead processes (FAIL) and adopts those that had saved their
  result (COMPLETE). Only a worker calls it: reading the grid never writes.
- `claim` is the one skeleton around a piece of work: claim with the signals deferred,
  heartbeat attached, and on any failure the claim marked FAIL with the reason.

This is the only module that touches Optuna's internals (trial and study ids, trials made
from a template, a trial object for an existing trial id, system attributes): Optuna's
public API has no atomic "create a RUNNING trial carrying these attributes". They are
pinned to Optuna's major version (pyproject.toml).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from bench.sweep.journal import HOST, owner_alive, owner_id
from bench.sweep.signals import signals_deferred

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
RUN_FAILED = ("diverged", "out_of_memory")  # a final run's claim that ended for good: the user attr holds why


def run_failure(t: FrozenTrial) -> str | None:
    """Why a final run's claim ended for good without a result (it diverged, it ran out of memory), or None:
    such a run is reported by its cell, never retried."""
    for key in RUN_FAILED:
        if key in t.user_attrs:
            return str(t.user_attrs[key])
    return None


class LostClaim(RuntimeError):
    """Another process declared our trial stale and took it over; drop our result."""


class HeartbeatLost(LostClaim):
    """Our heartbeats kept failing (the storage unreachable) until another worker could have declared the
    claim stale and taken it over: stop working on it rather than finish work someone else may be doing."""


# ---------------------------------------------------------------- Optuna's ids


def trial_id(t: FrozenTrial) -> int:
    """The storage-wide id of a trial (its creation order: ties between claims break on it)."""
    return t._trial_id


def study_id(study: optuna.Study | FrozenStudy) -> int:
    """The storage's id of a study (a loaded one, or one of `get_all_studies()`)."""
    return study._study_id


def create_study(storage: optuna.storages.BaseStorage, name: str) -> int:
    """A maximising study named `name` (or the one another process created a moment before)."""
    return study_id(optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True))


def open_trial(study: optuna.Study, tid: int) -> optuna.Trial:
    """The Trial object for our claim (created by `new_claim`, not by `study.ask()`).

    With a database, load_study wraps the storage in Optuna's trial cache, which has not seen
    our claim (written before, straight to the database): read it in, or a suggestion whose
    sampler reads no trials first (a single choice, ...) fails with KeyError on the trial id."""
    study.get_trials(deepcopy=False)
    return optuna.Trial(study, tid)


def ask_first(storage: optuna.storages.BaseStorage, tid: int, params: dict[str, Any]) -> None:
    """Make claim `tid` ask exactly `params` (where its space contains them): the same system
    attribute Optuna's enqueue_trial stores, set on a trial we created ourselves."""
    storage.set_trial_system_attr(tid, "fixed_params", params)


# ---------------------------------------------------------------- liveness


def heartbeat_time(t: FrozenTrial) -> float:
    """When the claim's owner last showed a sign of life (its start, before any heartbeat)."""
    hb = t.user_attrs.get("heartbeat")
    if isinstance(hb, dict) and "time" in hb:
        return float(hb["time"])
    return t.datetime_start.timestamp() if t.datetime_start else 0.0


def is_live(t: FrozenTrial, stale_after: float, now: float | None = None) -> bool:
    """A RUNNING claim whose owner runs: asked of the process itself when it is on this machine,
    judged by the heartbeat's age otherwise (another machine, an owner of unknown form)."""
    if t.state != TrialState.RUNNING:
        return False
    alive = owner_alive(t.user_attrs.get("owner", ""))
    if alive is not None:
        return alive
    return (now or time.time()) - heartbeat_time(t) < stale_after


class Heartbeat:
    """A daemon thread that refreshes the heartbeat of the one trial this process works on.

    A heartbeat that fails (a storage that raises: a lost database connection, a full disk) is retried
    sooner than the next beat would come, but not past the moment the claim could look stale to the
    other workers (`stale_after` seconds after the last heartbeat that landed, less one interval): then
    the claim is `lost`, with the reason in `lost_reason`, and the worker stops treating it as its own
    (bench/sweep/worker.py), instead of finishing work another worker may have taken over."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval: float, stale_after: float | None = None) -> None:
        self.storage, self.interval = storage, interval
        self.stale_after = stale_after if stale_after is not None else 6 * interval
        self.retry = max(min(interval / 4, 5.0), 0.01)  # after a failed beat: a few tries before the next would come
        self.lock = threading.Lock()
        self.trial_id: int | None = None
        self.lost = False
        self.lost_reason = ""
        self.progress = ""
        self._last_ok = time.time()
        self._failures = 0
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
        """Beat for `trial_id` from now on (its claim carries a heartbeat of this moment)."""
        with self.lock:
            self.trial_id, self.lost, self.lost_reason, self.progress = trial_id, False, "", ""
            self._last_ok, self._failures = time.time(), 0

    def detach(self) -> None:
        with self.lock:
            self.trial_id = None

    def beat(self) -> bool:
        """One heartbeat; False when it failed (the thread then retries sooner). A trial someone else
        finished, or failures for as long as the claim may look stale to others, mean the claim is `lost`."""
        with self.lock:
            if self.trial_id is None or self.lost:
                return True
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", {"time": time.time(), "progress": self.progress})
            except UpdateFinishedTrialError:
                self.lost, self.lost_reason = True, "another process declared this claim stale and took it over"
                return True
            except Exception as exc:  # a flaky database connection, a full disk: retried until it would matter
                self._failures += 1
                silent = time.time() - self._last_ok
                if silent + self.interval >= self.stale_after:
                    self.lost = True
                    self.lost_reason = (
                        f"its heartbeat failed {self._failures} time(s) in {silent:.1f} s ({failure_reason(exc)}), so "
                        f"after {self.stale_after:g} s without one another worker may have taken it over"
                    )
                return False
            self._last_ok, self._failures = time.time(), 0
            return True

    def check(self) -> None:
        """Raise the claim's loss (HeartbeatLost, or LostClaim when someone finished it) if it is lost."""
        if self.lost:
            if self._failures:
                raise HeartbeatLost(self.lost_reason)
            raise LostClaim(self.lost_reason or "another process declared this claim stale and took it over")

    def _run(self, stop: threading.Event) -> None:
        ok = True
        while not stop.wait(self.interval if ok else self.retry):
            ok = self.beat()


# ---------------------------------------------------------------- claims


def new_claim(storage: optuna.storages.BaseStorage, study_id: int, attrs: dict[str, Any]) -> int:
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
            finish(storage, trial_id(t), TrialState.COMPLETE, reason, value=float(t.user_attrs["result_value"]))
        else:
            who = t.user_attrs.get("worker", "?")
            finish(
                storage,
                trial_id(t),
                TrialState.FAIL,
                f"stale: worker {who} stopped (no heartbeat since {time.ctime(heartbeat_time(t))})",
            )
        changed = True
    return changed


def failure_reason(exc: BaseException) -> str:
    """What a claim that failed records as its fail_reason (one line)."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]


@contextlib.contextmanager
def claim(storage: optuna.storages.BaseStorage, study_id: int, attrs: dict[str, Any], heartbeat: Heartbeat) -> Iterator[int]:
    """Claim one item of `study_id` for the duration of the block; yields the claim's trial id.

    The claim and the heartbeat's knowledge of it land together (signals deferred: a Ctrl-C in
    between would leave a claim nobody marks). On any exception from the block, Ctrl-C and
    SIGTERM included, the claim is marked FAIL with the reason; LostClaim (someone else holds
    it now) leaves it as it is, and HeartbeatLost (we could not say we were alive) marks it FAIL
    if the storage lets us. The heartbeat is detached on the way out, whatever happened."""
    tid: int | None = None
    try:
        with signals_deferred():
            tid = new_claim(storage, study_id, attrs)
            heartbeat.attach(tid)
        yield tid
    except HeartbeatLost as exc:
        heartbeat.detach()
        # Best effort, as below: if the storage is back and nobody took the claim over, its item is free
        # again now rather than when this process ends; a claim someone else finished stays as it is.
        if tid is not None:
            with contextlib.suppress(Exception):
                finish(storage, tid, TrialState.FAIL, f"lost: {exc}")
        raise
    except LostClaim:
        raise
    except BaseException as exc:
        heartbeat.detach()
        if tid is not None:
            # Best effort: with the disk full or the database gone this fails too, and the claim
            # of a dead process is free at the next start anyway.
            with contextlib.suppress(Exception):
                finish(storage, tid, TrialState.FAIL, failure_reason(exc))
        raise
    finally:
        heartbeat.detach()


# ---------------------------------------------------------------- who gets the item


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
        key=trial_id,
    )
    if tid not in {trial_id(t) for t in counted}:
        return None
    taken = {t.user_attrs["slot"] for t in counted if "slot" in t.user_attrs and trial_id(t) != tid}
    free = iter([s for s in range(budget) if s not in taken])
    for t in counted:
        if "slot" in t.user_attrs and trial_id(t) != tid:
            continue
        slot = next(free, None)
        if trial_id(t) == tid:
            return slot
    return None


def won(
    storage: optuna.storages.BaseStorage, study_id: int, tid: int, run_id: str, stale_after: float, *, look_twice: bool
) -> bool:
    """Whether claim `tid` runs final run `run_id`: the lowest live claim (or a finished run) wins.

    With a database (`look_twice`), commits can land out of id order, so look twice, a moment
    apart; the journal file is totally ordered already."""
    for attempt in range(2 if look_twice else 1):
        if attempt:
            time.sleep(0.5)
        now = time.time()
        for t in sorted(storage.get_all_trials(study_id, deepcopy=False), key=trial_id):
            if t.user_attrs.get("run_id") != run_id or trial_id(t) == tid:
                continue
            if t.state == TrialState.COMPLETE or run_failure(t) is not None:
                return False
            if trial_id(t) < tid and is_live(t, stale_after, now):
                return False
    return True
