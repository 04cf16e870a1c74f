"""Deterministic parallel search: slot k of a study is decided only from the finished slots < k.

Why: with several workers, TPE and the pruner used to see whatever trials had finished when a
trial started or reported, so two runs of the same code with `--parallel 2` chose other
hyperparameters for 2-3 of 30 final runs. Optuna itself does not offer reproducible parallel
optimisation; a grid of many independent studies can afford to wait instead:

- `SlotView` is the study as slot k's sampler and pruner see it: the finished (complete or pruned)
  trials of slots < k, one per slot, in slot order, and the trial itself. Nothing else, whoever
  finished first.
- `ready` says whether slot k may start now: when all slots < k have finished, or when slot k's
  trial cannot depend on them at all (k < the sampler's random start-up, where TPE samples without
  looking, and k < the pruning floor, where no pruner acts: protocol v3). A worker whose next slot
  is not ready takes another study's slot, a final run, or waits (bench/sweep/worker.py).

With the seeded sampler of each slot (bench/sweep/search.py `slot_seed`), a study's trials are
then the same with 1, 2 or 64 workers, on a journal file, PostgreSQL or under Slurm.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from bench.sweep.claims import FINISHED, trial_id


def slot_of(t: FrozenTrial) -> int | None:
    """The slot a trial recorded (None: a claim that had not taken one yet)."""
    slot = t.user_attrs.get("slot")
    return int(slot) if isinstance(slot, int) else None


def finished_slots(trials: list[FrozenTrial]) -> set[int]:
    """Slots that have a finished (complete or pruned) trial."""
    return {s for t in trials if t.state in FINISHED and (s := slot_of(t)) is not None}


def independent_slots(startup_trials: int, pruning_floor: int | None) -> int:
    """How many first slots decide nothing from other trials: those below TPE's random start-up (it samples
    them without looking at the history) and below the pruning floor (no pruner acts there; None: no
    pruner). Candidates asked first (the defaults) are fixed values, but a parameter outside a candidate is
    still the sampler's, so they count only inside the start-up too."""
    return startup_trials if pruning_floor is None else min(startup_trials, pruning_floor)


def ready(slot: int, trials: list[FrozenTrial], independent: int) -> bool:
    """Whether slot `slot` may start now (see the module docstring)."""
    if slot < independent:
        return True
    done = finished_slots(trials)
    return all(s in done for s in range(slot))


def next_slot(trials: list[FrozenTrial], live: Container[int], budget: int) -> int | None:
    """The lowest slot with neither a finished trial nor a live claim (None: every slot is taken)."""
    done = finished_slots(trials)
    taken = {s for t in trials if trial_id(t) in live and (s := slot_of(t)) is not None}
    return next((s for s in range(budget) if s not in done and s not in taken), None)


class SlotView(BaseStorage):
    """A storage through which study `study_id` shows slot `slot`'s claim `own` only the finished trials of
    the slots before it (one per slot, the first finished, in slot order), and everything else as it is.
    Writes go straight to the storage underneath. Public storage API only."""

    def __init__(self, storage: BaseStorage, study_id: int, slot: int, own: int) -> None:
        self.base, self.study_id, self.slot, self.own = storage, study_id, slot, own

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self.base.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        if study_id != self.study_id:
            return trials
        mine = [t for t in trials if trial_id(t) == self.own]
        before: dict[int, FrozenTrial] = {}
        for t in sorted(trials, key=trial_id):
            s = slot_of(t)
            if t.state in FINISHED and s is not None and s < self.slot and s not in before:
                before[s] = t
        return [before[s] for s in sorted(before)] + mine

    # ---- everything else: the storage underneath, unchanged
    def create_new_study(self, directions: Sequence[Any], study_name: str | None = None) -> int:
        return self.base.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        self.base.delete_study(study_id)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.base.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.base.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.base.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.base.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[Any]:
        return self.base.get_study_directions(study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.base.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.base.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[Any]:
        return self.base.get_all_studies()

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self.base.create_new_trial(study_id, template_trial)

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any) -> None:
        self.base.set_trial_param(trial_id, param_name, param_value_internal, distribution)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        return self.base.set_trial_state_values(trial_id, state, values)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self.base.set_trial_intermediate_value(trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.base.set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.base.set_trial_system_attr(trial_id, key, value)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self.base.get_trial(trial_id)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.base.get_trial_id_from_study_id_trial_number(study_id, trial_number)

    def check_trial_is_updatable(self, trial_id: int, trial_state: TrialState) -> None:
        self.base.check_trial_is_updatable(trial_id, trial_state)


def view_study(storage: BaseStorage, name: str, study_id: int, slot: int, own: int, sampler: Any) -> optuna.Study:
    """Study `name` as slot `slot`'s claim `own` sees it (SlotView), with that slot's sampler."""
    return optuna.load_study(study_name=name, storage=SlotView(storage, study_id, slot, own), sampler=sampler)
