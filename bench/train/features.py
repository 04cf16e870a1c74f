"""Frozen-backbone features: one pass over the images (`encode_all`) and a content-keyed cache
of such passes (`FeatureCache`), so the trials of one sweep cell encode their images once."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from bench.models.methods import Net
from bench.train.device import autocast, eval_batch
from bench.train.meter import BackboneMeter, count

if TYPE_CHECKING:
    from bench.train.store import FeatureStore

DEFAULT_FEATURE_CACHE_MB = 1024.0  # SFT_BENCH_FEATURE_CACHE_MB overrides it, read at the entry point (caches.py)


@torch.inference_mode()
def encode_all(
    net: Net, x: torch.Tensor, precision: str, batch: int | None = None, meter: BackboneMeter | None = None
) -> torch.Tensor:
    """Backbone features for every image, in eval mode, as fp32 (batch: `eval_batch` of the device);
    `meter` counts the images."""
    batch = batch or eval_batch(x.device)
    count(meter, len(x))
    was = net.training
    net.eval()
    with autocast(x.device, precision):
        out = torch.cat([net.encode(x[i : i + batch]).float() for i in range(0, len(x), batch)])
    net.train(was)
    return out


def fingerprint(h: Any, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape, layout and bytes to `h`, without copying dense CPU tensors."""
    t = t.detach().cpu()
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)  # the same memory, now contiguous; the layout is part of the key
        h.update(b"channels_last")
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))


class FeatureCache:
    """Frozen-backbone features shared by the fits that are given it, least recently used out.

    Why: a sweep trains hundreds of heads on the same frozen backbone and the same
    images (every linear_probe and sft-with-multiplier-0 trial, and the probe phase of
    every sft / lp_ft trial); only the head's hyperparameters change. The key is a hash
    of what the features depend on (backbone weights and BatchNorm statistics, input
    adapter, precision, device, images), never of names, so a hit returns exactly what
    `encode_all` would: a scratch backbone with another seed, or a backbone that has
    been trained, is another key. Hashing (SHA-256, accelerated on x86) runs at roughly
    1 GB/s here: about 50 ms for ResNet-18's weights, once per fit.

    Whoever runs many trainings (a sweep, `perf`) owns one (see `Caches`); its size is
    given here, never read from the environment by this class. `disk`: a `FeatureStore` behind
    the memory (shared by processes and resumes): a memory miss reads it, a computation is
    written to it.
    """

    def __init__(self, max_mb: float = DEFAULT_FEATURE_CACHE_MB, disk: FeatureStore | None = None) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.disk = disk
        self._store: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.hit_images = 0  # images whose features a hit served (a grid's hit rate, in the unit of its cost)
        self.miss_images = 0

    @staticmethod
    def net_key(net: Net, precision: str) -> str:
        """What the features depend on besides the images (compute once per fit: it hashes the weights)."""
        h = hashlib.sha256(usedforsecurity=False)
        h.update(f"{precision}|{type(net.backbone).__name__}|{getattr(net.adapter, 'resolution', '')}".encode())
        for t in net.backbone.state_dict().values():
            fingerprint(h, t)
        for t in net.adapter.buffers():
            fingerprint(h, t)
        return h.hexdigest()

    @classmethod
    def key(cls, net: Net, x: torch.Tensor, precision: str, net_key: str | None = None) -> str:
        """The cache key of `net`'s features of `x`: the net's key, the device and the images' content."""
        h = hashlib.sha256((net_key or cls.net_key(net, precision)).encode(), usedforsecurity=False)
        h.update(str(x.device).encode())
        fingerprint(h, x)
        return h.hexdigest()

    def encode(
        self, net: Net, x: torch.Tensor, precision: str, net_key: str | None = None, meter: BackboneMeter | None = None
    ) -> tuple[torch.Tensor, bool]:
        """(features, whether they came from the cache). Callers must not modify them. `meter` counts
        the images a miss puts through the backbone."""
        k = self.key(net, x, precision, net_key)
        if k in self._store:
            self._store.move_to_end(k)
            self.hits += 1
            self.hit_images += len(x)
            return self._store[k], True
        if self.disk is not None and (feats := self.disk.load_features(k, len(x), x.device)) is not None:
            self.hits += 1
            self.hit_images += len(x)
            self._keep(k, feats)
            return feats, True
        self.misses += 1
        self.miss_images += len(x)
        feats = encode_all(net, x, precision, meter=meter)
        if self.disk is not None:
            self.disk.save_features(k, feats)
        self._keep(k, feats)
        return feats, False

    def _keep(self, k: str, feats: torch.Tensor) -> None:
        """Keep `feats` in memory within the budget, evicting the least recently used."""
        size = feats.numel() * feats.element_size()
        if size <= self.max_bytes:
            self._store[k] = feats
            while sum(v.numel() * v.element_size() for v in self._store.values()) > self.max_bytes:
                self._store.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry in memory and the hit counts (perf's cold measurements start here; a
        `disk` store keeps its files: perf never gives its caches one)."""
        self._store.clear()
        self.hits = self.misses = self.hit_images = self.miss_images = 0

    def __len__(self) -> int:
        return len(self._store)
