"""The checks an experiment file passes before anything runs.

Why: every check has to run before a single file is written or a single epoch trained (a
multi-day grid that dies on a typo in cell 40 wastes a day). Every problem is a `UserError`:
one line naming the key, the value and the remedy, exit code 2. The checks run in the order
`bench.sweep.experiment.resolve` calls them, so a file with several mistakes is told about
the first one in the file's reading order.

The values a file may hold are named here (recipes, search modes, pruners, ...), and the keys of
protocol v1 (epoch budgets), so an old file fails with the remedy instead of "unknown key".
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import fields, replace
from typing import Any

from bench.models.hparams import MAX_STEPS
from bench.names import RECIPES
from bench.registry import UserError, did_you_mean
from bench.run_config import PRECISIONS as RUN_PRECISIONS

SEARCH_MODES = ("pooled", "per_seed", "shared")
FIRST_TRIALS = ("defaults", "sampled")
# Protocol v1 keys: budgets were epochs. Named here so an old file fails with the remedy.
V1_KEYS = {
    "max_epochs": "budgets are optimiser steps now (protocol v2): remove max_epochs; the step rule applies, or set steps = N",
}
V1_SEARCH_KEYS = {
    "pruner_warmup_epochs": "the pruner never stops a trial before half its steps now: use search.pruner_warmup (>= 0.5)",
    "epochs": "epochs are not searched in protocol v2 (budgets are steps): remove search.epochs",
    "min_epochs": "epochs are not searched in protocol v2 (budgets are steps): remove search.min_epochs",
}
PRECISIONS = ("auto", *RUN_PRECISIONS)  # auto: the device's default (bench/run_config.py)
PRUNERS = ("median", "halving", "hyperband", "none")
GRID_KEYS = ("backbones", "methods", "recipes", "fractions")
MAX_SEEDS = 1000  # a count beyond this is a typo, not an experiment
MAX_SEED = 2**32 - 1  # what every generator the suite seeds accepts
MAX_TRIALS = 10_000  # per search: more is a typo (the slots of a search are listed, so 10^15 exhausted memory)
MAX_PARALLEL = 256  # worker processes one `sweep --parallel` starts on one machine
MAX_NAME_BYTES = 100  # an experiment's name: a folder name and the prefix of every study's name
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "0", "1")


def is_distribution(v: Any) -> bool:
    """A [space] value that is a distribution (not a method's table of them)."""
    return isinstance(v, dict) and ("choices" in v or "low" in v or "high" in v)


# ---------------------------------------------------------------- the top level


def check_v1_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Refuse protocol v1 keys with their remedy; `search = "per_seed"` (the mode alone) becomes a table."""
    for key, why in V1_KEYS.items():
        if key in raw:
            raise UserError(f"{source}: '{key}' is a protocol v1 key: {why}")
    if isinstance(raw.get("search"), str):  # `search = "per_seed"`: the mode alone
        raw = {**raw, "search": {"mode": raw["search"]}}
    if isinstance(raw.get("search"), dict):
        for key, why in V1_SEARCH_KEYS.items():
            if key in raw["search"]:
                raise UserError(f"{source}: 'search.{key}' is a protocol v1 key: {why}")
    return raw


def check_name(raw: dict[str, Any], source: str, top_keys: set[str]) -> str:
    """No unknown top-level key; the experiment's name, usable as a folder and a study prefix."""
    unknown = set(raw) - top_keys
    if unknown:
        key = sorted(unknown)[0]
        raise UserError(f"{source}: unknown key '{key}'{did_you_mean(key, sorted(top_keys))}")
    name = string(raw, "name", source)
    if any(unicodedata.category(c)[0] == "C" for c in name):
        # a newline, tab or escape sequence would land in a folder name, every study name and the terminal
        raise UserError(f"{source}: experiment name {ascii(name)} contains control characters; use letters, digits, - and _")
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise UserError(f"{source}: experiment name '{name}' must be non-empty without '/', '\\' or ':'")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UserError(
            f"{source}: experiment name '{name[:20]}...' is {len(name.encode())} bytes long; at most {MAX_NAME_BYTES} "
            "(it names the results folder and every study)"
        )
    return name


# ---------------------------------------------------------------- the grid


def backbone(b: Any, where: str, source: str) -> str:
    from bench.models.backbones import BACKBONES, get_backbone

    if not isinstance(b, str) or not b:
        raise UserError(f"{source}: {where} must be backbone names, got {b!r}")
    if b.startswith("timm:"):
        get_backbone(b)  # raises with similar names when timm has no such model
        return b
    if b not in BACKBONES:
        raise UserError(
            f"{source}: unknown backbone '{b}'{did_you_mean(b, BACKBONES.names())}; "
            f"valid: {', '.join(BACKBONES.names())}, timm:<name>"
        )
    return b


def method(m: Any, where: str, source: str) -> str:
    from bench.models.kinds import METHODS
    from bench.names import method_name

    if isinstance(m, dict):
        extra = set(m) - {"name", "branch"}
        if extra or "name" not in m:
            raise UserError(f"{source}: {where}: a method table has keys name and branch, got {sorted(m)}")
        m = method_name(str(m["name"]), m.get("branch"))
    if not isinstance(m, str) or not m:
        raise UserError(f"{source}: {where} must be method names, got {m!r}")
    if m not in METHODS:
        raise UserError(f"{source}: unknown method '{m}'{did_you_mean(m, METHODS.names())}; valid: {', '.join(METHODS.names())}")
    return METHODS.canonical(m)


def recipe(r: Any, where: str, source: str) -> str:
    from bench.names import recipe_name

    r = recipe_name(r) if isinstance(r, str) else r
    if r not in RECIPES:
        raise UserError(
            f"{source}: unknown recipe {r!r}{did_you_mean(str(r), list(RECIPES))} in {where}; valid: {', '.join(RECIPES)}"
        )
    return r


def fraction(f: Any, where: str, source: str) -> float:
    if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f):
        raise UserError(f"{source}: {where}: fraction {f!r} is not a number")
    if not 0.0 < f <= 1.0:
        raise UserError(f"{source}: {where}: fraction {f:g} is outside (0, 1]; use e.g. 0.01 for 1% of the labels")
    return float(f)


