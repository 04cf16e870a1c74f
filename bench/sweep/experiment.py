"""An experiment is data: a TOML file describing a grid, loaded into one frozen dataclass.

Why a separate module: the sweep, its CLI, the tests and the written `config.toml` all
need the same parsing and the same validation, and every check has to run before a
single file is written or a single epoch trained (a multi-day grid that dies on a typo
in cell 40 wastes a day). Every problem is a `UserError`: one line, exit code 2. The
checks themselves are in bench/sweep/validate.py; `resolve` calls them in reading order.

    name = "quick"                      # default: the file's stem
    backbones = ["efficientnet_lite0"]
    methods = ["finetune", "sft", "sft-mlp"]   # or { name = "sft", branch = "mlp" }
    recipes = ["tuned"]                 # "seed": the article's fixed recipe, no search
    fractions = [0.01, 0.1]
    seeds = 3                           # a count (0, 1, 2) or a list [0, 1, 2]
    trials = 4                          # Optuna trials per tuned cell (per seed), the same for every method
    steps = 200                         # optional: a fixed step budget (default: the protocol's rule, >= 500)
    resolution = 32                     # or { efficientnet_lite0 = 64 }; default: the backbone's

    [search]                            # mode (pooled | per_seed | shared), pool, candidates, pruner, BN-policy search
    [probe]                             # the linear probe: l2_grid, folds, tol, max_iter, std_floor (protocol v3)
    [stats]                             # primary = ["sft* vs finetune", ...], margin = 0.01 (TOST), alpha
    [hparams]                           # fixed hyperparameters (all methods, or [hparams.<method>])
    [space]                             # replace or add search distributions ([space.<method>])
    [[include]] / [[exclude]]           # extra or removed cells, matrix style
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.budget import PROTOCOL
from bench.models.hparams import ProbeSpec
from bench.records import Cell
from bench.registry import UserError, check_path, did_you_mean
from bench.registry import check_writable as registry_check_writable
from bench.sweep import validate as checks
from bench.sweep.validate import (  # noqa: F401  (the names a file may hold: the CLI, perf and tests read them here)
    BOOL_WORDS,
    FIRST_TRIALS,
    GRID_KEYS,
    MAX_SEED,
    MAX_SEEDS,
    PRECISIONS,
    PRUNERS,
    RECIPES,
    SEARCH_MODES,
    V1_KEYS,
    V1_SEARCH_KEYS,
    is_distribution,
)
from bench.sweep.validate_hparams import check_hparams_space

# The suite's own experiments: the repository's experiments/ (bench/sweep/ -> bench/ -> the repository).
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent.parent / "experiments"


@dataclass(frozen=True)
class Search:
    """How every tuned cell is searched: identical for every method (methods.md).

    Protocol v3's default is `pooled`: one search per cell, each candidate configuration scored by
    its mean validation accuracy over the first `pool` seeds' subsets (the standard error of the
    mean shrinks with every seed pooled), and that one choice retrained for every seed.
    `per_seed` (each seed its own search: selection noise inside the spread) and `shared` (the
    first seed's search for all) stay. The first candidates are asked in order: the method's
    defaults, then each of `candidates` (changes to the defaults; one that changes nothing the
    method searches is skipped), then the sampler's."""

    mode: str = "pooled"  # pooled | per_seed | shared
    pool: int | None = None  # pooled: how many seeds (the experiment's first) score every candidate; None: up to 3
    candidates: tuple[dict[str, Any], ...] = ()  # e.g. ({"backbone_lr_mult": 0.1},): asked right after the defaults
    startup_trials: int | None = None  # TPE's random start; None: min(10, max(2, trials // 3))
    pruner: str = "median"
    pruner_startup_trials: int | None = None  # None: the protocol's floor, max(4, ceil(trials / 3))
    pruner_warmup: float = 0.5  # fraction of a trial's steps never pruned (the protocol: at least half)
    bn: bool = False  # search the BatchNorm policy (frozen, train) for every method that trains the backbone
    first_trial: str = "defaults"  # defaults: every search's first trial is the method's defaults; sampled: TPE's


DEFAULT_PRIMARY = ("sft* vs finetune", "sft* vs lp_ft")
DEFAULT_POOL = 3  # seeds a pooled search scores each candidate on, when the experiment has that many


@dataclass(frozen=True)
class Stats:
    """The statistical questions, declared before the grid runs (protocol v3) and written with it
    into config.toml, where the report reads them: the primary family of comparisons (Holm within
    it; every other comparison is secondary and labelled so) and the equivalence margin of the
    two one-sided tests (accuracy as a fraction: 0.01 = 1 point). A comparison is written
    "METHOD vs BASELINE"; `*` matches any run of characters (`sft*`: every SFT variant)."""

    primary: tuple[str, ...] = DEFAULT_PRIMARY
    margin: float = 0.01
    alpha: float = 0.05


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
    deterministic: bool = False  # CUDA: deterministic kernels only (bench/numerics.py Numerics); recorded per run
    tf32: bool = False  # CUDA: fp32 may use TF32; recorded per run
    val_fraction: float = 0.2
    probe: ProbeSpec = field(default_factory=ProbeSpec)  # the linear probe (linear_probe, lp_ft, sft*)
    data_dir: str = "data"
    results_dir: str = "results"
    storage: str = ""  # "": the journal file R/E/optuna.journal; else an SQLAlchemy URL
    description: str = ""
    search: Search = field(default_factory=Search)
    stats: Stats = field(default_factory=Stats)
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
        """The seeds that name a search: every seed (per_seed), or the first alone (shared, pooled)."""
        return self.seeds if self.search.mode == "per_seed" else (self.data_seed,)

    @property
    def pool_seeds(self) -> tuple[int, ...]:
        """The seeds every candidate of a pooled search is scored on (empty for the other modes)."""
        if self.search.mode != "pooled":
            return ()
        return self.seeds[: self.search.pool if self.search.pool is not None else DEFAULT_POOL]

    def searched_by(self, seed: int) -> int:
        """Whose search chooses the hyperparameters of seed `seed`'s final run."""
        return seed if self.search.mode == "per_seed" else self.data_seed

    def searches(self, cell: Cell) -> tuple[int, ...]:
        """The searches a cell has (by search seed): none for a fixed recipe (`defaults`, `article`) and
        none for the linear probe, whose one setting (its L2 strength) is cross-validated inside its fit."""
        from bench.models.kinds import METHODS

        if cell.recipe != "tuned" or not METHODS.get(cell.method).searched:
            return ()
        return self.search_seeds

    @staticmethod
    def pruning_floor(trials: int) -> int:
        """Protocol v3: a trial is compared only with at least max(4, trials / 3) finished trials."""
        return max(4, math.ceil(trials / 3))

    @property
    def out_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def resolution_for(self, backbone: str) -> int | None:
        if isinstance(self.resolution, dict):
            return self.resolution.get(backbone)
        return self.resolution

    def resolution_override(self, cell: Cell) -> int | None:
        """The explicit resolution for `cell`, for bench.models.backbones.input_resolution: the
        experiment's `resolution` applies to tuned cells; the article's recipe always runs at its
        own 32 px (paper.toml's article cells beside its 128 px tuned ones); `defaults` cells are
        the tuned cells' twins, at their resolution."""
        return self.resolution_for(cell.backbone) if cell.recipe != "article" else None

    def startup_trials(self) -> int:
        s = self.search.startup_trials
        return s if s is not None else min(10, max(2, self.trials // 3))

    def pruner_startup_trials(self) -> int:
        s = self.search.pruner_startup_trials
        return s if s is not None else self.pruning_floor(self.trials)

    def fixed_hparams(self, method: str) -> dict[str, Any]:
        """Fixed hyperparameters of a tuned cell: all-method values, then the method's own."""
        out = {k: v for k, v in self.hparams.items() if not isinstance(v, dict)}
        out.update(self.hparams.get(method, {}))
        return out

    def space_for(self, method: str) -> dict[str, dict]:
        out = {k: v for k, v in self.space.items() if is_distribution(v)}
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
            "probe": self.probe.as_data(),  # std_floor 0 left out: the settings of searches from before it
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


# ---------------------------------------------------------------- loading


TOP_KEYS = {f.name for f in fields(Experiment)}


def find_config(config: str | Path | None, experiment: str | None) -> Path:
    """`--config PATH`, `--experiment NAME` (./experiments, then the suite's own, whatever the working
    directory), or the default."""
    if config is not None and experiment is not None:
        raise UserError("give either --config or --experiment, not both")
    if config is not None:
        path = Path(config)
        check_path(path, "--config")
        if path.is_dir():
            raise UserError(f"--config {path} is a folder; give an experiment TOML file (or --experiment NAME)")
        if not path.is_file():
            raise UserError(f"experiment file {path} does not exist")
        return path
    name = experiment or "default"
    if "/" in name or "\\" in name:
        raise UserError(f"--experiment takes a name (experiments/NAME.toml), got '{name}'; give a file with --config")
    check_path(f"{name}.toml", "--experiment")
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
    """Validate a raw TOML dict (flags already merged in) into an Experiment, or raise UserError.

    The checks run in the order a reader meets the keys (bench/sweep/validate.py), so the first
    mistake of a file is the one reported."""
    raw = checks.check_v1_keys(raw, source)
    parts: dict[str, Any] = {"name": checks.check_name(raw, source, TOP_KEYS)}
    parts.update(zip(GRID_KEYS, checks.grid_lists(raw, source), strict=True))  # backbones, methods, recipes, fractions
    parts["seeds"] = checks.check_seeds(raw, source)
    parts.update(zip(("trials", "steps", "cv_folds"), checks.check_budgets(raw, source), strict=True))
    parts["resolution"] = checks.check_resolution(raw, parts["backbones"], source)
    parts.update(checks.check_runtime(raw, source))
    parts["search"] = checks.check_search(raw, source, Search)
    parts["workers"] = checks.check_workers(raw, source, Workers)
    parts["hparams"], parts["space"] = check_hparams_space(raw, source)
    parts["probe"] = checks.check_probe(raw, source)
    parts["stats"] = checks.check_stats(raw, source, Stats)
    for key in ("include", "exclude"):
        parts[key] = checks.grid_blocks(raw, key, source)
    for key, default in (("data_dir", "data"), ("results_dir", "results"), ("storage", ""), ("description", "")):
        parts[key] = checks.string(raw, key, source, default)
    exp = Experiment(**parts)
    if not exp.cells():
        raise UserError(f"{source}: the grid is empty (every cell is excluded)")
    checks.check_pool(exp.search, len(exp.seeds), exp.trials, source)
    return exp


# ---------------------------------------------------------------- writing


def to_toml(exp: Experiment) -> str:
    """The resolved experiment as TOML (tomllib reads; this small writer covers our types)."""
    d = exp.to_dict()
    from bench.sweep.storage import masked

    d["storage"] = masked(d["storage"])  # a database password is never written (filled in at run time)
    tables = {k: d.pop(k) for k in ("search", "stats", "workers", "probe", "hparams", "space")}
    arrays = {k: d.pop(k) for k in ("include", "exclude")}
    lines = ["# The resolved experiment this results folder was produced with (written by `sweep`).", ""]
    for k, v in d.items():
        if v is None:
            continue
        lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        scalars = {a: b for a, b in v.items() if b is not None and not (isinstance(b, dict) and not is_distribution(b))}
        subs = {a: b for a, b in v.items() if isinstance(b, dict) and not is_distribution(b)}
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


def folder_owner(out: Path) -> tuple[str, str] | None:
    """(experiment, where it says so) for a results folder that names its experiment: its config.toml,
    else its runs.csv's experiment column, else the first study of its own journal when a sweep named it;
    None for a new folder (or a journal of studies no sweep made)."""
    import csv

    config, runs, journal = out / "config.toml", out / "runs.csv", out / "optuna.journal"
    if config.is_file():
        try:
            name = tomllib.loads(config.read_text(encoding="utf-8")).get("name")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise UserError(
                f"results folder {out} holds a config.toml that is not an experiment's ({str(exc).splitlines()[0]}); "
                "give another --name or --results-dir, or move the file away"
            ) from None
        return (str(name), "named in its config.toml") if name is not None else None
    if runs.is_file():
        try:
            with open(runs, newline="", encoding="utf-8") as f:
                names = {r.get("experiment") for r in csv.DictReader(f)} - {None, ""}
        except (UnicodeDecodeError, csv.Error, OSError):
            names = set()
        if names:
            return sorted(str(n) for n in names)[0], "named in its runs.csv"
    if journal.is_file() and not journal.is_symlink():
        with open(journal, "rb") as f:
            first = f.readline(1 << 16)
        try:
            study = json.loads(first).get("study_name")
        except (ValueError, AttributeError):
            study = None
        if isinstance(study, str) and len(study.split("/")) >= 5:  # a sweep's: NAME[:final]/backbone/method/recipe/fraction
            return study.split("/")[0].split(":")[0], "named by its journal's studies"
    return None


def check_folder_owner(exp: Experiment) -> None:
    """Refuse a results folder that holds another experiment's files (copied, or renamed): the sweep would
    overwrite its config.toml and runs.csv and append its own studies to its journal (issue 19, audit item 4)."""
    owner = folder_owner(exp.out_dir)
    if owner is not None and owner[0] != exp.name:
        name, where = owner
        raise UserError(
            f"results folder {exp.out_dir} belongs to experiment {name!r} ({where}), not {exp.name!r}; "
            "give another --name or --results-dir, or rename the folder back"
        )
