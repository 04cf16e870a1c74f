"""The linear probe of a fit (`fit_probe`: the converged logistic regression of bench/train/logreg.py
on frozen features) and a cache of fitted probes (`ProbeCache`).

Why one function for both: `linear_probe`'s row, and the H_f of every sft* and lp_ft run of
the same images, are one model (methods.md); it is fitted once and reused. The probe is
deterministic for given features, labels and `ProbeSpec` (protocol v3), so it has no seed and
no search: its strength is chosen by cross-validation inside the fit.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

from bench.history import HistoryRow
from bench.models.hparams import ProbeSpec
from bench.train.features import fingerprint_all
from bench.train.logreg import accuracy, choose_probe, probe_state
from bench.train.loop import FitResult

if TYPE_CHECKING:
    from bench.train.store import FeatureStore

Probe = tuple[dict[str, torch.Tensor], list[HistoryRow]]  # (head state dict, history rows of its fit)


class ProbeCache:
    """Fitted linear probes (head state dicts and the history rows of their fit), least recently
    used out, optionally backed by a `FeatureStore` on disk (`disk`: shared by processes and resumes).

    The key is the content of the features and labels and the probe's settings, so a hit is
    exactly what fitting again would give (tests/test_engine.py). Whoever runs many trainings (a
    sweep, `perf`) owns one (see `Caches`) and gives it to every fit."""

    def __init__(self, max_items: int = 256, disk: FeatureStore | None = None) -> None:
        self.max_items = max_items
        self.disk = disk
        self._store: OrderedDict[str, Probe] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(feats: torch.Tensor, y: torch.Tensor, spec: ProbeSpec, num_classes: int) -> str:
        """What a fitted probe depends on: its features, labels, settings and class count."""
        h = hashlib.sha256(usedforsecurity=False)
        h.update(json.dumps(["logreg-v3", spec.as_data(), num_classes, str(feats.device)], sort_keys=True).encode())
        fingerprint_all(h, [feats, y])  # on a GPU: digested there, one 16-byte transfer
        return h.hexdigest()

    def get(self, key: str) -> Probe | None:
        """(head state, history rows) of a probe fitted before, from memory or disk, or None (a miss)."""
        entry = self._store.get(key)
        if entry is not None:
            self._store.move_to_end(key)
            self.hits += 1
            return entry
        if self.disk is not None and (entry := self.disk.load_probe(key)) is not None:
            self._keep(key, entry)
            self.hits += 1
            return entry
        self.misses += 1
        return None

    def put(self, key: str, state: dict[str, torch.Tensor], history: list[HistoryRow]) -> None:
        """Keep a copy of a fitted probe (the caller goes on training its own tensors), on disk too
        (the rows are frozen: shared, not copied)."""
        entry = ({k: v.detach().clone() for k, v in state.items()}, list(history))
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


def fit_probe(
    feats: torch.Tensor, y: torch.Tensor, num_classes: int, spec: ProbeSpec, probes: ProbeCache | None = None
) -> tuple[dict[str, torch.Tensor], list[HistoryRow], bool]:
    """The linear probe on frozen features `feats` [n, d] with labels `y`: (Linear(d, C)'s state dict,
    the history rows of its fit, whether `probes` served it).

    Served from (and kept in) `probes` when given. The history has one row per cross-validated
    strength and one for the final fit (`record_probe` puts them in a fit's result)."""
    key = ProbeCache.key(feats, y, spec, num_classes) if probes is not None else None
    hit = probes.get(key) if probes is not None and key is not None else None
    if hit is not None:
        return {k: v.clone().to(y.device) for k, v in hit[0].items()}, list(hit[1]), True
    choice = choose_probe(feats, y, num_classes, spec)
    state = {k: v.to(y.device) for k, v in probe_state(choice).items()}
    rows = choice.history(accuracy(choice.fit, feats, y))
    if probes is not None and key is not None:
        probes.put(key, state, rows)
    return state, rows, False


def record_probe(result: FitResult, rows: list[HistoryRow], hit: bool) -> None:
    """A fitted probe in a fit's result: its rows, and its `probe_steps` (the L-BFGS iterations of the
    final fit and of its cross-validation: compute beside the step budget S), strength and convergence."""
    final = rows[-1]
    assert final.iterations is not None and final.l2 is not None, "a probe's last row is its final fit"
    result.probe_cache_hit = result.probe_cache_hit or hit
    result.history.extend(rows)
    result.probe_steps = int(final.iterations) + int(final.cv_iterations or 0)
    result.probe_l2 = float(final.l2)
    result.probe_converged = bool(final.converged)
