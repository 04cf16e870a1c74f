"""The Optuna studies of an experiment: their names, their attributes, and the settings check.

- Per cell (backbone, method, recipe, fraction) a *search study* (the contract's name
  "{experiment}/{backbone}/{method}/{recipe}/{fraction:g}", plus "/seed{s}" per seed when the
  search is per seed), its attributes saying what it searches and under which settings.
- Per cell a *finals study* ("{experiment}:final/..."): one trial per final run, named by the
  run id (user_attr run_id); the finished record (JSON) lives on the trial, so `runs.csv`,
  `records/` and the summary can always be rebuilt from the storage.

Finding a study never writes; `ensure_study` (the worker's) creates and completes one.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import optuna

from bench.budget import PROTOCOL
from bench.records import Cell
from bench.registry import UserError
from bench.sweep.claims import create_study, study_id

if TYPE_CHECKING:
    from bench.sweep.experiment import Experiment


def search_name(exp: Experiment, cell: Cell, seed: int) -> str:
    """The search study that chooses seed `seed`'s hyperparameters (the cell's own when shared)."""
    return cell.study_name(exp.name, seed if exp.search.mode == "per_seed" else None)


def _cell_attrs(exp: Experiment, cell: Cell) -> dict[str, Any]:
    return {
        "experiment": exp.name,
        "backbone": cell.backbone,
        "method": cell.method,
        "recipe": cell.recipe,
        "fraction": cell.fraction,
    }


def search_attrs(exp: Experiment, cell: Cell, seed: int) -> dict[str, Any]:
    """What a search study records about itself (report, check_settings, optuna-dashboard read it)."""
    return {
        **_cell_attrs(exp, cell),
        "kind": "search",
        "seed": seed,
        "search_mode": exp.search.mode,
        "pool": list(exp.pool_seeds),
        "protocol": PROTOCOL,
        "settings": json.loads(json.dumps(exp.search_settings(cell))),
    }


def finals_attrs(exp: Experiment, cell: Cell) -> dict[str, Any]:
    """What a finals study records about itself."""
    return {
        **_cell_attrs(exp, cell),
        "kind": "final",
        "protocol": PROTOCOL,
    }


def find_study(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    """The id of study `name`, or None when nobody created it yet (read-only)."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def ensure_study(storage: optuna.storages.BaseStorage, name: str, attrs: dict[str, Any]) -> int:
    """Study `name`, created if missing, with every attribute of `attrs` it lacks written.

    The attributes are written one at a time, "protocol" first: a process killed in between
    leaves a study that the next start completes (check_settings lets such a study through)."""
    try:
        sid = storage.get_study_id_from_name(name)
        have = storage.get_study_user_attrs(sid)
    except KeyError:
        sid, have = create_study(storage, name), {}
    for k in sorted(attrs, key=lambda k: k != "protocol"):
        if k not in have:
            storage.set_study_user_attr(sid, k, attrs[k])
    return sid


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
        if "protocol" not in s.user_attrs and not storage.get_all_trials(study_id(s), deepcopy=False):
            # created, then killed before its attributes were written (they are one journal line each):
            # no result in it under any protocol; ensure_study completes it
            continue
        if s.user_attrs.get("protocol") != PROTOCOL:
            raise UserError(
                f"experiment '{exp.name}' in this storage was written under protocol v{s.user_attrs.get('protocol', 1)} "
                f"(study {name}); new sweeps (protocol v{PROTOCOL}) do not extend it: use another experiment name (--name) "
                "or results folder; report and compare still read the old one"
            )
        if "settings" in s.user_attrs:
            _check_same_settings(exp, cells, s.user_attrs)


def _check_same_settings(exp: Experiment, cells: dict[tuple, Cell], attrs: dict[str, Any]) -> None:
    """A search study's recorded settings against the experiment's for the same cell."""
    cell = cells.get((attrs.get("backbone"), attrs.get("method"), attrs.get("recipe"), float(attrs.get("fraction", -1))))
    if cell is None:
        return
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
