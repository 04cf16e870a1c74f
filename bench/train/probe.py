"""The linear probe: Linear(d, C) on frozen features, fitted by the step loop (`fit_probe`),
and a cache of fitted probes (`ProbeCache`).

Why one function for both: `linear_probe`'s row, and the H_f of every sft* and lp_ft run
of the same data, seed and probe hyperparameters, are one model (methods.md); it is fitted
once and reused.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.models.methods import HParams
from bench.train.features import fingerprint
from bench.train.loop import FitResult, train_steps

if TYPE_CHECKING:
    from bench.train.store import FeatureStore

Probe = tuple[dict[str, torch.Tensor], list[dict]]  # (head state dict, history rows of its fit)


class ProbeCache:
    """Fitted linear probes (head state dicts and the history rows of their fit), least recently
    used out, optionally backed by a `FeatureStore` on disk (`disk`: shared by processes and resumes).

    The key is the content of the features and labels, the hyperparameters and the seed,
    so a hit is exactly what fitting again would give (tests/test_engine.py). Whoever runs
    many trainings (a sweep, `perf`) owns one (see `Caches`) and gives it to every fit."""

    def __init__(self, max_items: int = 256, disk: FeatureStore | None = None) -> None:
        self.max_items = max_items
        self.disk = disk
        self._store: OrderedDict[str, Probe] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(feats: torch.Tensor, y: torch.Tensor, hp: HParams, seed: int, num_classes: int, precision: str) -> str:
        """What a fitted probe depends on: its features, labels, hyperparameters, seed and precision."""
        h = hashlib.sha256(usedforsecurity=False)
        h.update(json.dumps([asdict(hp), seed, num_classes, precision, str(feats.device)], sort_keys=True).encode())
        fingerprint(h, feats)
        fingerprint(h, y)
        return h.hexdigest()

    def get(self, key: str, need_val: bool = False) -> Probe | None:
        """(head state, history rows) of a probe fitted before, from memory or disk, or None (a miss).

        `need_val`: the caller scores a validation split at every history row (the linear_probe
        row itself); a probe fitted without one (by an sft* run) cannot give those rows, so it is
        a miss and the caller fits again (and keeps the richer entry)."""
        entry = self._store.get(key)
        if entry is not None and (not need_val or _has_val(entry[1])):
            self._store.move_to_end(key)
            self.hits += 1
            return entry
        if self.disk is not None and (entry := self.disk.load_probe(key)) is not None:
            if not need_val or _has_val(entry[1]):
                self._keep(key, entry)
                self.hits += 1
                return entry
        self.misses += 1
        return None

    def put(self, key: str, state: dict[str, torch.Tensor], history: list[dict]) -> None:
        """Keep a copy of a fitted probe (the caller goes on training its own tensors), on disk too."""
        entry = ({k: v.detach().clone() for k, v in state.items()}, [dict(r) for r in history])
        self._keep(key, entry)
        if self.disk is not None:
            self.disk.save_probe(key, *entry)

    def _keep(self, key: str, entry: Probe) -> None:
        self._store[key] = entry
        self._store.move_to_end(key)
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)

    def clear(self) -> None:
        """Forget every probe in memory and the hit counts (a disk store keeps its files)."""
        self._store.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)


def _has_val(rows: list[dict]) -> bool:
    return all("val_accuracy" in r for r in rows)


def replay(rows: list[dict], phase: str, evaluated: bool) -> list[dict]:
    """A cached probe's history rows as this fit would have written them: its own phase name
    ("train" for the linear_probe row, "probe" inside sft* / lp_ft) and validation accuracy only
    when it scores one. The rest (loss, train accuracy, validation accuracy) does not depend on
    who fitted the probe: the same steps on the same features, whatever evaluates between them."""
    out = []
    for row in rows:
        r = {**row, "phase": phase}
        if not evaluated:
            r.pop("val_accuracy", None)
        out.append(r)
    return out


def fit_probe(
    features: Callable[[torch.Tensor], torch.Tensor],
    d: int,
    y: torch.Tensor,
    num_classes: int,
    hp: HParams,
    seed: int,
    precision: str,
    result: FitResult,
    *,
    phase: str,
    cache_key: str | None = None,
    probes: ProbeCache | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The linear probe: Linear(d, C) on frozen features, `hp.steps` steps; its state dict.

    Its initialisation and batch order come from `seed` alone (not from the global RNG), so
    the linear_probe row and the probe inside an sft run of the same data are one model.
    `probes` with a `cache_key`: served from (and kept in) that cache."""
    device = y.device
    cache = probes if cache_key is not None else None
    if cache is not None and (hit := cache.get(cache_key, need_val=evaluate is not None)) is not None:
        # the record and the progress rows are the same whether the probe was fitted here or
        # earlier (in this process or another): replay its rows, as this fit would have written them
        result.probe_cache_hit = True
        for row in replay(hit[1], phase, evaluate is not None):
            result.history.append(row)
            if on_progress is not None:
                on_progress(row)  # a pruner sees the reports of a fit it did not watch, as if it had
        return {k: v.clone() for k, v in hit[0].items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(d, num_classes)
    head = head.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    before = len(result.history)
    train_steps(
        [{"params": list(head.parameters())}],
        hp,
        len(y),
        lambda idx, g: head(features(idx)),
        y,
        gen,
        precision,
        result,
        phase,
        train_mode=lambda: head.train(),
        evaluate=None if evaluate is None else (lambda: evaluate(head)),
        on_progress=on_progress,
    )
    state = head.state_dict()
    if cache is not None:
        cache.put(cache_key, state, result.history[before:])
    return state


def default_probe(hp: HParams) -> HParams:
    """The probe a probe-initialised run starts from when no linear_probe row chose one
    (a single `cli.py run`): the linear_probe method's defaults, with the run's budget and batch."""
    from bench.models.methods import METHODS

    return HParams().update(**METHODS.get("linear_probe").defaults, steps=hp.steps, batch_size=hp.batch_size)
