"""What the experiment was meant to hold against what it holds: the grid of its config.toml (written by the
sweep) against the final runs of runs.csv, as the cells and seeds still missing.

Why: a report of an unfinished grid (a sweep still running, stopped, or resumed on fewer machines) looked like
a finished one: "6 final runs", verdicts and plots, with nothing saying that most of the grid had not run. A
reader must see at the top of report.html, in tables/summary.md and in the command's output which cells and
seeds are missing before reading any number drawn from the rest.

Why not `bench.sweep.experiment.resolve`: it checks every name against the registries, which import torch (a
report never does), and it refuses the config files of earlier protocols that committed results still carry.
The grid's keys are read here as data, leniently, and the cells come from the sweep's own cross product
(`Experiment.cells`, torch-free), so the sweep and the report cannot disagree on what the grid is.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.names import METHOD_ALIASES, RECIPE_ALIASES
from bench.report.schema import cell_key
from bench.report.text import frac_label

# How many missing cells a one-line statement names before it counts the rest (report.html lists every one).
SHORT_LIST = 8


class GridUnreadable(ValueError):
    """config.toml's grid keys are not what the sweep writes: the report says so and checks nothing."""


def _names(value: Any, key: str, alias: dict[str, str]) -> tuple[str, ...]:
    """A grid list of names (a single value is a list of one), old names read as the current ones."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict) and key == "methods":  # { name = "sft", branch = "mlp" } is sft-mlp
            branch = item.get("branch")
            item = str(item.get("name", "")) + ("" if branch in (None, "", "linear") else f"-{branch}")
        if not isinstance(item, str) or not item:
            raise GridUnreadable(f"'{key}' holds {item!r}, not a name")
        out.append(alias.get(item, item))
    return tuple(out)


def _fractions(value: Any, key: str) -> tuple[float, ...]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(f, int | float) and not isinstance(f, bool) for f in items):
        raise GridUnreadable(f"'{key}' holds a value that is not a number")
    return tuple(float(f) for f in items)


def _block(raw: Any, key: str) -> dict[str, tuple]:
    """An [[include]] / [[exclude]] block, its lists converted like the top-level ones."""
    if not isinstance(raw, dict):
        raise GridUnreadable(f"[[{key}]] is not a table")
    conv = {
        "backbones": lambda v: _names(v, "backbones", {}),
        "methods": lambda v: _names(v, "methods", METHOD_ALIASES),
        "recipes": lambda v: _names(v, "recipes", RECIPE_ALIASES),
        "fractions": lambda v: _fractions(v, "fractions"),
    }
    unknown = set(raw) - set(conv)
    if unknown:
        raise GridUnreadable(f"[[{key}]] has key '{sorted(unknown)[0]}'")
    return {k: conv[k](v) for k, v in raw.items()}


def _seeds(raw: dict[str, Any]) -> tuple[int, ...]:
    """`seeds`: a count (0 .. n-1) or a list, as the sweep reads it (default 3)."""
    value = raw.get("seeds", 3)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return tuple(value)
    raise GridUnreadable(f"'seeds' is {value!r}, neither a count nor a list of seeds")


def grid_cells(raw: dict[str, Any]) -> tuple[list[tuple[str, str, str, float]], tuple[int, ...]]:
    """The grid of a config.toml read as data: its cells as (backbone, recipe, method, fraction), in the sweep's
    order, and the seeds every cell runs. Raises GridUnreadable where a grid key is missing or malformed."""
    from bench.sweep.experiment import Experiment

    for key in ("backbones", "methods", "fractions"):
        if key not in raw:
            raise GridUnreadable(f"'{key}' is missing")
    exp = Experiment(
        name=str(raw.get("name", "")),
        backbones=_names(raw["backbones"], "backbones", {}),
        methods=_names(raw["methods"], "methods", METHOD_ALIASES),
        fractions=_fractions(raw["fractions"], "fractions"),
        seeds=_seeds(raw),
        recipes=_names(raw.get("recipes", ["tuned"]), "recipes", RECIPE_ALIASES),
        include=tuple(_block(b, "include") for b in _list_of_tables(raw, "include")),
        exclude=tuple(_block(b, "exclude") for b in _list_of_tables(raw, "exclude")),
    )
    return [(c.backbone, c.recipe, c.method, c.fraction) for c in exp.cells()], exp.seeds


def _list_of_tables(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise GridUnreadable(f"[[{key}]] is not an array of tables")
    return value


def seed_text(seeds: tuple[int, ...]) -> str:
    """Seeds as a reader scans them: 'seed 3', 'seeds 3–7', 'seeds 0, 2 and 5–7'."""
    runs: list[list[int]] = []
    for s in sorted(seeds):
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    parts = [str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" if len(r) > 2 else f"{r[0]}, {r[1]}" for r in runs]
    text = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + text


def cell_text(cell: tuple[str, str, str, float]) -> str:
    """A cell as compare's notes name it: backbone/method/recipe@fraction."""
    b, r, m, f = cell
    return f"{b}/{m}/{r}@{frac_label(f)}"


