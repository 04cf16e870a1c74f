"""What one search trial asks: the hyperparameter space, the defaults-first trial, the seeds.

Why a module of its own: the search space is declared once (bench/sweep/space.py),
and the experiment may fix some of its hyperparameters ([hparams]) or swap in other
distributions ([space]). `sample_hparams` is the one place these meet, for the real trial and
for the stand-in that finds the defaults the first trial asks. `slot_seed` makes each slot's
sampler a function of (study, data seed, slot), so a resumed or parallel search asks exactly
what an uninterrupted one-worker search would have.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.models.hparams import HParams
from bench.models.kinds import METHODS
from bench.sweep.space import method_space

if TYPE_CHECKING:
    from bench.run_config import RunConfig
    from bench.sweep.experiment import Experiment


class SpaceTrial:
    """What a method's `method_space(trial, spec)` sees: the Optuna trial, with the experiment's
    fixed hyperparameters answered without asking and its [space] distributions swapped in."""

    def __init__(self, trial: Any, fixed: dict[str, Any], space: dict[str, dict]) -> None:
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
        """Ask the trial for `name` from a [space] distribution (a TOML table)."""
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
    """The hyperparameter changes of one trial: the shared space plus the method's own
    (bench/sweep/space.py), the experiment's [space] and [hparams]. The BatchNorm
    policy is fixed ("frozen") unless [search] bn = true; the step budget is never searched."""
    spec = METHODS.get(method)
    fixed = exp.fixed_hparams(method)
    if spec.trains_backbone and not exp.search.bn:
        fixed.setdefault("bn", "frozen")
    space = exp.space_for(method)
    proxy = SpaceTrial(trial, fixed, space)
    changes = dict(method_space(proxy, spec))
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


def candidate_params(exp: Experiment, method: str) -> list[dict[str, Any]]:
    """The configurations a search asks first, in order: the method's defaults, then each of the
    experiment's `[search] candidates` applied to them. A candidate that changes nothing this method
    searches (a backbone multiplier for a frozen row) duplicates an earlier one and is left out, so
    its slot goes to the sampler: every method gets the same number of trials."""
    out = [default_params(exp, method)]
    for cand in exp.search.candidates:
        params = default_params(exp, method, cand)
        if params not in out:
            out.append(params)
    return out


def default_params(exp: Experiment, method: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The searched hyperparameters' values in the method's defaults (where the space contains them).

    Why: with the few trials a CPU grid affords, a search of random draws can miss every good
    region (measured: quick's 4-trial search at 10% chose finetune hyperparameters 20 points
    below the defaults). So every search, for every method alike, spends its first trial on
    the defaults, and TPE learns from it like from any other trial (Optuna's enqueue mechanism)."""
    defaults = HParams().update(**METHODS.get(method).defaults).update(**(changes or {})).update(**exp.fixed_hparams(method))
    probe = _DefaultsTrial(defaults)
    sample_hparams(probe, exp, method)
    return probe.params


def slot_seed(study_name: str, data_seed: int, slot: int) -> int:
    """The sampler seed of one slot of one search: the same whichever process or attempt asks it."""
    return int(hashlib.sha256(f"{study_name}|{data_seed}|{slot}".encode()).hexdigest()[:8], 16)


def sampler(exp: Experiment, study_name: str, data_seed: int, slot: int) -> optuna.samplers.BaseSampler:
    """TPE, seeded per slot (slot_seed), with the experiment's random start."""
    return optuna.samplers.TPESampler(seed=slot_seed(study_name, data_seed, slot), n_startup_trials=exp.startup_trials())


REDUCTION_FACTOR = 2  # with the first rung at half the budget, one rung: the better half of the trials finish


class FloorPruner(optuna.pruners.BasePruner):
    """`inner`, asked only once the study has `floor` finished (complete or pruned) trials.

    Protocol v3: a trial is never pruned against fewer than max(4, trials / 3) finished trials (the
    v2 study's median pruner started after one, so a single noisy reference decided 87 of 100
    prunings). Median's own start-up count is set to the floor too; this wrapper gives the
    multi-fidelity pruners the same rule."""

    def __init__(self, inner: optuna.pruners.BasePruner, floor: int) -> None:
        self.inner, self.floor = inner, floor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return len(finished) >= self.floor and self.inner.prune(study, trial)


def pruner(exp: Experiment, cfg: RunConfig) -> optuna.pruners.BasePruner:
    """The experiment's pruner for a trial of this config.

    The pruner's clock is the optimiser step; it never stops a trial before
    pruner_warmup (>= half) of its budget: slow starters are methods too."""
    total = cfg.hp.steps * cfg.cv_folds * max(1, len(cfg.pool))  # the steps a trial reports over (folds continue one axis)
    first = math.ceil(exp.search.pruner_warmup * total)
    floor = exp.pruner_startup_trials()
    if exp.search.pruner == "median":
        inner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(n_startup_trials=floor, n_warmup_steps=first)
    # Multi-fidelity (methods.md allows it when every method gets it, which the sweep does: one pruner
    # per experiment). The resource is the optimiser step; the first rung is the warm-up, so a trial
    # is never stopped before it either: from there only the best 1/reduction_factor go on.
    elif exp.search.pruner == "halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=REDUCTION_FACTOR)
    elif exp.search.pruner == "hyperband":
        inner = optuna.pruners.HyperbandPruner(min_resource=first, max_resource=total, reduction_factor=REDUCTION_FACTOR)
    else:
        return optuna.pruners.NopPruner()
    return FloorPruner(inner, floor)
