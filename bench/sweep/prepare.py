"""Before anything trains: an experiment file with its overrides merged in (`load`), and everything the
grid could fail on checked (`check`).

Why a module of its own: the command line and the Python API (`bench.sweep.run`) must refuse exactly the
same inputs with exactly the same words, before a single file is written; both call these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.registry import UserError

if TYPE_CHECKING:
    import torch

    from bench.data import Cifar10
    from bench.sweep.experiment import Experiment


def _count(value: int | str | None, flag: str, minimum: int = 1) -> int | None:
    """An integer override given as text by a caller of `load` (the CLI passes ints, Typer checked them)."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"{flag} must be an integer, got '{value}'") from None
    if n < minimum:
        raise UserError(f"{flag} must be {'positive' if minimum == 1 else f'at least {minimum}'}, got {n}")
    return n


def _narrow_includes(raw: dict[str, Any], key: str, values: list[Any]) -> None:
    """A grid override narrows the [[include]] blocks to its values too (and drops emptied ones)."""
    kept = []
    for block in raw.get("include", []) if isinstance(raw.get("include"), list) else []:
        if isinstance(block, dict) and key in block:
            vals = block[key] if isinstance(block[key], list) else [block[key]]
            vals = [v for v in vals if v in values]
            if not vals:
                continue
            block = {**block, key: vals}
        kept.append(block)
    if "include" in raw:
        raw["include"] = kept


def load(
    config: Path | None,
    experiment: str | None,
    *,
    name: str | None = None,
    fractions: str | None = None,
    backbones: str | None = None,
    methods: str | None = None,
    recipes: str | None = None,
    seeds: int | str | None = None,
    trials: int | str | None = None,
    steps: int | str | None = None,
    search: str | None = None,
    cv_folds: int | str | None = None,
    resolution: int | str | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile_: bool | None = None,
    compile_mode: str | None = None,
    deterministic: bool | None = None,
    tf32: bool | None = None,
    data_dir: Path | None = None,
    results_dir: Path | None = None,
    storage: str | None = None,
) -> Experiment:
    """The experiment file with the overrides merged in, validated (no I/O besides reading it).

    The overrides are the CLI's flags, as text where the CLI takes text (`fractions="0.01,0.1"`), so
    that a bad value is blamed on its flag, not on the experiment file."""
    from bench.sweep.experiment import find_config, parse_fractions, parse_names, read_toml, resolve
    from bench.sweep.validate import check_flag_list

    path = find_config(config, experiment)
    raw = read_toml(path)
    grid = {
        "fractions": parse_fractions(fractions) if fractions is not None else None,
        "backbones": parse_names(backbones, "--backbones") if backbones is not None else None,
        "methods": parse_names(methods, "--methods") if methods is not None else None,
        "recipes": parse_names(recipes, "--recipes") if recipes is not None else None,
    }
    for key, values in grid.items():
        if values is None:
            continue
        values = check_flag_list(key, values)  # a bad value is the flag's, not the experiment file's
        raw[key] = values
        _narrow_includes(raw, key, values)
    for key, value, flag in (
        ("seeds", seeds, "--seeds"),
        ("trials", trials, "--trials"),
        ("steps", steps, "--steps"),
        ("cv_folds", cv_folds, "--cv-folds"),
        ("resolution", resolution, "--resolution"),
    ):
        n = _count(value, flag)
        if n is not None:
            raw[key] = n
    if search is not None:
        table = raw.get("search") if isinstance(raw.get("search"), dict) else {}
        raw["search"] = {**table, "mode": search}
    for key, value in (
        ("name", name),
        ("device", device),
        ("precision", precision),
        ("storage", storage),
        ("data_dir", None if data_dir is None else str(data_dir)),
        ("results_dir", None if results_dir is None else str(results_dir)),
    ):
        if value is not None:
            raw[key] = value
    if compile_mode is not None:
        from bench.train.compiling import COMPILE_MODES

        if compile_mode not in COMPILE_MODES:
            raise UserError(f"--compile-mode '{compile_mode}' is not one of: {', '.join(COMPILE_MODES)}")
        raw["compile"] = compile_mode
    elif compile_:
        raw["compile"] = True
    if deterministic:
        raw["deterministic"] = True
    if tf32 is not None:
        raw["tf32"] = tf32
    return resolve(raw, source=str(path))


@dataclass
class Checked:
    """What `check` found: the data (loaded once, for the whole sweep), the device, and the warnings to
    say before any work (bf16 on a CPU, SQLite under several writers, a torn journal tail cut)."""

    data: Cifar10
    device: torch.device
    warnings: list[str] = field(default_factory=list)


def check(exp: Experiment, *, download: bool) -> Checked:
    """Everything that could fail later, checked now: device, weights, results folder, storage,
    data, fractions against the data, and settings of an existing experiment. Writes nothing
    (besides cutting a torn journal tail, which it keeps aside and reports)."""
    from bench.data import cv_folds, label_split
    from bench.models.backbones import get_backbone
    from bench.provenance import resolve_device
    from bench.sweep.experiment import check_folder_owner, check_writable
    from bench.sweep.storage import check_storage, open_storage, storage_exists
    from bench.sweep.studies import check_settings
    from bench.train.caches import Caches
    from bench.train.compiling import check_compile

    warnings = []
    device = resolve_device(exp.device)
    check_compile(exp.compile)
    if exp.precision == "bf16" and device.type == "cpu":
        warnings.append("bf16 on CPU is usually slower than fp32 there")
    backbones = {c.backbone for c in exp.cells()}
    if exp.pretrained:
        for b in sorted(backbones):
            ok, why = get_backbone(b).available()
            if not ok:
                raise UserError(f"pretrained weights for backbone '{b}' are not available: {why}")
    check_writable(exp.out_dir)
    check_folder_owner(exp)
    warn = check_storage(exp)
    if warn:
        warnings.append(warn)
    data = Caches.from_env().data.get(exp.data_dir, download_missing=download)
    for f in sorted({c.fraction for c in exp.cells()}):
        label_split(data.train_y, f, exp.data_seed, exp.val_fraction)
        if exp.cv_folds > 1:
            cv_folds(data.train_y, f, exp.data_seed, exp.cv_folds)
    if storage_exists(exp):
        check_settings(exp, open_storage(exp, warnings))  # a torn journal tail is cut here, and said so
    return Checked(data, device, warnings)
