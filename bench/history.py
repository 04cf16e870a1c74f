"""One row of a training's history, typed: what the step loop and the linear probe write, what a
record keeps (records/*.json, the probe store) and what progress views, heartbeats and the pruner read.

Why a type: the rows crossed five modules as dicts read by key (`row["val_accuracy"]`, `"tick" in
row`), so a misspelt key was a KeyError at run time in a live view. Torch-free, like the records.

The JSON form (`to_dict`) is the one every record so far holds, key for key and in the same order:

    probe_cv  {phase, l2, cv_accuracy}                         one per cross-validated L2 strength
    probe     {phase, l2, iterations, converged, grad_max, loss, step, steps, train_accuracy,
               cv_iterations, folds[, note]}                   the probe's final fit
    train     {phase, step, steps, loss, train_accuracy[, val_accuracy]}   every S/10 steps

plus `fold` last in a k-fold trial's record. A tick (`tick=True`: a step between two rows, for live
step counts) is progress only, never history.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

# the keys of each phase's JSON form, in their order on disk (`fold` and `tick` follow when set)
_KEYS = {
    "probe_cv": ("phase", "l2", "cv_accuracy"),
    "probe": (
        "phase",
        "l2",
        "iterations",
        "converged",
        "grad_max",
        "loss",
        "step",
        "steps",
        "train_accuracy",
        "cv_iterations",
        "folds",
        "note",
    ),
}
_TRAIN_KEYS = ("phase", "step", "steps", "loss", "train_accuracy", "val_accuracy")


@dataclass(frozen=True, kw_only=True)
class HistoryRow:
    """A history row (or a progress tick); the fields a phase does not have are None."""

    phase: str
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    train_accuracy: float | None = None
    val_accuracy: float | None = None  # with a validation split only
    l2: float | None = None  # the probe's L2 strength (probe_cv: the one scored; probe: the chosen one)
    cv_accuracy: float | None = None
    iterations: int | None = None  # L-BFGS iterations of the probe's final fit
    converged: bool | None = None
    grad_max: float | None = None
    cv_iterations: int | None = None  # L-BFGS iterations of the cross-validation
    folds: int | None = None  # the folds it was cross-validated on
    note: str | None = None  # why the probe fell back (a class with fewer than 2 images)
    fold: int | None = None  # a k-fold trial's fold (k > 1)
    tick: bool = False  # progress only: a step between two rows (no loss: that needs a host sync)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (records, the probe store): the phase's keys in their order, the unset ones left out."""
        keys = _KEYS.get(self.phase, _TRAIN_KEYS)
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.fold is not None:
            out["fold"] = self.fold
        if self.tick:
            out["tick"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistoryRow:
        """A row as stored; unknown keys are refused (a row of a newer version would lose them)."""
        unknown = set(d) - _NAMES
        if unknown:
            raise ValueError(f"history row with unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**d)

    def in_fold(self, fold: int) -> HistoryRow:
        """This row as a k-fold trial's record keeps it: marked with its fold."""
        return replace(self, fold=fold)


_NAMES = {f.name for f in fields(HistoryRow)}


def tick(phase: str, step: int, steps: int) -> HistoryRow:
    """A live step count between two history rows."""
    return HistoryRow(phase=phase, step=step, steps=steps, tick=True)