def grid_list(d: dict, key: str, conv: Any, where: str, source: str, required: bool = True) -> tuple:
    """One of the grid's lists (a single value is a list of one), each item checked, none twice."""
    if key not in d:
        if required:
            raise UserError(f"{source}: '{key}' is missing")
        return ()
    v = d[key]
    items = v if isinstance(v, list) else [v]
    if not items:
        raise UserError(f"{source}: '{key}' is empty")
    out = tuple(conv(x, f"{where}{key}", source) for x in items)
    dupes = sorted({x for x in out if out.count(x) > 1}, key=str)
    if dupes:
        raise UserError(f"{source}: '{key}' lists {dupes[0]!r} twice")
    return out


def grid_lists(raw: dict[str, Any], source: str) -> tuple[tuple, tuple, tuple, tuple]:
    """backbones, methods, recipes (default: tuned), fractions."""
    backbones = grid_list(raw, "backbones", backbone, "", source)
    methods = grid_list(raw, "methods", method, "", source)
    recipes = grid_list(raw, "recipes", recipe, "", source) if "recipes" in raw else ("tuned",)
    fractions = grid_list(raw, "fractions", fraction, "", source)
    return backbones, methods, recipes, fractions


def check_flag_list(key: str, values: list[Any]) -> list[Any]:
    """A grid list given on the command line (`--backbones a,b`): checked as the flag's, so a typo there is
    blamed on the flag, not on the experiment file it overrides; names come back canonical."""
    conv = {"backbones": backbone, "methods": method, "recipes": recipe, "fractions": fraction}[key]
    return list(grid_list({key: values}, key, conv, "", f"--{key}"))


def grid_blocks(raw: dict[str, Any], key: str, source: str) -> tuple[dict[str, Any], ...]:
    """[[include]] or [[exclude]]: matrix-style blocks of the grid's keys."""
    return tuple(_grid_block(b, i, key, source) for i, b in enumerate(_blocks(raw, key, source)))


