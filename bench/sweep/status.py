"""The state of a grid, read from its storage: what is done, what runs, what is free, how long.

Why READ-ONLY: the live display, `sweep --parallel`'s monitor, the export of runs.csv and the
worker's scheduling all read the grid, some of them from processes that must never change it
(a monitor on another machine, a report). So surveying never writes: not a study, not a
freed claim. Freeing the claims of dead processes is the worker's explicit step
(bench/sweep/worker.py calls `recover` before each scheduling step); until then, a dead claim
simply does not count as running (`is_live`).

No cell waits for another (protocol v3): the linear probe that lp_ft and sft* start from is a
deterministic function of the images it is fitted on, so every run fits (or reuses) its own.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from bench.data import Cifar10
from bench.models.backbones import input_resolution
from bench.records import Cell, CellStatus, Claim, GridStatus, RunRecord, SearchStatus
from bench.sweep.claims import FINISHED, is_live, run_failure, trial_id
from bench.sweep.experiment import Experiment
from bench.sweep.slots import independent_slots, next_slot, ready

if TYPE_CHECKING:
    from bench.sweep.projection import ItemCost
from bench.run_config import RunConfig, make_config
from bench.sweep.studies import find_study, search_name


class Grid:
    """An experiment's grid as its storage holds it (read-only), and the run configs of its items."""

    def __init__(self, exp: Experiment, data: Cifar10, device: torch.device, storage: Any) -> None:
        self.exp, self.data, self.device = exp, data, device
        self.storage: optuna.storages.BaseStorage = storage
        self.cells = exp.cells()
        self._found: dict[str, int] = {}  # study name -> id, once seen (ids never change)
        self.costs: dict[Cell, ItemCost] | None = None  # the projection's per-item seconds (the live ETA's start)
        self.started = time.time()  # items finished since then pace the ETA (see eta)
        self._resolution: dict[tuple[str, str], int] = {}

    # ------------------------------------------------ studies, read-only

    def find(self, name: str) -> int | None:
        """The id of study `name`, or None while nobody has created it."""
        if name not in self._found:
            sid = find_study(self.storage, name)
            if sid is None:
                return None
            self._found[name] = sid
        return self._found[name]

    def search_name(self, cell: Cell, seed: int) -> str:
        return search_name(self.exp, cell, seed)

    def search_id(self, cell: Cell, seed: int) -> int | None:
        return self.find(self.search_name(cell, seed))

    def finals_id(self, cell: Cell) -> int | None:
        return self.find(cell.finals_name(self.exp.name))

    def trials(self, study_id: int | None) -> list[FrozenTrial]:
        """A study's trials as they are (dead claims included: they are not live, and only a worker frees them)."""
        if study_id is None:
            return []
        return self.storage.get_all_trials(study_id, deepcopy=False)

    # ------------------------------------------------ run configs

    def resolution(self, cell: Cell) -> int:
        """The cell's input resolution (bench.models.backbones.input_resolution, the one rule)."""
        key = (cell.backbone, cell.recipe)
        if key not in self._resolution:
            self._resolution[key] = input_resolution(cell.backbone, cell.recipe, self.exp.resolution_override(cell))
        return self._resolution[key]

    def config(self, cell: Cell, seed: int, overrides: dict | None, stage: str, pool: tuple[int, ...] = ()) -> RunConfig:
        """The run config of a trial or final run of `cell` for `seed`: a search's values apply to tuned
        cells; the experiment's fixed [hparams] to `defaults` cells (a tuned cell's search includes
        them); a fixed `steps` (smoke tests) to every cell alike; the article's recipe is its own."""
        if cell.recipe == "tuned":
            changes = dict(overrides or {})
        elif cell.recipe == "defaults":
            changes = dict(self.exp.fixed_hparams(cell.method))
        else:
            changes = {}
        if self.exp.steps is not None:  # a fixed budget (smoke tests), for every cell alike
            changes["steps"] = self.exp.steps
        return make_config(
            backbone=cell.backbone,
            method=cell.method,
            fraction=cell.fraction,
            seed=seed,
            recipe=cell.recipe,
            resolution=self.resolution(cell),
            pretrained=self.exp.pretrained,
            overrides=changes,
            stage=stage,
            precision=self.exp.precision,
            device=self.device,
            data=self.data,
            val_fraction=self.exp.val_fraction,
            probe=self.exp.probe,
            cv_folds=self.exp.cv_folds if stage == "trial" else 1,
            pool=pool,
        )

    def independent_slots(self) -> int:
        """How many first slots of a search decide nothing from other trials (bench/sweep/slots.py)."""
        floor = None if self.exp.search.pruner == "none" else self.exp.pruner_startup_trials()
        return independent_slots(self.exp.startup_trials(), floor)

    # ------------------------------------------------ survey

    def survey(self) -> GridStatus:
        """Read the whole grid's state from the storage. Writes nothing (see the module's docstring)."""
        now = time.time()
        running: list[Claim] = []
        cells = [self._survey_cell(cell, now, running) for cell in self.cells]
        status = GridStatus(cells, running)
        status.eta_seconds, status.eta_basis = eta(status, self.costs, self.started)
        return status

    def _survey_cell(self, cell: Cell, now: float, running: list[Claim]) -> CellStatus:
        seeds = self.exp.searches(cell)
        cs = CellStatus(cell, self.exp.trials * len(seeds), finals_total=len(self.exp.seeds))
        for seed in seeds:
            ss = SearchStatus(seed, self.search_id(cell, seed), self.exp.trials)
            self._survey_search(ss, cell, now, running)
            cs.searches[seed] = ss
        if cs.search_done:
            failed = [ss for ss in cs.searches.values() if ss.failed]
            if failed and len(failed) == len(cs.searches):
                cs.failed = failed[0].failed
            else:
                self._survey_finals(cs, now, running)
        return cs

    def _survey_search(self, ss: SearchStatus, cell: Cell, now: float, running: list[Claim]) -> None:
        stale_after = self.exp.workers.stale_after_seconds
        trials = self.trials(ss.study_id)
        finished = sorted((t for t in trials if t.state in FINISHED), key=trial_id)
        live = [t for t in trials if is_live(t, stale_after, now)]
        counted = finished[: ss.budget]
        ss.done = len(finished)
        ss.pruned = sum(t.state == TrialState.PRUNED for t in counted)
        ss.diverged = sum("pruned_reason" in t.user_attrs for t in counted)
        timed = [t for t in finished if t.datetime_complete and t.datetime_start]
        ss.trial_seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in timed]
        ss.trial_ends = [t.datetime_complete.timestamp() for t in timed]
        nxt = next_slot(trials, {trial_id(t) for t in live}, ss.budget)
        ss.can_ask = not ss.complete and len(finished) + len(live) < ss.budget and nxt is not None
        if ss.can_ask and nxt is not None and not ready(nxt, trials, self.independent_slots()):
            ss.can_ask, ss.waiting = False, nxt  # its slots < nxt are still running elsewhere
        running += [self._running(t, "trial", cell) for t in live]
        complete = [t for t in counted if t.state == TrialState.COMPLETE]
        if complete:
            # ties go to the lowest slot, not the lowest trial id: slots are the same whatever order
            # workers (or a killed and re-asked trial) created the trials in
            best = max(complete, key=lambda t: (t.value, -int(t.user_attrs.get("slot", trial_id(t)))))
            ss.best_value, ss.best_hparams = best.value, best.user_attrs.get("hparams")
        elif ss.complete:
            ss.failed = f"all {ss.budget} trials were pruned or diverged; no hyperparameters to retrain with"

    def _survey_finals(self, cs: CellStatus, now: float, running: list[Claim]) -> None:
        stale_after = self.exp.workers.stale_after_seconds
        by_run: dict[str, list[FrozenTrial]] = {}
        for t in self.trials(self.finals_id(cs.cell)):
            by_run.setdefault(t.user_attrs.get("run_id", ""), []).append(t)
        for seed in self.exp.seeds:
            cfg = self._final_config(cs, seed)
            if cfg is None:
                continue
            cs.run_ids[seed] = cfg.run_id
            claims = sorted(by_run.get(cfg.run_id, []), key=trial_id)
            done = [t for t in claims if t.state == TrialState.COMPLETE]
            diverged = [t for t in claims if t.state == TrialState.FAIL and run_failure(t) is not None]
            live = [t for t in claims if is_live(t, stale_after, now)]
            if done:
                cs.finals[seed] = RunRecord.from_json(done[0].user_attrs["record"])
            elif diverged:
                cs.diverged[seed] = str(run_failure(diverged[0]))
            elif live:
                running.append(self._running(live[0], "final", cs.cell))
            else:
                cs.free_finals.append((seed, cfg))

    def _final_config(self, cs: CellStatus, seed: int) -> RunConfig | None:
        """Seed `seed`'s final run, or None: its search failed (the reason goes to `cs.diverged`)."""
        hparams = None
        if cs.searches:
            ss = cs.searches[self.exp.searched_by(seed)]
            if ss.failed:
                cs.diverged[seed] = f"no final run: seed {ss.seed}'s search failed ({ss.failed})"
                return None
            hparams = ss.best_hparams
        return self.config(cs.cell, seed, hparams, "final")

    def _running(self, t: FrozenTrial, kind: str, cell: Cell) -> Claim:
        hb = t.user_attrs.get("heartbeat") or {}
        what = f"trial {t.number + 1}" if kind == "trial" else f"final seed {t.user_attrs.get('seed')}"
        return Claim(t.user_attrs.get("worker", "?"), f"{what} · {cell.label}", hb.get("progress", ""))