@dataclass(frozen=True)
class Completeness:
    """How much of config.toml's grid runs.csv holds: every cell with the seeds it lacks (empty: complete)."""

    cells: int  # cells in the grid
    seeds: int  # seeds every cell runs
    missing: tuple[tuple[tuple[str, str, str, float], tuple[int, ...]], ...]  # (cell, its missing seeds), display order
    runs: int  # final runs of the grid present in runs.csv
    outside: int  # runs of runs.csv whose cell or seed the grid does not have
    backbone_cells: tuple[tuple[str, int], ...] = ()  # cells of the grid per backbone (a backbone not run at all is named once)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def complete_cells(self) -> int:
        return self.cells - len(self.missing)

    def headline(self) -> str:
        """The one line a reader sees first: complete, or how much is missing."""
        if self.complete:
            return f"complete: all {self.cells} cells of config.toml's grid have all {self.seeds} seeds ({self.runs} final runs)"
        return (
            f"incomplete: {self.complete_cells} of {self.cells} cells have all {self.seeds} seeds; "
            f"{self.runs} of {self.cells * self.seeds} final runs are in runs.csv"
        )

    def groups(self) -> list[tuple[str, list[str]]]:
        """The missing cells grouped by the seeds they lack ("every seed", "seeds 3–7"), largest lack first; a
        backbone none of whose cells has run is one entry ("mini (all 9 cells)"), not nine."""
        by: dict[tuple[int, ...], list[tuple[str, str, str, float]]] = {}
        for cell, seeds in self.missing:
            by.setdefault(seeds, []).append(cell)
        out = []
        for seeds in sorted(by, key=lambda s: (-len(s), s)):
            cells = by[seeds]
            whole = set()
            if len(seeds) == self.seeds:  # cells without any run: whole backbones first
                for b, n in self.backbone_cells:
                    if sum(c[0] == b for c in cells) == n:
                        whole.add(b)
            names = [f"{b} (all {n} cells)" for b, n in self.backbone_cells if b in whole]
            names += [cell_text(c) for c in cells if c[0] not in whole]
            out.append(("every seed" if len(seeds) == self.seeds else seed_text(seeds), names))
        return out

    def missing_text(self, limit: int | None = SHORT_LIST) -> str:
        """'missing every seed: a, b; missing seeds 3–7: c', naming at most `limit` entries (None: every one)."""
        parts, named, total = [], 0, 0
        for what, names in self.groups():
            total += len(names)
            room = len(names) if limit is None else max(0, limit - named)
            if room:
                named += min(room, len(names))
                parts.append(f"missing {what}: {', '.join(names[:room])}")
        rest = total - named
        return "; ".join(parts) + (f"; and {rest} more (report.html lists every one)" if rest else "")

    def line(self, limit: int | None = SHORT_LIST) -> str:
        """The statement of tables/summary.md and the command's output: the headline, then what is missing."""
        return self.headline() if self.complete else f"{self.headline()}; {self.missing_text(limit)}."


WHY_MISSING = (
    "A missing run has not finished yet, or it diverged, or its search failed; the same sweep command resumes the "
    "grid, and its summary says which. Until then every number here describes the runs present only."
)


def completeness(experiment_dir: Path, df: pd.DataFrame, notes: list[str]) -> Completeness | None:
    """The grid of experiment_dir/config.toml against `df` (runs.csv); None, with a note, where there is no
    config.toml or its grid cannot be read (then nothing is claimed about completeness)."""
    path = Path(experiment_dir) / "config.toml"
    if not path.is_file():
        notes.append(
            "No config.toml beside runs.csv: the grid it was meant to hold is unknown, so its completeness is not checked."
        )
        return None
    try:
        cells, seeds = grid_cells(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError, GridUnreadable) as exc:
        notes.append(f"config.toml's grid cannot be read ({exc}), so the report's completeness is not checked.")
        return None
    have: dict[tuple, set[int]] = {}
    for b, r, m, f, s in df[["backbone", "recipe", "method", "fraction", "seed"]].itertuples(index=False):
        have.setdefault((b, r, m, round(float(f), 12)), set()).add(int(s))
    missing, present = [], 0
    wanted = {(b, r, m, round(f, 12)) for b, r, m, f in cells}
    for cell in sorted(cells, key=lambda c: cell_key(*c)):
        got = have.get((*cell[:3], round(cell[3], 12)), set())
        present += len(got & set(seeds))
        lack = tuple(s for s in seeds if s not in got)
        if lack:
            missing.append((cell, lack))
    outside = sum(len(s - set(seeds)) if k in wanted else len(s) for k, s in have.items())
    if outside:
        notes.append(
            f"{outside} run(s) of runs.csv lie outside config.toml's grid (another cell or seed): they are reported, but "
            "not counted towards the grid."
        )
    per_backbone = tuple((b, sum(c[0] == b for c in cells)) for b in dict.fromkeys(sorted(c[0] for c in cells)))
    return Completeness(len(cells), len(seeds), tuple(missing), present, outside, per_backbone)
