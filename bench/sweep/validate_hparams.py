"""The checks of an experiment file's [hparams] (fixed values) and [space] (search distributions).

Why a module of its own: these two tables are checked against the hyperparameters themselves (every
fixed value, and both ends and every choice of every distribution, must make a valid `HParams`), which
the rest of the file's checks (bench/sweep/validate.py) never need; a value that would fail mid-sweep
fails here, before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from bench.registry import UserError, did_you_mean
from bench.sweep.validate import is_distribution


def check_hparams_space(raw: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """[hparams] (fixed values) and [space] (distributions), all methods or per method: every
    value must make valid hyperparameters, and the step budget is neither fixed per method nor searched."""
    from bench.models.hparams import HParams
    from bench.models.kinds import METHODS

    hp_fields = {f.name for f in fields(HParams)}
    hparams = _per_method_table(raw.get("hparams", {}), "hparams", source, hp_fields, METHODS.names(), lambda v, w: v)
    space = _per_method_table(raw.get("space", {}), "space", source, hp_fields, METHODS.names(), _check_distribution(source))
    # Fixed values must make valid hyperparameters.
    for scope, values in [("hparams", {k: v for k, v in hparams.items() if not isinstance(v, dict)})] + [
        (f"hparams.{m}", v) for m, v in hparams.items() if isinstance(v, dict)
    ]:
        try:
            HParams().update(**values)
        except (UserError, TypeError) as exc:
            raise UserError(f"{source}: {scope}: {exc}") from None
        if "steps" in values:
            raise UserError(f"{source}: {scope}.steps: the step budget is one per cell for every method; use top-level steps")
    for scope, _dist in _all_distributions(space):
        if scope.endswith(".steps"):
            raise UserError(f"{source}: {scope}: the step budget is not searched (one budget per cell for every method)")
    return hparams, space


def _per_method_table(table: Any, key: str, source: str, hp_fields: set, methods: list, check: Any) -> dict:
    """Table [key]: hyperparameters for every method, or [key.METHOD] tables for one; `check` each value."""
    if not isinstance(table, dict):
        raise UserError(f"{source}: [{key}] must be a table")
    out: dict[str, Any] = {}
    for k, v in table.items():
        if k in methods:
            if not isinstance(v, dict):
                raise UserError(f"{source}: [{key}.{k}] must be a table of hyperparameters")
            for f, fv in v.items():
                if f not in hp_fields:
                    raise UserError(f"{source}: unknown hyperparameter '{key}.{k}.{f}'{did_you_mean(f, sorted(hp_fields))}")
                check(fv, f"{key}.{k}.{f}")
            out[k] = dict(v)
        elif k in hp_fields:
            check(v, f"{key}.{k}")
            out[k] = v
        else:
            raise UserError(
                f"{source}: unknown name '{key}.{k}'{did_you_mean(k, sorted(hp_fields) + methods)}; "
                "expected a hyperparameter or a method name"
            )
    return out


def _check_distribution(source: str) -> Any:
    """The check of one [space] entry: a range (low, high, log or step) or choices, every value valid."""

    def _check_values(name: str, values: list, where: str) -> None:
        """Every value a distribution can give must make valid hyperparameters (checked now, not mid-sweep)."""
        from bench.models.hparams import HParams

        for v in values:
            if isinstance(v, dict | list):
                raise UserError(f"{source}: {where}: {v!r} is not a value")
            try:
                HParams().update(**{name: v})
            except (UserError, TypeError, ValueError) as exc:
                raise UserError(f"{source}: {where}: {v!r} is not a valid value ({exc})") from None

    def check(d: Any, where: str) -> None:
        name = where.rsplit(".", 1)[-1]
        if not isinstance(d, dict):
            raise UserError(f"{source}: {where} must be a table: {{ low = .., high = .., log = true }} or {{ choices = [..] }}")
        keys = set(d)
        if "choices" in keys:
            if keys != {"choices"} or not isinstance(d["choices"], list) or not d["choices"]:
                raise UserError(f"{source}: {where}: a categorical distribution is {{ choices = [..] }} with a non-empty list")
            _check_values(name, d["choices"], where)
            return
        if not {"low", "high"} <= keys or keys - {"low", "high", "log", "step"}:
            raise UserError(f"{source}: {where}: a range distribution has low, high and optionally log, step; got {sorted(keys)}")
        lo, hi = d["low"], d["high"]
        if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in (lo, hi)) or not lo <= hi:
            raise UserError(f"{source}: {where}: need finite numbers low <= high, got {lo!r}, {hi!r}")
        if "log" in d and not isinstance(d["log"], bool):
            raise UserError(f"{source}: {where}: log must be true or false (a TOML boolean, unquoted), got {d['log']!r}")
        if d.get("log") and lo <= 0:
            raise UserError(f"{source}: {where}: a log distribution needs low > 0, got {lo!r}")
        if "step" in d:
            step = d["step"]
            if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step) or step <= 0:
                raise UserError(f"{source}: {where}: step must be a positive number, got {step!r}")
            if d.get("log"):
                raise UserError(f"{source}: {where}: a distribution has step or log, not both")
            if isinstance(lo, int) and isinstance(hi, int) and not isinstance(step, int):
                raise UserError(f"{source}: {where}: an integer range needs an integer step, got {step!r}")
        _check_values(name, [lo, hi], where)

    return check


def _all_distributions(space: dict) -> list[tuple[str, dict]]:
    """(where, distribution) of every entry of [space], for all methods and per method."""
    out = []
    for k, v in space.items():
        if is_distribution(v):
            out.append((f"space.{k}", v))
        else:
            out.extend((f"space.{k}.{f}", d) for f, d in v.items())
    return out