# ---------------------------------------------------------------- ETA


def eta(status: GridStatus, costs: dict[Cell, ItemCost] | None = None, since: float | None = None) -> tuple[float | None, str]:
    """(remaining seconds, what they are based on): `remaining`'s work, split between the workers running now.

    Without costs, or for a cell the projection does not cover: from the finished items alone (as before)."""
    workers = max(1, len({r.worker for r in status.running}))
    left = remaining(status, costs, since) if costs else None
    if left is None:
        return _eta_from_items(status), "finished items"
    seconds, basis = left
    return seconds / workers, basis


def remaining(status: GridStatus, costs: dict[Cell, ItemCost], since: float | None = None) -> tuple[float, str] | None:
    """(seconds of the work left for one worker, what they are based on); None: a cell has no projected cost.

    With the projection's per-item costs (bench/sweep/projection.py, measured rates of this device): the
    remaining items' projected seconds, scaled by how long the finished items really took against their
    projection. So the first estimate is the projection `--dry-run` prints, and it moves smoothly as items
    finish instead of jumping with each one. Which finished items: those finished since `since` (this
    process's start) once there is one. Why: a resumed sweep often runs otherwise than before (other
    `--parallel` or `--threads`, a machine no longer shared), and items timed in earlier sessions would
    pace it by the old conditions. A dry run of a half-done grid prints the same figure (no `since`)."""
    left = 0.0
    items: list[tuple[float, float, float]] = []  # (measured, projected, finished at) of each finished item
    for cs in status.cells:
        cost = costs.get(cs.cell)
        if cost is None:
            return None
        if not cs.done:
            left += max(0, cs.trials_budget - cs.trials_done) * cost.trial + (cs.finals_total - cs.finals_done) * cost.final
        ends = cs.trial_ends + [0.0] * (len(cs.trial_seconds) - len(cs.trial_ends))  # unknown: long ago
        items += [(s, cost.trial, end) for s, end in zip(cs.trial_seconds, ends, strict=True)]
        items += [(r.wall_seconds, cost.final, _timestamp(r.finished_at)) for r in cs.finals.values()]
    recent = [i for i in items if since is not None and i[2] >= since]
    used, when = (recent, "since this start") if recent else (items, "so far")
    projected_done = sum(i[1] for i in used)
    if projected_done <= 0:
        return left, "projected"
    ratio = sum(i[0] for i in used) / projected_done
    return left * ratio, f"projected × {ratio:.2f} as measured {when}"


