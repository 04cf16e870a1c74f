"""What many trainings in one process share (`Caches`): loaded datasets, frozen-backbone
features and fitted linear probes.

Why explicit: the caches change speed, never results (a hit is bit-identical to
recomputing), but they are state. Whoever runs many trainings (the sweep's `Sweep`,
`perf`, the `run` command) creates one `Caches` at its entry point, with the feature
budget read from the environment there (`Caches.from_env`), and passes it to every
`execute` / `fit`. A call given none gets a fresh, private one: the same results.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.data.cache import DataCache
from bench.registry import UserError
from bench.train.features import DEFAULT_FEATURE_CACHE_MB, FeatureCache
from bench.train.probe import ProbeCache

FEATURE_CACHE_ENV = "SFT_BENCH_FEATURE_CACHE_MB"


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


@dataclass
class Caches:
    """The feature cache, the probe cache and the loaded datasets of one owner."""

    features: FeatureCache = field(default_factory=FeatureCache)
    probes: ProbeCache = field(default_factory=ProbeCache)
    data: DataCache = field(default_factory=DataCache)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Caches:
        """Caches sized as the environment asks (SFT_BENCH_FEATURE_CACHE_MB): for entry points."""
        return cls(features=FeatureCache(feature_cache_mb(environ)))

    def clear(self) -> None:
        """Forget features and probes (not the datasets): perf's cold measurements start here."""
        self.features.clear()
        self.probes.clear()
