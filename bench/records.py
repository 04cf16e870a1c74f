"""What crosses a boundary, as typed dataclasses: the run record, its runs.csv row, the cell, the
status of a grid. Torch-free, so the sweep (which writes them) and the report (which reads them)
import the same definitions, and a column or a key exists in one place only.

    RunRecord   train.run.execute -> the sweep completes it -> records/RUN_ID.json and the final
                trial's "record" attribute (JSON, `to_json` / `from_json`)
    RunsRow     one runs.csv row, flattened from a RunRecord; `runs_columns` derives the header
                from its fields (per-class accuracies and hyperparameters expand)
    Cell        one (backbone, method, recipe, fraction) of a grid
    GridStatus  what a survey of the storage found (cells, their searches, finished runs, claims)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, astuple, dataclass, field, fields
from typing import Any

from bench.models.hparams import HParams
from bench.run_config import RunConfig

HP_FIELDS = tuple(f.name for f in fields(HParams))


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Cell:
    """One (backbone, method, recipe, fraction): one Optuna study, then one final run per seed."""

    backbone: str
    method: str
    recipe: str
    fraction: float

    def study_name(self, experiment: str, seed: int | None = None) -> str:
        """The search study: one per cell (shared search, the v1 name), or one per seed (per_seed)."""
        base = f"{experiment}/{self.backbone}/{self.method}/{self.recipe}/{self.fraction:g}"
        return base if seed is None else f"{base}/seed{seed}"

    def finals_name(self, experiment: str) -> str:
        # Not under "{experiment}/", so tools listing the search studies by prefix never see it.
        return f"{experiment}:final/{self.backbone}/{self.method}/{self.recipe}/{self.fraction:g}"

    @property
    def label(self) -> str:
        return f"{self.backbone} · {self.method} · {self.recipe} · {self.fraction:g}"


# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class Provenance:
    """Where and with what a run was computed (not part of its id: it must not change the result)."""

    python: str
    versions: dict[str, str | None]
    git_commit: str
    device: str
    device_type: str
    threads: int  # CPU results depend slightly on it (reduction order); runs.csv and the report carry it
    hostname: str
    # protocol v3: which copy of CIFAR-10 ("official": the md5 sums of the official files; "derived": another
    # copy, such as the shared JPEG-derived one, whose numbers are not comparable with published ones)
    data_copy: str = ""
    # the process's numerical settings (bench/numerics.py Numerics; defaults: what every record written
    # before they were recorded ran with on a CPU): CUDA kernels deterministic (--deterministic), and fp32
    # allowed to use TF32 on CUDA (--tf32; a CPU run: false)
    deterministic: bool = False
    tf32: bool = False


@dataclass(frozen=True)
class RunRecord:
    """One run's outcome. The config's fields are repeated flat (what a reader filters on), and the
    config itself is kept whole (`config`, hyperparameters nested) so the run can be rebuilt.

    Final runs carry test metrics, trials validation metrics (`stage` says which); the sweep fills
    the last five fields of a final run.
    """

    run_id: str
    config: dict[str, Any]
    backbone: str
    method: str
    fraction: float
    seed: int
    recipe: str
    resolution: int
    pretrained: bool
    stage: str
    val_fraction: float
    precision: str
    device_type: str
    data: str
    cv_folds: int
    protocol: int
    hparams: dict[str, Any]
    probe_hparams: dict[str, Any] | None
    pool: list[int] = field(default_factory=list)  # a pooled trial's seeds (protocol v3); empty otherwise
    test_accuracy: float | None = None
    macro_f1: float | None = None
    per_class_accuracy: list[float] | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    fold_val_accuracy: list[float] | None = None
    classes: list[str] = field(default_factory=list)
    n_train: int = 0
    n_eval: int = 0
    steps: int = 0
    probe_steps: int = 0
    min_steps: int = 0
    augment: bool = False
    bn: str = "frozen"
    probe_cache_hit: bool = False
    probe_l2: float | None = None  # the linear probe's L2 strength, chosen by cross-validation (protocol v3)
    probe_converged: bool | None = None  # whether its fit reached the gradient tolerance of probe_hparams
    feature_cache_hits: int = 0  # feature passes (training, validation, test images) served from a cache, memory or disk
    backbone_images: int = 0  # images through the backbone's forward pass (a cache hit: none)
    trainable_params: int = 0
    train_seconds: float = 0.0
    feature_seconds: float = 0.0
    compile_seconds: float = 0.0  # torch.compile's warm-up before the timed steps (not in train_seconds); 0: not compiled
    compiled_graphs: int = 0  # graphs torch.compile compiled during this run (0: none, or all reused from earlier runs)
    eval_seconds: float = 0.0
    eval_images_per_second: float = 0.0
    wall_seconds: float = 0.0
    images_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    provenance: Provenance | None = None
    experiment: str = ""
    study: str = ""
    search_mode: str = ""
    predictions: str = ""
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; trial records leave out the test metrics they never have (and finals the
        validation ones), as the records written before this type did."""
        out = asdict(self)
        for name in _STAGE_METRICS["trial" if self.stage == "final" else "final"]:
            if out[name] is None:
                del out[name]
        if self.fold_val_accuracy is None:
            out.pop("fold_val_accuracy", None)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """A record as stored (records/*.json, the storage). Unknown keys are refused: they mean a
        record from a newer version, which this one would silently drop on the next write."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"run record {d.get('run_id', '?')} has unknown field(s) {', '.join(unknown)}")
        values = dict(d)
        if isinstance(values.get("provenance"), dict):
            values["provenance"] = Provenance(**values["provenance"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        return cls.from_dict(json.loads(text))


_STAGE_METRICS = {
    "final": ("test_accuracy", "macro_f1", "per_class_accuracy"),
    "trial": ("val_accuracy", "val_macro_f1"),
}


@dataclass(frozen=True)
class CacheCounts:
    """What the caches of one owner served and computed, cumulatively: subtract two snapshots
    for one run's share. A feature pass is one image set through the frozen backbone (served
    from memory or disk, or computed); a probe is one fitted linear probe (reused, or fitted)."""

    feature_hits: int = 0
    feature_misses: int = 0
    feature_hit_images: int = 0
    feature_miss_images: int = 0
    probe_hits: int = 0
    probe_misses: int = 0

    def __sub__(self, other: CacheCounts) -> CacheCounts:
        return CacheCounts(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_attr(self) -> dict[str, int]:
        """As a JSON user attribute of an Optuna trial (the sweep's journal)."""
        return asdict(self)

    @classmethod
    def from_attr(cls, attr: dict[str, int] | None) -> CacheCounts:
        """From a trial's user attribute; none (a folder from before it was recorded): zeros."""
        return cls(**{k: int(v) for k, v in (attr or {}).items() if k in cls.__dataclass_fields__})

    def __add__(self, other: CacheCounts) -> CacheCounts:
        return CacheCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    # the totals every hit share is taken of (perf --sweep's sentence, grid_cost.py's table cell)
    @property
    def feature_passes(self) -> int:
        return self.feature_hits + self.feature_misses

    @property
    def feature_images(self) -> int:
        return self.feature_hit_images + self.feature_miss_images

    @property
    def probes(self) -> int:
        return self.probe_hits + self.probe_misses


# ---------------------------------------------------------------- runs.csv


@dataclass(frozen=True)
class RunsRow:
    """One runs.csv row: one finished final run. The header is derived from these fields, in this
    order; `per_class` expands to acc_<class> columns and `hparams` to the JSON column plus one
    hp_<name> column per HParams field."""

    experiment: str
    backbone: str
    method: str
    recipe: str
    fraction: float
    seed: int
    run_id: str
    resolution: int
    pretrained: bool
    precision: str
    device_type: str
    test_accuracy: float
    macro_f1: float
    per_class: dict[str, float]
    trainable_params: int
    train_seconds: float
    wall_seconds: float
    images_per_second: float
    peak_memory_mb: float
    backbone_images: int
    n_train: int
    protocol: int
    steps: int
    probe_steps: int
    probe_l2: float | None
    min_steps: int
    search_mode: str
    augment: bool
    bn: str
    hparams: dict[str, Any]
    study: str
    predictions: str
    git_commit: str
    data_copy: str
    device: str
    threads: int | str
    torch_version: str
    finished_at: str

    @classmethod
    def from_record(cls, rec: RunRecord) -> RunsRow:
        if rec.test_accuracy is None or rec.macro_f1 is None or rec.per_class_accuracy is None:
            raise ValueError(f"run {rec.run_id} is a {rec.stage} record without test metrics: not a runs.csv row")
        prov = rec.provenance
        return cls(
            experiment=rec.experiment,
            backbone=rec.backbone,
            method=rec.method,
            recipe=rec.recipe,
            fraction=rec.fraction,
            seed=rec.seed,
            run_id=rec.run_id,
            resolution=rec.resolution,
            pretrained=rec.pretrained,
            precision=rec.precision,
            device_type=rec.device_type,
            test_accuracy=rec.test_accuracy,
            macro_f1=rec.macro_f1,
            per_class=dict(zip(rec.classes, rec.per_class_accuracy, strict=True)),
            trainable_params=rec.trainable_params,
            train_seconds=rec.train_seconds,
            wall_seconds=rec.wall_seconds,
            images_per_second=rec.images_per_second,
            peak_memory_mb=rec.peak_memory_mb,
            backbone_images=rec.backbone_images,
            n_train=rec.n_train,
            protocol=rec.protocol,
            steps=rec.steps,
            probe_steps=rec.probe_steps,
            probe_l2=rec.probe_l2,
            min_steps=rec.min_steps,
            search_mode=rec.search_mode,
            augment=rec.augment,
            bn=rec.bn,
            hparams=rec.hparams,
            study=rec.study,
            predictions=rec.predictions,
            git_commit=prov.git_commit if prov else "",
            data_copy=prov.data_copy if prov else "",
            device=prov.device if prov else "",
            threads=prov.threads if prov else "",
            torch_version=(prov.versions.get("torch") or "") if prov else "",
            finished_at=rec.finished_at,
        )

    def csv_dict(self) -> dict[str, Any]:
        """The row as runs.csv writes it: floats in full (repr), non-finite as empty, booleans lower case."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "per_class":
                out.update({f"acc_{c}": a for c, a in value.items()})
            elif f.name == "hparams":
                out["hparams"] = json.dumps(value, sort_keys=True)
                out.update({f"hp_{h}": value.get(h) for h in HP_FIELDS})
            else:
                out[f.name] = value
        return {k: _csv_value(v) for k, v in out.items()}


def runs_columns(classes: tuple[str, ...] | list[str]) -> list[str]:
    """runs.csv's header for these class names, derived from RunsRow's fields."""
    cols: list[str] = []
    for f in fields(RunsRow):
        if f.name == "per_class":
            cols += [f"acc_{c}" for c in classes]
        elif f.name == "hparams":
            cols += ["hparams", *(f"hp_{h}" for h in HP_FIELDS)]
        else:
            cols.append(f.name)
    return cols


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, bool):
        return str(v).lower()
    return v


# ---------------------------------------------------------------- the status of a grid


@dataclass
class SearchStatus:
    """One search study: the cell's (shared) or one seed's (per_seed)."""

    seed: int
    study_id: int | None
    budget: int
    done: int = 0
    pruned: int = 0
    diverged: int = 0
    best_value: float | None = None
    best_hparams: dict | None = None
    trial_seconds: list[float] = field(default_factory=list)
    trial_ends: list[float] = field(default_factory=list)  # when each of those finished (epoch seconds)
    can_ask: bool = False
    failed: str = ""

    @property
    def complete(self) -> bool:
        return self.done >= self.budget or bool(self.failed)


@dataclass
class CellStatus:
    cell: Cell
    trials_budget: int
    searches: dict[int, SearchStatus] = field(default_factory=dict)  # search seed -> its study
    finals_total: int = 0
    finals: dict[int, RunRecord] = field(default_factory=dict)  # seed -> its final run
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> why no final run (diverged or unsearchable)
    failed: str = ""  # why this cell cannot produce any final run
    run_ids: dict[int, str] = field(default_factory=dict)
    free_finals: list[tuple[int, RunConfig]] = field(default_factory=list)

    @property
    def trials_done(self) -> int:
        return sum(s.done for s in self.searches.values())

    @property
    def trials_pruned(self) -> int:
        return sum(s.pruned for s in self.searches.values())

    @property
    def trials_diverged(self) -> int:
        return sum(s.diverged for s in self.searches.values())

    @property
    def trial_seconds(self) -> list[float]:
        return [t for s in self.searches.values() for t in s.trial_seconds]

    @property
    def trial_ends(self) -> list[float]:
        return [t for s in self.searches.values() for t in s.trial_ends]

    @property
    def search_done(self) -> bool:
        return all(s.complete for s in self.searches.values())

    @property
    def can_ask(self) -> bool:
        return any(s.can_ask for s in self.searches.values())

    @property
    def best_value(self) -> float | None:
        """The best validation accuracy (mean over the seeds' searches when per seed)."""
        vals = [s.best_value for s in self.searches.values() if s.best_value is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def best_hparams(self) -> dict | None:
        """The first searching seed's choice (the summary shows one; records have every seed's)."""
        for s in self.searches.values():
            if s.best_hparams is not None:
                return s.best_hparams
        return None

    @property
    def finals_done(self) -> int:
        return len(self.finals) + len(self.diverged)

    @property
    def done(self) -> bool:
        return bool(self.failed) or (self.search_done and self.finals_done >= self.finals_total)

    @property
    def accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.finals.values() if r.test_accuracy is not None]


@dataclass(frozen=True)
class CellSummary:
    """One cell's line in the terminal summary and the live table."""

    cell: Cell
    n: int  # finished final runs
    mean: float | None  # their test accuracy
    std: float | None
    best_val: float | None
    trials: str  # "done/budget", "-" without a search
    pruned: int
    diverged: int
    failed: str
    hparams: dict | None


@dataclass(frozen=True)
class Claim:
    """A live claim as the status shows it: who runs what, and how far it got."""

    worker: str
    item: str
    progress: str


@dataclass
class GridStatus:
    cells: list[CellStatus]
    running: list[Claim]  # live claims
    eta_seconds: float | None = None
    eta_basis: str = ""  # what the ETA is computed from (the projection, scaled by the finished items)

    @property
    def complete(self) -> bool:
        return all(c.done for c in self.cells)

    @property
    def trials(self) -> tuple[int, int]:
        return sum(min(c.trials_done, c.trials_budget) for c in self.cells), sum(c.trials_budget for c in self.cells)

    @property
    def runs(self) -> tuple[int, int]:
        return sum(c.finals_done for c in self.cells), sum(c.finals_total for c in self.cells)

    @property
    def cells_done(self) -> tuple[int, int]:
        return sum(c.done for c in self.cells), len(self.cells)
