"""Frozen-backbone features: one pass over the images (`encode_all`) and a content-keyed cache
of such passes (`FeatureCache`), so the trials of one sweep cell encode their images once."""

from __future__ import annotations

import hashlib
import struct
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
    """Backbone features for every image, in eval mode, as fp32 (batch: `eval_batch` of the device at the
    network's input resolution); `meter` counts the images."""
    batch = batch or eval_batch(x.device, net.adapter.resolution)
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


def fingerprint_all(h: Any, tensors: list[torch.Tensor], device_side: bool | None = None) -> None:
    """Feed every tensor's dtype, shape, layout and content to `h`.

    On the CPU (all tensors there, `device_side` not asked): their bytes (`fingerprint`), as the
    keys of every store written so far. Elsewhere the bytes stay on the device: each tensor's
    metadata goes to `h`, and their content as one 128-bit digest computed on the device
    (`device_digest`), read back in one transfer for all of them, instead of copying weights,
    images and features to the host to hash them on every fit (on a GPU that copy cost more than
    the probe fit it was for). A key stays a function of the content: a hit is what recomputing gives."""
    if device_side is None:
        device_side = any(t.device.type != "cpu" for t in tensors)
    if not device_side:
        for t in tensors:
            fingerprint(h, t)
        return
    parts = []
    for t in tensors:
        t = t.detach()
        if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
            t = t.permute(0, 2, 3, 1)
            h.update(b"channels_last")
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        parts.append(t.contiguous().view(-1).view(torch.uint8))
    h.update(b"device-digest")
    if parts:
        device = parts[0].device
        lanes = device_digest(torch.cat([p.to(device) for p in parts])).tolist()  # the one transfer
        h.update(struct.pack("<2q", *lanes))


_MASK = [(1 << (64 - s)) - 1 for s in range(64)]  # logical right shift of int64 by s: (z >> s) & _MASK[s]
_C1, _C2 = -4658895280553007687, -7723592293110705685  # splitmix64's multipliers as signed int64
_SEEDS = (0x243F6A8885A308D3, 0x13198A2E03707344)  # two independent 64-bit lanes: a 128-bit digest
DIGEST_CHUNK = 1 << 22  # words per chunk: bounds the temporaries (a few times 32 MB)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 (wrapping arithmetic): a bijection that spreads every input bit."""
    z = (z ^ ((z >> 30) & _MASK[30])) * _C1
    z = (z ^ ((z >> 27) & _MASK[27])) * _C2
    return z ^ ((z >> 31) & _MASK[31])


def device_digest(data: torch.Tensor, chunk: int = DIGEST_CHUNK) -> torch.Tensor:
    """A 128-bit digest (two int64) of a uint8 tensor's bytes, computed where the tensor is.

    Each 32-bit word w at position i becomes the 64-bit value (i << 32) + w, distinct for every
    (position, word), is mixed by splitmix64's bijective finaliser (seeded per lane) and summed
    with wrapping: a change of any byte, or two words swapped, changes each lane like a fresh
    random value (collision odds about 2**-128 for data that is not built to collide). The byte
    length is part of the digest (the last word is zero-padded). Not a cryptographic hash: the
    caches' keys need "different content, different key", not resistance to an adversary."""
    n = data.numel()
    pad = (-n) % 4
    if pad:
        data = torch.cat([data, data.new_zeros(pad)])
    words = data.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    lanes = torch.zeros(2, dtype=torch.int64, device=data.device)
    for start in range(0, len(words), chunk):
        w = words[start : start + chunk]
        z = w + (torch.arange(start, start + len(w), dtype=torch.int64, device=data.device) << 32)
        for lane, seed in enumerate(_SEEDS):
            lanes[lane] += _mix(z ^ seed).sum()
    lanes[0] += _mix(torch.tensor(n, dtype=torch.int64, device=data.device) ^ _SEEDS[0])
    return lanes


class FeatureCache:
    """Frozen-backbone features shared by the fits that are given it, least recently used out.

    Why: a sweep trains hundreds of heads on the same frozen backbone and the same
    images (every linear_probe and sft-with-multiplier-0 trial, and the probe phase of
    every sft / lp_ft trial); only the head's hyperparameters change. The key is a hash
    of what the features depend on (backbone weights and BatchNorm statistics, input
    adapter, precision, device, images), never of names, so a hit returns exactly what
    `encode_all` would: a scratch backbone with another seed, or a backbone that has
    been trained, is another key. On a CPU the bytes are hashed (SHA-256, roughly 1 GB/s
    here: about 50 ms for ResNet-18's weights, once per fit); on a GPU they are digested
    where they are (`fingerprint_all`), with one transfer of 16 bytes per key.

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
        fingerprint_all(h, [*net.backbone.state_dict().values(), *net.adapter.buffers()])
        return h.hexdigest()

    @classmethod
    def key(cls, net: Net, x: torch.Tensor, precision: str, net_key: str | None = None) -> str:
        """The cache key of `net`'s features of `x`: the net's key, the device and the images' content."""
        h = hashlib.sha256((net_key or cls.net_key(net, precision)).encode(), usedforsecurity=False)
        h.update(str(x.device).encode())
        fingerprint_all(h, [x])
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
