"""What many trainings in one process share (`Caches`): loaded datasets, frozen-backbone
features and fitted linear probes, in memory and optionally on disk (a `FeatureStore`, shared
with other processes and later runs).

Why explicit: the caches change speed, never results (a hit is bit-identical to
recomputing), but they are state. Whoever runs many trainings (the sweep's `Sweep`,
`perf`, the `run` command) creates one `Caches` at its entry point, with the feature
budget and the store read from the environment there (`Caches.from_env`), and passes it
to every `execute` / `fit`. A call given none gets a fresh, private one: the same results.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.data.cache import DataCache
from bench.models.backbones import BackboneCache
from bench.records import CacheCounts
from bench.registry import UserError
from bench.train.features import DEFAULT_FEATURE_CACHE_MB, FeatureCache
from bench.train.probe import ProbeCache
from bench.train.store import FeatureStore

FEATURE_CACHE_ENV = "SFT_BENCH_FEATURE_CACHE_MB"
FEATURE_STORE_ENV = "SFT_BENCH_FEATURE_STORE"
STORE_OFF = ("off", "none", "no", "false", "0")


def feature_cache_mb(environ: Mapping[str, str] | None = None) -> float:
    """The feature cache's budget in MB: SFT_BENCH_FEATURE_CACHE_MB, else the default (1024)."""
    text = (os.environ if environ is None else environ).get(FEATURE_CACHE_ENV)
    if text is None or not text.strip():
        return DEFAULT_FEATURE_CACHE_MB
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:
        raise UserError(f"{FEATURE_CACHE_ENV}={text!r} is not a size in MB (a number >= 0; 0 turns the cache off)")
    return mb


def feature_store_dir(default: Path | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the on-disk store goes: SFT_BENCH_FEATURE_STORE (a folder, or "off"), else `default`
    (None: no store). Only an owner that names a default (the sweep) gets one: `perf`'s cold
    measurements and a single `run` stay in memory whatever the environment says."""
    if default is None:
        return None
    text = ((os.environ if environ is None else environ).get(FEATURE_STORE_ENV) or "").strip()
    if not text:
        return default
    if text.lower() in STORE_OFF:
        return None
    return Path(text).expanduser()


@dataclass
class Caches:
    """The feature cache, the probe cache, the loaded datasets and the built backbones of one owner,
    and the on-disk `store` behind the first two when given (`Caches(store=FeatureStore(dir))`): a
    memory miss reads it, a computation is written to it, so other processes and later runs reuse it."""

    features: FeatureCache = field(default_factory=FeatureCache)
    probes: ProbeCache = field(default_factory=ProbeCache)
    data: DataCache = field(default_factory=DataCache)
    store: FeatureStore | None = None
    backbones: BackboneCache = field(default_factory=BackboneCache)

    def __post_init__(self) -> None:
        if self.store is not None:
            self.features.disk = self.probes.disk = self.store

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, default_store: Path | None = None) -> Caches:
        """Caches as the environment asks (SFT_BENCH_FEATURE_CACHE_MB, SFT_BENCH_FEATURE_STORE): for
        entry points. `default_store`: the owner's store folder, which the environment may move or
        turn off; None: no store."""
        folder = feature_store_dir(default_store, environ)
        store = None if folder is None else FeatureStore(folder)
        return cls(features=FeatureCache(feature_cache_mb(environ)), store=store)

    def counts(self) -> CacheCounts:
        """A snapshot of the hit and miss counters (per process, since creation or `clear`)."""
        f, p = self.features, self.probes
        return CacheCounts(f.hits, f.misses, f.hit_images, f.miss_images, p.hits, p.misses)

    def clear(self) -> None:
        """Forget features and probes in memory (not the datasets, not the store's files): perf's
        cold measurements start here."""
        self.features.clear()
        self.probes.clear()