def check_seeds(raw: dict[str, Any], source: str) -> tuple[int, ...]:
    """`seeds`: a count (0, 1, ..., n-1) or a list of distinct seeds every generator accepts."""
    seeds_raw = raw.get("seeds", 3)
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool) and seeds_raw > MAX_SEEDS:
        raise UserError(f"{source}: seeds = {seeds_raw} is more than {MAX_SEEDS} seeds; give a count up to {MAX_SEEDS}")
    if isinstance(seeds_raw, bool) or not isinstance(seeds_raw, int | list):
        raise UserError(f"{source}: seeds must be a count or a list of integers, got {seeds_raw!r}")
    if isinstance(seeds_raw, int):
        if seeds_raw <= 0:
            raise UserError(f"{source}: seeds must be a positive count, got {seeds_raw}")
        return tuple(range(seeds_raw))
    if not seeds_raw or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds_raw):
        raise UserError(f"{source}: seeds must be a non-empty list of integers in 0..{MAX_SEED}, got {seeds_raw!r}")
    if len(set(seeds_raw)) != len(seeds_raw):
        raise UserError(f"{source}: seeds lists a seed twice: {seeds_raw}")
    return tuple(seeds_raw)


def check_budgets(raw: dict[str, Any], source: str) -> tuple[int, int | None, int]:
    """trials (per tuned cell and seed), steps (None: the protocol's rule), cv_folds."""
    trials = _positive_int(raw, "trials", 8, source, MAX_TRIALS)
    steps = None if raw.get("steps") is None else _positive_int(raw, "steps", 500, source, MAX_STEPS)
    cv = _positive_int(raw, "cv_folds", 1, source)
    return trials, steps, cv


def check_resolution(raw: dict[str, Any], backbones: tuple, source: str) -> int | dict[str, int] | None:
    """`resolution`: pixels for every backbone, or a table per backbone of this experiment."""
    resolution = raw.get("resolution")
    if resolution is not None:
        if isinstance(resolution, dict):
            for b, px in resolution.items():
                if b not in backbones and not any(b in blk.get("backbones", ()) for blk in raw.get("include", [])):
                    raise UserError(f"{source}: resolution is given for '{b}', which is not a backbone of this experiment")
                _check_resolution(px, f"resolution.{b}", source)
        else:
            _check_resolution(resolution, "resolution", source)
    return resolution


def check_runtime(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """precision, device, compile, pretrained, val_fraction: how each run trains."""
    precision = string(raw, "precision", source, "auto")
    if precision not in PRECISIONS:
        raise UserError(f"{source}: precision '{precision}' is not one of: {', '.join(PRECISIONS)}")
    device = string(raw, "device", source, "auto")
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"{source}: device '{device}' is not one of: auto, cpu, cuda, cuda:N")
    compile_ = raw.get("compile", False)
    if not isinstance(compile_, bool | str) or (isinstance(compile_, str) and compile_.lower() in BOOL_WORDS):
        raise UserError(
            f"{source}: compile must be true, false (TOML booleans, unquoted), a torch.compile mode (reduce-overhead, ...) "
            f"or a backend name, got {compile_!r}"
        )
    pretrained = raw.get("pretrained", True)
    if not isinstance(pretrained, bool):
        raise UserError(f"{source}: pretrained must be true or false, got {pretrained!r}")
    numerics = {k: raw.get(k, False) for k in ("deterministic", "tf32")}
    for key, value in numerics.items():
        if not isinstance(value, bool):
            raise UserError(f"{source}: {key} must be true or false (TOML booleans, unquoted), got {value!r}")
    val_fraction = raw.get("val_fraction", 0.2)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise UserError(f"{source}: val_fraction must be in (0, 1), got {val_fraction!r}")
    return {
        "precision": precision,
        "device": device,
        "compile": compile_,
        "pretrained": pretrained,
        "val_fraction": float(val_fraction),
        **numerics,
    }


# ---------------------------------------------------------------- [search], [workers]


