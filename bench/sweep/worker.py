"""One worker process: pick the next free item of the grid, claim it, train it, record it; repeat.

State lives in the Optuna storage, never in one process's memory, so any number of workers
(one machine or several) can share one grid, and a process killed at any moment loses only
the trial or run it was in the middle of:

- A search trial: the worker claims a slot (bench/sweep/claims.py: COMPLETE, PRUNED and live
  RUNNING trials count toward the budget, so killed trials are redone and the budget is never
  exceeded), asks its hyperparameters with the slot's seeded sampler (bench/sweep/search.py),
  trains, and tells Optuna the validation accuracy (or PRUNED: the pruner, a divergence).
- A final run: the worker claims the run id; the lowest live claim wins, the others step back.
  It trains on the labelled subset, tests once, saves the predictions and the record, and
  rewrites runs.csv (bench/sweep/export.py).

Each loop frees the claims of dead processes first (`recover`): surveying never writes, so
this is the one place where the grid's dead claims are given back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from bench.data import Cifar10
from bench.data.splits import scored_images
from bench.files import atomic_write, temp_path
from bench.history import HistoryRow
from bench.records import CacheCounts, Cell, GridStatus, RunRecord
from bench.run_config import RunConfig
from bench.sweep.claims import (
    Heartbeat,
    LostClaim,
    ask_first,
    claim,
    finish,
    open_trial,
    recover,
    take_slot,
    won,
)
from bench.sweep.events import NullProgress, Progress, WorkItem
from bench.sweep.experiment import Experiment
from bench.sweep.export import export_runs
from bench.sweep.journal import clean_leftovers
from bench.sweep.search import candidate_params, pruner, sample_hparams, sampler
from bench.sweep.signals import signals_deferred
from bench.sweep.slots import ready, view_study
from bench.sweep.status import Grid
from bench.sweep.storage import is_url, open_storage, storage_location
from bench.sweep.studies import ensure_study, finals_attrs, search_attrs
from bench.train.caches import Caches
from bench.train.compiling import compile_spec, graph_count
from bench.train.context import FitContext
from bench.train.loop import Diverged
from bench.train.meter import BackboneMeter
from bench.train.run import SaveTo, execute, write_record


class Sweep(Grid):
    """One worker process on an experiment's storage; `run()` works until the grid is done.

    `read_only=True` makes a monitor (`sweep --parallel`'s display, a dry run): it surveys the
    grid and builds run configs, and never creates a study or runs anything."""

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
        caches: Caches | None = None,
    ) -> None:
        self.progress = progress or NullProgress()
        # One owner for the features and probes its runs share (a final run reuses the probe its
        # trials fitted), in memory and in the experiment's on-disk store, which every worker and
        # every resume shares (RESULTS/NAME/cache; SFT_BENCH_FEATURE_STORE moves it or turns it off).
        self.caches = caches if caches is not None else Caches.from_env(default_store=exp.out_dir / "cache")
        notes: list[str] = []
        super().__init__(exp, data, device, storage or open_storage(exp, notes))
        for note in notes:
            self.progress.log(note)
        self.poll_seconds = poll_seconds
        self.read_only = read_only
        self.out = exp.out_dir
        self._ensured: dict[str, int] = {}  # studies this process created or completed
        self.heartbeat = Heartbeat(self.storage, exp.workers.heartbeat_seconds, exp.workers.stale_after_seconds)
        self.executed: list[WorkItem] = []  # what this process trained (tests, summary)
        self._started: dict[str, int] = {}  # items started by kind (SFT_BENCH_TEST_FAULT)
        self._graphs_logged = 0  # compiled graphs last logged (compile on)

    # ------------------------------------------------ studies (created by a worker only)

    def study_id(self, name: str, attrs: dict[str, Any]) -> int | None:
        """Study `name`, created and completed (a read-only sweep only looks it up)."""
        if self.read_only:
            return self.find(name)
        if name not in self._ensured:
            self._ensured[name] = self._found[name] = ensure_study(self.storage, name, attrs)
        return self._ensured[name]

    def search_study(self, cell: Cell, seed: int) -> int | None:
        return self.study_id(self.search_name(cell, seed), search_attrs(self.exp, cell, seed))

    def finals_study(self, cell: Cell) -> int | None:
        return self.study_id(cell.finals_name(self.exp.name), finals_attrs(self.exp, cell))

    def ensure_search_studies(self) -> None:
        """Create (or complete) every search study of the grid, in survey order, before any work:
        another worker started with other settings is then refused (check_settings) for every
        cell, not only for those that had started."""
        for cell in self.cells:
            for seed in self.exp.searches(cell):
                self.search_study(cell, seed)

    def free_dead_claims(self) -> None:
        """Give back the claims of dead processes (FAIL), adopt the results they had saved
        (COMPLETE): the one place where this happens, right before each scheduling step."""
        stale_after = self.exp.workers.stale_after_seconds
        for cell in self.cells:
            seeds = self.exp.searches(cell)
            for sid in [self.search_id(cell, s) for s in seeds] + [self.finals_id(cell)]:
                if sid is not None:
                    running = self.storage.get_all_trials(sid, deepcopy=False, states=(TrialState.RUNNING,))
                    recover(self.storage, running, stale_after)

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
        store = self.caches.store
        if store is not None and (leftovers := store.clean()):
            self.progress.log(f"removed {len(leftovers)} temporary file(s) killed processes left in {store.root}")
        self.ensure_search_studies()
        self.heartbeat.start()
        graphs = graph_count()
        try:
            while True:
                self.free_dead_claims()
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
                self._log_graphs(graphs)
        finally:
            self.heartbeat.stop()
            if store is not None:
                self.progress.log(store.summary())
            how = compile_spec(self.exp.compile)
            if how is not None:
                self.progress.log(
                    f"compile ({how.describe()}): {graph_count() - graphs} graph(s) compiled by this process "
                    f"over {len(self.executed)} trained item(s)"
                )

    def _log_graphs(self, since: int) -> None:
        """With compile on: one line each time the process's count of compiled graphs grows (a new
        backbone, resolution, batch or BatchNorm policy compiles; every other item reuses its graph)."""
        if compile_spec(self.exp.compile) is None:
            return
        n = graph_count() - since
        if n != self._graphs_logged:
            self._graphs_logged = n
            self.progress.log(f"compile: {n} graph(s) compiled by this process so far")

    def _next(self, status: GridStatus) -> WorkItem | None:
        """Final runs first (they finish cells), then the next trial, in the grid's order."""
        for cs in status.cells:
            if cs.free_finals:
                seed, cfg = cs.free_finals[0]
                sid = self.finals_study(cs.cell)
                assert sid is not None
                return WorkItem("final", cs.cell, sid, seed, cfg)
            for ss in cs.searches.values():
                if ss.can_ask:
                    per_seed = self.exp.search.mode == "per_seed"
                    sid = self.search_study(cs.cell, ss.seed)
                    assert sid is not None
                    return WorkItem("trial", cs.cell, sid, ss.done, seed=ss.seed, per_seed=per_seed)
        return None

    @contextlib.contextmanager
    def _claimed(self, item: WorkItem, attrs: dict[str, Any]) -> Iterator[int]:
        """claims.claim for this item; a claim another process took over is dropped with one line."""
        try:
            with claim(self.storage, item.study_id, attrs, self.heartbeat) as tid:
                yield tid
        except LostClaim as exc:
            self.progress.log(f"{item.label}: {exc}; dropped")

    def _begin(self, item: WorkItem) -> None:
        """The claim is ours: show it, count it, and (tests only) fault here."""
        self.progress.item_start(item)
        self.executed.append(item)
        self._test_fault(item.kind)

    def _on_progress(self, row: HistoryRow) -> None:
        self.heartbeat.progress = f"{row.phase} {row.step}/{row.steps}"
        self.progress.epoch(row)
        self.heartbeat.check()  # a claim we could not keep alive (or someone took over) is not ours to finish

    # ------------------------------------------------ one search trial

    def _trial(self, item: WorkItem) -> None:
        exp = self.exp
        with self._claimed(item, {"kind": "trial"}) as tid:
            trials = self.storage.get_all_trials(item.study_id, deepcopy=False)
            slot = take_slot(trials, tid, exp.trials, exp.workers.stale_after_seconds, time.time())
            if slot is None:
                finish(self.storage, tid, TrialState.FAIL, "over budget: another process took the last slot")
                return
            if not ready(slot, trials, self.independent_slots()):
                # another worker runs a slot < this one, whose result this slot's sampler or pruner would read:
                # give the slot back and take other work (bench/sweep/slots.py)
                finish(self.storage, tid, TrialState.FAIL, f"slot {slot} waits for the slots before it to finish")
                return
            item.slot = slot
            study, trial, cfg = self._ask(item, tid)
            self._begin(item)
            self._train_trial(item, study, trial, cfg)

    def _ask(self, item: WorkItem, tid: int) -> tuple[optuna.Study, optuna.Trial, RunConfig]:
        """Our claim as an Optuna trial of its study: its hyperparameters asked, its config built."""
        exp, cell = self.exp, item.cell
        name = self.search_name(cell, item.seed)
        # the study as this slot may see it: the finished slots before it, in slot order (deterministic with any
        # number of workers); writes go to the storage itself
        study = view_study(self.storage, name, item.study_id, item.slot, tid, sampler(exp, name, item.seed, item.slot))
        candidates = candidate_params(exp, cell.method) if exp.search.first_trial == "defaults" else []
        if item.slot < len(candidates):
            # the first slots ask the method's defaults, then the experiment's candidates: Optuna's
            # enqueue_trial stores the same attribute
            ask_first(self.storage, tid, candidates[item.slot])
        trial = open_trial(study, tid)
        changes = sample_hparams(trial, exp, cell.method)
        cfg = self.config(cell, item.seed, changes, "trial", pool=exp.pool_seeds)
        study.pruner = pruner(exp, cfg)
        trial.set_user_attr("hparams", json.loads(json.dumps(changes)))
        trial.set_user_attr("run_id", cfg.run_id)
        trial.set_user_attr("slot", item.slot)
        return study, trial, cfg

    def _train_trial(self, item: WorkItem, study: optuna.Study, trial: optuna.Trial, cfg: RunConfig) -> None:
        """Train the trial, reporting validation accuracy to the pruner; tell Optuna the outcome."""

        def on_progress(row: HistoryRow) -> None:
            self._on_progress(row)
            if row.phase == "train" and row.val_accuracy is not None:
                trial.report(row.val_accuracy, row.step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{self.exp.search.pruner} at step {row.step} (val acc {row.val_accuracy:.4f})")

        meter, before = BackboneMeter(), self.caches.counts()
        ctx = FitContext(on_progress=on_progress, compile=compile_spec(self.exp.compile), caches=self.caches, meter=meter)
        try:
            rec = execute(cfg, self.data, self.device, ctx)
        except optuna.TrialPruned as exc:
            self._tell_pruned(item, study, trial, meter, before, ("pruned_by", str(exc)), f"pruned ({exc})")
            return
        except Diverged as exc:
            self._tell_pruned(
                item, study, trial, meter, before, ("pruned_reason", f"diverged: {exc}"), f"pruned: diverged ({exc})"
            )
            return
        except (torch.OutOfMemoryError, MemoryError) as exc:
            # not retried at every start forever, and the worker goes on: this configuration does not fit here
            reason = out_of_memory(exc)
        else:
            self._tell_complete(item, study, trial, rec, before, cfg)
            return
        release_memory(self.device)  # outside the handler: the traceback's frames, and the tensors they held, are gone
        self._tell_pruned(item, study, trial, meter, before, ("pruned_reason", reason), f"pruned: {reason}")

    def _tell_pruned(
        self,
        item: WorkItem,
        study: optuna.Study,
        trial: optuna.Trial,
        meter: BackboneMeter,
        before: CacheCounts,
        why: tuple[str, str],
        outcome: str,
    ) -> None:
        """Tell Optuna the trial was pruned, with why (`why`: the user attr and its text): by the pruner
        (pruned_by), or because it diverged or ran out of memory (pruned_reason)."""
        self.heartbeat.check()
        self.heartbeat.detach()
        with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
            trial.set_user_attr("backbone_images", meter.images)
            trial.set_user_attr("cache", (self.caches.counts() - before).to_attr())
            trial.set_user_attr(*why)
            study.tell(trial, state=TrialState.PRUNED)
        self.progress.item_end(item, outcome)

    def _tell_complete(
        self, item: WorkItem, study: optuna.Study, trial: optuna.Trial, rec: RunRecord, before: CacheCounts, cfg: RunConfig
    ) -> None:
        """Tell Optuna the trial's validation accuracy, with what it cost and how many validation images score it
        (the report's selection table weighs a choice by them: bench/report/selection.py)."""
        value = rec.val_accuracy
        seeds = cfg.pool or (cfg.seed,)
        images = scored_images(self.data.train_y, cfg.fraction, seeds, cfg.val_fraction, cfg.cv_folds)
        self.heartbeat.check()  # trained to the end, but the claim may have been lost meanwhile
        with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
            trial.set_user_attr("wall_seconds", rec.wall_seconds)
            trial.set_user_attr("backbone_images", rec.backbone_images)
            trial.set_user_attr("cache", (self.caches.counts() - before).to_attr())
            trial.set_user_attr("result_value", value)
            trial.set_user_attr("val_images", images)
            if rec.fold_val_accuracy is not None:  # each pooled seed's (or fold's) score, not only their mean
                trial.set_user_attr("fold_val_accuracy", rec.fold_val_accuracy)
            self.heartbeat.detach()
            study.tell(trial, value)
        self.progress.item_end(item, f"val acc {value:.4f}")

    # ------------------------------------------------ one final run

    def _final(self, item: WorkItem) -> None:
        cfg = item.cfg
        assert cfg is not None
        with self._claimed(item, {"kind": "final", "run_id": cfg.run_id, "seed": item.slot}) as tid:
            look_twice = is_url(storage_location(self.exp))
            if not won(self.storage, item.study_id, tid, cfg.run_id, self.exp.workers.stale_after_seconds, look_twice=look_twice):
                finish(self.storage, tid, TrialState.FAIL, "lost claim: another process runs it")
                return
            self._begin(item)
            before = self.caches.counts()
            rec = self._train_final(item, tid, cfg)
            if rec is not None:
                self._record_final(item, tid, rec, self.caches.counts() - before)

    def _train_final(self, item: WorkItem, tid: int, cfg: RunConfig) -> RunRecord | None:
        """Train and test once, keeping the predictions; None when the run diverged (recorded as such)."""
        preds_dir = self.out / "predictions"
        preds_dir.mkdir(parents=True, exist_ok=True)
        final = preds_dir / f"{cfg.run_id}.csv.gz"
        tmp = temp_path(preds_dir / f"{cfg.run_id}.csv")  # a fresh random name: nothing planted there is followed
        try:
            ctx = FitContext(on_progress=self._on_progress, compile=compile_spec(self.exp.compile), caches=self.caches)
            rec = execute(cfg, self.data, self.device, ctx, SaveTo(predictions=tmp))
            atomic_write(final, lambda f: _gzip_into(tmp, f))
        except OSError as exc:  # a full disk: name the file being written, not the temporary CSV it is made from
            if exc.filename == str(tmp):
                raise OSError(exc.errno, exc.strerror, str(final)) from exc
            raise
        except Diverged as exc:
            self._fail_final(item, tid, "diverged", str(exc), f"diverged ({exc})")
            return None
        except (torch.OutOfMemoryError, MemoryError) as exc:
            reason = out_of_memory(exc)
        else:
            return rec
        finally:
            tmp.unlink(missing_ok=True)
        release_memory(self.device)  # outside the handler, as for a trial
        self._fail_final(item, tid, "out_of_memory", reason, f"failed: {reason}")
        return None

    def _fail_final(self, item: WorkItem, tid: int, key: str, reason: str, outcome: str) -> None:
        """A final run that ended for good without a result (it diverged, it ran out of memory): its claim is
        FAIL with `key` = `reason`, which no worker retries and the cell reports (bench/sweep/status.py)."""
        self.heartbeat.check()
        self.heartbeat.detach()
        with signals_deferred(), contextlib.suppress(UpdateFinishedTrialError):
            self.storage.set_trial_user_attr(tid, key, reason)
            self.storage.set_trial_state_values(tid, TrialState.FAIL)
        self.progress.item_end(item, outcome)

    def _record_final(self, item: WorkItem, tid: int, rec: RunRecord, cache: CacheCounts) -> None:
        """Complete the record, write it, and mark the claim COMPLETE, all or nothing under a Ctrl-C."""
        self.heartbeat.check()  # a run whose claim was lost meanwhile is not recorded by us
        cell, run_id = item.cell, rec.run_id
        tuned = bool(self.exp.searches(cell))  # the linear probe's tuned row has no search (protocol v3)
        rec = replace(
            rec,
            experiment=self.exp.name,
            study=self.search_name(cell, self.exp.searched_by(item.slot)) if tuned else "",
            search_mode=self.exp.search.mode if tuned else "",
            predictions=f"predictions/{run_id}.csv.gz",
            finished_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        with signals_deferred():  # a finished run is never lost to a Ctrl-C here
            write_record(self.out / "records" / f"{run_id}.json", rec)
            self.heartbeat.detach()
            try:
                self.storage.set_trial_user_attr(tid, "record", rec.to_json())
                self.storage.set_trial_user_attr(tid, "cache", cache.to_attr())
                self.storage.set_trial_user_attr(tid, "result_value", rec.test_accuracy)
                self.storage.set_trial_state_values(tid, TrialState.COMPLETE, [rec.test_accuracy])
            except UpdateFinishedTrialError:
                raise LostClaim("another process declared this run stale") from None
            self.progress.item_end(item, f"test acc {rec.test_accuracy:.4f}")
            export_runs(self)

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


def out_of_memory(exc: BaseException) -> str:
    """What a trial or final run that ran out of memory (CUDA's OutOfMemoryError, the host's MemoryError)
    records as its reason: one line."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"out of memory: {first}"[:500]


def release_memory(device: torch.device) -> None:
    """Give the memory of a run that ran out of it back before the next one: its tensors are garbage once
    the exception is gone, and CUDA's caching allocator keeps their blocks until asked to empty its cache."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _gzip_into(src: Path, f: Any) -> None:
    """Gzip the predictions without a timestamp: the same run gives the same bytes."""
    with open(src, "rb") as s, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
        shutil.copyfileobj(s, g)