def _timestamp(iso: str) -> float:
    """A record's `finished_at` in epoch seconds; 0 (long ago) where absent or unreadable."""
    try:
        return dt.datetime.fromisoformat(iso).timestamp() if iso else 0.0
    except ValueError:
        return 0.0


def _eta_from_items(status: GridStatus) -> float | None:
    """Remaining seconds from the measured times of finished trials and runs (any process's).

    An item is estimated from items of the same backbone, method and kind: the mean at its
    own fraction when measured, else a line through the measured fractions (time = fixed
    cost + cost per label fraction), else proportional to the one measured fraction; with
    nothing measured for its method, from every method's items alike."""
    samples: dict[tuple, list[tuple[float, float]]] = {}
    for cs in status.cells:
        c = cs.cell
        points = [("trial", s) for s in cs.trial_seconds] + [("final", r.wall_seconds) for r in cs.finals.values()]
        for kind, seconds in points:
            for key in ((c.backbone, c.method, kind), (kind,)):
                samples.setdefault(key, []).append((c.fraction, seconds))
    total = 0.0
    for cs in status.cells:
        if cs.done:
            continue
        left = (("trial", max(0, cs.trials_budget - cs.trials_done)), ("final", cs.finals_total - cs.finals_done))
        for kind, n in left:
            if n:
                t = _estimate(samples, cs.cell, kind)
                if t is None:
                    return None
                total += n * t
    workers = max(1, len({r.worker for r in status.running}))
    return total / workers


def _estimate(samples: dict[tuple, list[tuple[float, float]]], c: Cell, kind: str) -> float | None:
    """Seconds for one item of `kind` in cell `c` (see eta), or None with nothing measured at all."""
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