def check_search(raw: dict[str, Any], source: str, cls: type) -> Any:
    """[search] as a `cls` (bench.sweep.experiment.Search), every value checked."""
    search = _dataclass_table(cls, raw.get("search", {}), "search", source)
    if search.mode not in SEARCH_MODES:
        raise UserError(
            f"{source}: search mode {search.mode!r}{did_you_mean(str(search.mode), list(SEARCH_MODES))} "
            f"is not one of: {', '.join(SEARCH_MODES)}"
        )
    if search.pruner not in PRUNERS:
        raise UserError(f"{source}: search.pruner '{search.pruner}' is not one of: {', '.join(PRUNERS)}")
    for key in ("startup_trials", "pruner_startup_trials"):
        v = getattr(search, key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise UserError(f"{source}: search.{key} must be a positive integer, got {v!r}")
    w = search.pruner_warmup
    if isinstance(w, bool) or not isinstance(w, int | float) or not 0.5 <= w <= 1.0:
        raise UserError(
            f"{source}: search.pruner_warmup must be a fraction of the steps in [0.5, 1] "
            f"(the protocol never prunes a trial before half its budget), got {w!r}"
        )
    if not isinstance(search.bn, bool):
        raise UserError(f"{source}: search.bn must be true or false, got {search.bn!r}")
    if search.first_trial not in FIRST_TRIALS:
        raise UserError(f"{source}: search.first_trial {search.first_trial!r} is not one of: {', '.join(FIRST_TRIALS)}")
    if search.mode == "pooled" and search.first_trial != "defaults":
        raise UserError(
            f"{source}: a pooled search always has each method's defaults as its first candidate; remove search.first_trial"
        )
    pool = search.pool
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise UserError(f"{source}: search.pool must be a positive number of seeds, got {pool!r}")
    return replace(search, candidates=_candidates(search.candidates, source))


def _candidates(raw: Any, source: str) -> tuple[dict[str, Any], ...]:
    """search.candidates: a list of tables, each changes to a method's defaults that make valid hyperparameters."""
    from bench.models.hparams import HParams

    if not isinstance(raw, list | tuple) or not all(isinstance(c, dict) for c in raw):
        raise UserError(f"{source}: search.candidates must be a list of tables, e.g. [{{ backbone_lr_mult = 0.1 }}]")
    for i, cand in enumerate(raw):
        if not cand:
            raise UserError(f"{source}: search.candidates[{i}] is empty (the defaults are always the first candidate)")
        if "steps" in cand:
            raise UserError(f"{source}: search.candidates[{i}].steps: the step budget is one per cell for every method")
        try:
            HParams().update(**cand)
        except (UserError, TypeError) as exc:
            raise UserError(f"{source}: search.candidates[{i}]: {exc}") from None
    return tuple(dict(c) for c in raw)


def check_pool(search: Any, n_seeds: int, trials: int, source: str) -> None:
    """What depends on the seeds and trials: a pool within the seeds, and the protocol's pruning floor."""
    if search.mode == "pooled" and search.pool is not None and search.pool > n_seeds:
        raise UserError(f"{source}: search.pool = {search.pool} pools more seeds than the experiment has ({n_seeds})")
    floor = max(4, math.ceil(trials / 3))
    startup = search.pruner_startup_trials
    if startup is not None and startup < floor and search.pruner != "none":
        raise UserError(
            f"{source}: search.pruner_startup_trials = {startup}: protocol v3 prunes a trial only against at least "
            f"max(4, trials / 3) = {floor} finished trials; remove it (the floor is the default) or set it >= {floor}"
        )


def check_stats(raw: dict[str, Any], source: str, cls: type) -> Any:
    """[stats] as a `cls` (bench.sweep.experiment.Stats): comparisons "METHOD vs BASELINE", a margin in (0, 1)."""
    stats = _dataclass_table(cls, raw.get("stats", {}), "stats", source)
    primary = stats.primary
    if isinstance(primary, str) or not isinstance(primary, list | tuple) or not primary:
        raise UserError(f'{source}: stats.primary must be a non-empty list such as ["sft* vs finetune"], got {primary!r}')
    for item in primary:
        parts = item.split(" vs ") if isinstance(item, str) else []
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise UserError(f'{source}: stats.primary: {item!r} is not "METHOD vs BASELINE" (e.g. "sft* vs finetune")')
    margin = stats.margin
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin < 1:
        raise UserError(f"{source}: stats.margin must be an accuracy fraction in (0, 1) (0.01 = 1 point), got {margin!r}")
    alpha = stats.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise UserError(f"{source}: stats.alpha must lie in (0, 1), got {alpha!r}")
    return replace(stats, primary=tuple(p.strip() for p in primary), margin=float(margin), alpha=float(alpha))


def check_probe(raw: dict[str, Any], source: str) -> Any:
    """[probe]: the linear probe's settings (bench.models.hparams.ProbeSpec), every value checked."""
    from bench.models.hparams import ProbeSpec

    table = raw.get("probe", {})
    if not isinstance(table, dict):
        raise UserError(f"{source}: [probe] must be a table")
    _known_keys(table, "probe", [f.name for f in fields(ProbeSpec)], source)
    if "l2_grid" in table and not isinstance(table["l2_grid"], list):
        raise UserError(f"{source}: probe.l2_grid must be a list of positive numbers")
    try:
        return ProbeSpec.from_table(table)
    except (UserError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: [probe]: {exc}") from None


def check_workers(raw: dict[str, Any], source: str, cls: type) -> Any:
    """[workers] as a `cls` (bench.sweep.experiment.Workers): a heartbeat well inside the stale limit."""
    workers = _dataclass_table(cls, raw.get("workers", {}), "workers", source)
    for key in ("heartbeat_seconds", "stale_after_seconds"):
        v = getattr(workers, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise UserError(f"{source}: workers.{key} must be a positive, finite number of seconds, got {v!r}")
    if not (0 < workers.heartbeat_seconds < workers.stale_after_seconds):
        raise UserError(f"{source}: workers need 0 < heartbeat_seconds < stale_after_seconds")
    return workers


# ---------------------------------------------------------------- helpers


def string(raw: dict, key: str, source: str, default: str | None = None) -> str:
    v = raw.get(key, default)
    if not isinstance(v, str):
        raise UserError(f"{source}: {key} must be a string, got {v!r}")
    return v


def _positive_int(raw: dict, key: str, default: int, source: str, most: int | None = None) -> int:
    """A positive integer (at most `most`: beyond it a value is a typo that would exhaust the machine)."""
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"{source}: {key} must be a positive integer, got {v!r}")
    if most is not None and v > most:
        raise UserError(f"{source}: {key} must be at most {most:,}, got {v:,}")
    return v


def _check_resolution(px: Any, where: str, source: str) -> None:
    if isinstance(px, bool) or not isinstance(px, int) or not 8 <= px <= 1024:
        raise UserError(f"{source}: {where} must be an integer number of pixels in 8..1024, got {px!r}")


def _known_keys(table: dict, key: str, known: list[str], source: str) -> None:
    """Every key of table [key] is one of `known`: a typo is named, with the nearest valid key."""
    for k in table:
        if k not in known:
            raise UserError(f"{source}: unknown key '{key}.{k}'{did_you_mean(k, known)}; valid: {', '.join(known)}")


def _dataclass_table(cls: type, table: Any, key: str, source: str) -> Any:
    """Table [key] as a `cls`, each key one of its fields."""
    if not isinstance(table, dict):
        raise UserError(f"{source}: [{key}] must be a table")
    _known_keys(table, key, [f.name for f in fields(cls)], source)
    return cls(**table)


def _blocks(raw: dict, key: str, source: str) -> list[dict]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(b, dict) for b in v):
        raise UserError(f"{source}: [[{key}]] must be an array of tables")
    return v


def _grid_block(block: dict, i: int, key: str, source: str) -> dict:
    conv = {"backbones": backbone, "methods": method, "recipes": recipe, "fractions": fraction}
    out = {}
    for k, v in block.items():
        if k not in conv:
            raise UserError(
                f"{source}: unknown key '{key}[{i}].{k}'{did_you_mean(k, list(GRID_KEYS))}; valid: {', '.join(GRID_KEYS)}"
            )
        items = v if isinstance(v, list) else [v]
        if not items:
            raise UserError(f"{source}: '{key}[{i}].{k}' is empty")
        out[k] = tuple(conv[k](x, f"{key}[{i}].{k}", source) for x in items)
    if not out:
        raise UserError(f"{source}: [[{key}]] number {i + 1} is empty")
    return out
