"""An experiment is data: a TOML file describing a grid, loaded into one frozen dataclass.

Why a separate module: the sweep, its CLI, the tests and the written `config.toml` all
need the same parsing and the same validation, and every check has to run before a
single file is written or a single epoch trained (a multi-day grid that dies on a typo
in cell 40 wastes a day). Every problem is a `UserError`: one line, exit code 2.

    name = "quick"                      # default: the file's stem
    backbones = ["efficientnet_lite0"]
    methods = ["finetune", "sft", "sft-mlp"]   # or { name = "sft", branch = "mlp" }
    recipes = ["tuned"]                 # "seed": the article's fixed recipe, no search
    fractions = [0.01, 0.1]
    seeds = 3                           # a count (0, 1, 2) or a list [0, 1, 2]
    trials = 4                          # Optuna trials per tuned cell (per seed), the same for every method
    steps = 200                         # optional: a fixed step budget (default: the protocol's rule, >= 500)
    resolution = 32                     # or { efficientnet_lite0 = 64 }; default: the backbone's

    [search]                            # mode (per_seed | shared), sampler, pruner, BN-policy search
    [hparams]                           # fixed hyperparameters (all methods, or [hparams.<method>])
    [space]                             # replace or add search distributions ([space.<method>])
    [[include]] / [[exclude]]           # extra or removed cells, matrix style
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from bench.budget import PROTOCOL
from bench.records import Cell
from bench.registry import UserError, did_you_mean
from bench.registry import check_writable as registry_check_writable

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
RECIPES = ("tuned", "seed")
SEARCH_MODES = ("per_seed", "shared")
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
PRECISIONS = ("auto", "fp32", "bf16")
PRUNERS = ("median", "none")
GRID_KEYS = ("backbones", "methods", "recipes", "fractions")
MAX_SEEDS = 1000  # a count beyond this is a typo, not an experiment
MAX_SEED = 2**32 - 1  # what every generator the suite seeds accepts
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "0", "1")


@dataclass(frozen=True)
class Search:
    """How every tuned cell is searched: identical for every method (methods.md)."""

    mode: str = "per_seed"  # per_seed: each seed searches on its own subset; shared: seed 0's best for all
    startup_trials: int | None = None  # TPE's random start; None: min(10, max(2, trials // 3))
    pruner: str = "median"
    pruner_startup_trials: int | None = None  # None: min(5, max(1, trials // 4))
    pruner_warmup: float = 0.5  # fraction of a trial's steps never pruned (the protocol: at least half)
    bn: bool = False  # search the BatchNorm policy (frozen, train) for every method that trains the backbone
    first_trial: str = "defaults"  # defaults: every search's first trial is the method's defaults; sampled: TPE's


@dataclass(frozen=True)
class Workers:
    """Liveness of the processes sharing one storage (see bench/sweep/, "claims")."""

    heartbeat_seconds: float = 30.0
    stale_after_seconds: float = 180.0  # a RUNNING claim older than this without a heartbeat is free again


@dataclass(frozen=True)
class Experiment:
    name: str
    backbones: tuple[str, ...]
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    recipes: tuple[str, ...] = ("tuned",)
    trials: int = 8
    steps: int | None = None  # a fixed step budget for every cell; None: the protocol's rule (bench/budget.py)
    cv_folds: int = 1  # k >= 2: trial scores are k-fold cross-validated on the labelled subset
    resolution: int | dict[str, int] | None = None
    pretrained: bool = True
    precision: str = "auto"
    device: str = "auto"
    compile: bool | str = False  # torch.compile the end-to-end phase (speed only: not part of any run id)
    val_fraction: float = 0.2
    data_dir: str = "data"
    results_dir: str = "results"
    storage: str = ""  # "": the journal file R/E/optuna.journal; else an SQLAlchemy URL
    description: str = ""
    search: Search = field(default_factory=Search)
    workers: Workers = field(default_factory=Workers)
    hparams: dict[str, Any] = field(default_factory=dict)  # field -> value, or method -> {field: value}
    space: dict[str, Any] = field(default_factory=dict)  # field -> distribution, or method -> {field: distribution}
    include: tuple[dict[str, Any], ...] = ()
    exclude: tuple[dict[str, Any], ...] = ()

    # ------------------------------------------------------------ derived

    @property
    def data_seed(self) -> int:
        """The seed whose labelled subset a shared search tunes on (the first of the list)."""
        return self.seeds[0]

    @property
    def search_seeds(self) -> tuple[int, ...]:
        """The seeds that search: every seed (per_seed), or the first alone (shared)."""
        return self.seeds if self.search.mode == "per_seed" else (self.data_seed,)

    def searched_by(self, seed: int) -> int:
        """Whose search chooses the hyperparameters of seed `seed`'s final run."""
        return seed if self.search.mode == "per_seed" else self.data_seed

    @property
    def out_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def resolution_for(self, backbone: str) -> int | None:
        if isinstance(self.resolution, dict):
            return self.resolution.get(backbone)
        return self.resolution

    def startup_trials(self) -> int:
        s = self.search.startup_trials
        return s if s is not None else min(10, max(2, self.trials // 3))

    def pruner_startup_trials(self) -> int:
        s = self.search.pruner_startup_trials
        return s if s is not None else min(5, max(1, self.trials // 4))

    def fixed_hparams(self, method: str) -> dict[str, Any]:
        """Fixed hyperparameters of a tuned cell: all-method values, then the method's own."""
        out = {k: v for k, v in self.hparams.items() if not isinstance(v, dict)}
        out.update(self.hparams.get(method, {}))
        return out

    def space_for(self, method: str) -> dict[str, dict]:
        out = {k: v for k, v in self.space.items() if _is_distribution(v)}
        out.update(self.space.get(method, {}))
        return out

    def cells(self) -> list[Cell]:
        """The grid: the cross product of the top-level lists, plus [[include]], minus [[exclude]]."""
        out: list[Cell] = []
        blocks = [{}] + list(self.include)
        for block in blocks:
            lists = {k: block.get(k, getattr(self, k)) for k in GRID_KEYS}
            for b in lists["backbones"]:
                for m in lists["methods"]:
                    for r in lists["recipes"]:
                        for f in lists["fractions"]:
                            cell = Cell(b, m, r, float(f))
                            if cell not in out and not any(_matches(cell, ex) for ex in self.exclude):
                                out.append(cell)
        return out

    def search_settings(self, cell: Cell) -> dict[str, Any]:
        """Everything besides the trial budget that changes a cell's search: stored on its study,
        so a rerun with other settings under the same name is refused instead of mixed in."""
        return {
            "protocol": PROTOCOL,
            "resolution": self.resolution_for(cell.backbone),
            "pretrained": self.pretrained,
            "val_fraction": self.val_fraction,
            "steps": self.steps,
            "cv_folds": self.cv_folds,
            "search": asdict(self.search),
            "hparams": self.fixed_hparams(cell.method),
            "space": self.space_for(cell.method),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["include"] = list(self.include)
        d["exclude"] = list(self.exclude)
        return d


def _matches(cell: Cell, block: dict[str, Any]) -> bool:
    attr = {"backbones": cell.backbone, "methods": cell.method, "recipes": cell.recipe, "fractions": cell.fraction}
    return all(attr[k] in block[k] for k in GRID_KEYS if k in block)


def _is_distribution(v: Any) -> bool:
    return isinstance(v, dict) and ("choices" in v or "low" in v or "high" in v)


# ---------------------------------------------------------------- loading


TOP_KEYS = {f.name for f in fields(Experiment)}


def find_config(config: str | Path | None, experiment: str | None) -> Path:
    """`--config PATH`, `--experiment NAME` (./experiments, then the suite's), or the default."""
    if config is not None and experiment is not None:
        raise UserError("give either --config or --experiment, not both")
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise UserError(f"experiment file {path} does not exist")
        return path
    name = experiment or "default"
    candidates = [Path("experiments") / f"{name}.toml", EXPERIMENTS_DIR / f"{name}.toml"]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted({p.stem for d in (Path("experiments"), EXPERIMENTS_DIR) if d.is_dir() for p in d.glob("*.toml")})
    raise UserError(f"unknown experiment '{name}'{did_you_mean(name, known)}; known: {', '.join(known) or 'none'}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: not UTF-8 text (byte {exc.start}); is it a binary file?") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    raw.setdefault("name", path.stem)
    return raw


def parse_fractions(text: str) -> list[float]:
    """`--fractions 0.01,0.1,1.0` (percent signs allowed: `1%,10%`)."""
    out = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            raise UserError(f"--fractions '{text}' has an empty item; write e.g. 0.01,0.1,1.0")
        try:
            out.append(float(item[:-1]) / 100 if item.endswith("%") else float(item))
        except ValueError:
            raise UserError(f"--fractions: '{item}' is not a number; write e.g. 0.01,0.1,1.0") from None
    return out


def parse_names(text: str, flag: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    if any(not n for n in names):
        raise UserError(f"{flag} '{text}' has an empty item; write e.g. a,b")
    return names


def resolve(raw: dict[str, Any], source: str = "experiment") -> Experiment:
    """Validate a raw TOML dict (flags already merged in) into an Experiment, or raise UserError."""
    from bench.models.backbones import BACKBONES, get_backbone
    from bench.models.methods import METHODS, HParams, method_name

    for key, why in V1_KEYS.items():
        if key in raw:
            raise UserError(f"{source}: '{key}' is a protocol v1 key: {why}")
    if isinstance(raw.get("search"), str):  # `search = "per_seed"`: the mode alone
        raw = {**raw, "search": {"mode": raw["search"]}}
    if isinstance(raw.get("search"), dict):
        for key, why in V1_SEARCH_KEYS.items():
            if key in raw["search"]:
                raise UserError(f"{source}: 'search.{key}' is a protocol v1 key: {why}")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise UserError(f"{source}: unknown key '{key}'{did_you_mean(key, sorted(TOP_KEYS))}")
    name = _str(raw, "name", source)
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise UserError(f"{source}: experiment name '{name}' must be non-empty without '/', '\\' or ':'")

    def backbone(b: Any, where: str) -> str:
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

    def method(m: Any, where: str) -> str:
        if isinstance(m, dict):
            extra = set(m) - {"name", "branch"}
            if extra or "name" not in m:
                raise UserError(f"{source}: {where}: a method table has keys name and branch, got {sorted(m)}")
            m = method_name(str(m["name"]), m.get("branch"))
        if not isinstance(m, str) or not m:
            raise UserError(f"{source}: {where} must be method names, got {m!r}")
        if m not in METHODS:
            raise UserError(
                f"{source}: unknown method '{m}'{did_you_mean(m, METHODS.names())}; valid: {', '.join(METHODS.names())}"
            )
        return m

    def recipe(r: Any, where: str) -> str:
        if r not in RECIPES:
            raise UserError(
                f"{source}: unknown recipe {r!r}{did_you_mean(str(r), list(RECIPES))} in {where}; valid: {', '.join(RECIPES)}"
            )
        return r

    def fraction(f: Any, where: str) -> float:
        if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f):
            raise UserError(f"{source}: {where}: fraction {f!r} is not a number")
        if not 0.0 < f <= 1.0:
            raise UserError(f"{source}: {where}: fraction {f:g} is outside (0, 1]; use e.g. 0.01 for 1% of the labels")
        return float(f)

    def grid_list(d: dict, key: str, conv: Any, where: str, required: bool = True) -> tuple:
        if key not in d:
            if required:
                raise UserError(f"{source}: '{key}' is missing")
            return ()
        v = d[key]
        items = v if isinstance(v, list) else [v]
        if not items:
            raise UserError(f"{source}: '{key}' is empty")
        out = tuple(conv(x, f"{where}{key}") for x in items)
        dupes = sorted({x for x in out if out.count(x) > 1}, key=str)
        if dupes:
            raise UserError(f"{source}: '{key}' lists {dupes[0]!r} twice")
        return out

    backbones = grid_list(raw, "backbones", backbone, "")
    methods = grid_list(raw, "methods", method, "")
    recipes = grid_list(raw, "recipes", recipe, "") if "recipes" in raw else ("tuned",)
    fractions = grid_list(raw, "fractions", fraction, "")

    seeds_raw = raw.get("seeds", 3)
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool) and seeds_raw > MAX_SEEDS:
        raise UserError(f"{source}: seeds = {seeds_raw} is more than {MAX_SEEDS} seeds; give a count up to {MAX_SEEDS}")
    if isinstance(seeds_raw, bool) or not isinstance(seeds_raw, int | list):
        raise UserError(f"{source}: seeds must be a count or a list of integers, got {seeds_raw!r}")
    if isinstance(seeds_raw, int):
        if seeds_raw <= 0:
            raise UserError(f"{source}: seeds must be a positive count, got {seeds_raw}")
        seeds = tuple(range(seeds_raw))
    else:
        if not seeds_raw or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds_raw):
            raise UserError(f"{source}: seeds must be a non-empty list of integers in 0..{MAX_SEED}, got {seeds_raw!r}")
        if len(set(seeds_raw)) != len(seeds_raw):
            raise UserError(f"{source}: seeds lists a seed twice: {seeds_raw}")
        seeds = tuple(seeds_raw)

    trials = _positive_int(raw, "trials", 8, source)
    steps = None if raw.get("steps") is None else _positive_int(raw, "steps", 500, source)
    cv = _positive_int(raw, "cv_folds", 1, source)

    resolution = raw.get("resolution")
    if resolution is not None:
        if isinstance(resolution, dict):
            for b, px in resolution.items():
                if b not in backbones and not any(b in blk.get("backbones", ()) for blk in raw.get("include", [])):
                    raise UserError(f"{source}: resolution is given for '{b}', which is not a backbone of this experiment")
                _check_resolution(px, f"resolution.{b}", source)
        else:
            _check_resolution(resolution, "resolution", source)

    precision = _str(raw, "precision", source, "auto")
    if precision not in PRECISIONS:
        raise UserError(f"{source}: precision '{precision}' is not one of: {', '.join(PRECISIONS)}")
    device = _str(raw, "device", source, "auto")
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"{source}: device '{device}' is not one of: auto, cpu, cuda, cuda:N")
    compile_ = raw.get("compile", False)
    if not isinstance(compile_, bool | str) or (isinstance(compile_, str) and compile_.lower() in BOOL_WORDS):
        raise UserError(
            f"{source}: compile must be true, false (TOML booleans, unquoted) or a torch.compile backend name, got {compile_!r}"
        )
    pretrained = raw.get("pretrained", True)
    if not isinstance(pretrained, bool):
        raise UserError(f"{source}: pretrained must be true or false, got {pretrained!r}")
    val_fraction = raw.get("val_fraction", 0.2)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise UserError(f"{source}: val_fraction must be in (0, 1), got {val_fraction!r}")

    search = _dataclass_table(Search, raw.get("search", {}), "search", source)
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
    workers = _dataclass_table(Workers, raw.get("workers", {}), "workers", source)
    for key in ("heartbeat_seconds", "stale_after_seconds"):
        v = getattr(workers, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise UserError(f"{source}: workers.{key} must be a positive, finite number of seconds, got {v!r}")
    if not (0 < workers.heartbeat_seconds < workers.stale_after_seconds):
        raise UserError(f"{source}: workers need 0 < heartbeat_seconds < stale_after_seconds")

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

    include = tuple(
        _grid_block(b, i, "include", source, backbone, method, recipe, fraction)
        for i, b in enumerate(_blocks(raw, "include", source))
    )
    exclude = tuple(
        _grid_block(b, i, "exclude", source, backbone, method, recipe, fraction)
        for i, b in enumerate(_blocks(raw, "exclude", source))
    )

    exp = Experiment(
        name=name,
        backbones=backbones,
        methods=methods,
        fractions=fractions,
        seeds=seeds,
        recipes=recipes,
        trials=trials,
        steps=steps,
        cv_folds=cv,
        resolution=resolution,
        pretrained=pretrained,
        precision=precision,
        device=device,
        compile=compile_,
        val_fraction=float(val_fraction),
        data_dir=_str(raw, "data_dir", source, "data"),
        results_dir=_str(raw, "results_dir", source, "results"),
        storage=_str(raw, "storage", source, ""),
        description=_str(raw, "description", source, ""),
        search=search,
        workers=workers,
        hparams=hparams,
        space=space,
        include=include,
        exclude=exclude,
    )
    if not exp.cells():
        raise UserError(f"{source}: the grid is empty (every cell is excluded)")
    cells = set(exp.cells())
    for cell in exp.cells():
        if METHODS.get(cell.method).probe_init:
            probe = Cell(cell.backbone, "linear_probe", cell.recipe, cell.fraction)
            if probe not in cells:
                raise UserError(
                    f"{source}: {cell.method} starts from the linear_probe row's model, but the grid has no "
                    f"linear_probe for {probe.backbone} / {probe.recipe} / {probe.fraction:g}; add linear_probe to methods"
                )
    return exp


def _str(raw: dict, key: str, source: str, default: str | None = None) -> str:
    v = raw.get(key, default)
    if not isinstance(v, str):
        raise UserError(f"{source}: {key} must be a string, got {v!r}")
    return v


def _positive_int(raw: dict, key: str, default: int, source: str) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"{source}: {key} must be a positive integer, got {v!r}")
    return v


def _check_resolution(px: Any, where: str, source: str) -> None:
    if isinstance(px, bool) or not isinstance(px, int) or not 8 <= px <= 1024:
        raise UserError(f"{source}: {where} must be an integer number of pixels in 8..1024, got {px!r}")


def _dataclass_table(cls: type, table: Any, key: str, source: str) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"{source}: [{key}] must be a table")
    known = [f.name for f in fields(cls)]
    for k in table:
        if k not in known:
            raise UserError(f"{source}: unknown key '{key}.{k}'{did_you_mean(k, known)}; valid: {', '.join(known)}")
    return cls(**table)


def _per_method_table(table: Any, key: str, source: str, hp_fields: set, methods: list, check: Any) -> dict:
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
    def _check_values(name: str, values: list, where: str) -> None:
        """Every value a distribution can give must make valid hyperparameters (checked now, not mid-sweep)."""
        from bench.models.methods import HParams

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
    out = []
    for k, v in space.items():
        if _is_distribution(v):
            out.append((f"space.{k}", v))
        else:
            out.extend((f"space.{k}.{f}", d) for f, d in v.items())
    return out


def _blocks(raw: dict, key: str, source: str) -> list[dict]:
    v = raw.get(key, [])
    if not isinstance(v, list) or not all(isinstance(b, dict) for b in v):
        raise UserError(f"{source}: [[{key}]] must be an array of tables")
    return v


def _grid_block(block: dict, i: int, key: str, source: str, backbone: Any, method: Any, recipe: Any, fraction: Any) -> dict:
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
        out[k] = tuple(conv[k](x, f"{key}[{i}].{k}") for x in items)
    if not out:
        raise UserError(f"{source}: [[{key}]] number {i + 1} is empty")
    return out


# ---------------------------------------------------------------- writing


def to_toml(exp: Experiment) -> str:
    """The resolved experiment as TOML (tomllib reads; this small writer covers our types)."""
    d = exp.to_dict()
    from bench.sweep.storage import masked

    d["storage"] = masked(d["storage"])  # a database password is never written (filled in at run time)
    tables = {k: d.pop(k) for k in ("search", "workers", "hparams", "space")}
    arrays = {k: d.pop(k) for k in ("include", "exclude")}
    lines = ["# The resolved experiment this results folder was produced with (written by `sweep`).", ""]
    for k, v in d.items():
        if v is None:
            continue
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        scalars = {a: b for a, b in v.items() if b is not None and not (isinstance(b, dict) and not _is_distribution(b))}
        subs = {a: b for a, b in v.items() if isinstance(b, dict) and not _is_distribution(b)}
        lines += ["", f"[{k}]"] + [f"{a} = {_toml_value(b)}" for a, b in scalars.items()]
        for a, b in subs.items():
            lines += ["", f"[{k}.{a}]"] + [f"{x} = {_toml_value(y)}" for x, y in b.items()]
    for k, blocks in arrays.items():
        for block in blocks:
            lines += ["", f"[[{k}]]"] + [f"{a} = {_toml_value(b)}" for a, b in block.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(a)} = {_toml_value(b)}" for a, b in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def check_writable(folder: Path) -> None:
    """The results folder (or the storage file's folder) must be writable before anything runs."""
    registry_check_writable(folder, what="results ")
