"""A persistent, content-addressed store of frozen-backbone features and fitted linear probes
(`FeatureStore`), shared by every process that is given the same folder.

Why on disk: the in-memory caches (`FeatureCache`, `ProbeCache`) live in one process, so every
`--parallel` worker, every resume after a stop and every cell recomputed the same features and
refitted the same probes. The store keeps them under the keys those caches already use (the
SHA-256 of what the result depends on: backbone weights and BatchNorm statistics, input adapter,
precision, device and images for features; features, labels, hyperparameters, seed and precision
for probes), never under names, so a file found is exactly what recomputing would give.

    DIR/features/<key>.npy    float32 (images, feature size), then a 32-byte SHA-256 trailer
    DIR/probes/<key>.pt       {"state_dict": head tensors, "history": JSON text, "sha256": ...}

Crash safety: a file is written whole to `.<name>.<host>.<pid>.<random>.tmp` beside it (bench/files.py), fsynced,
then renamed over the final name (`os.replace`, atomic), so a reader sees no file or a whole one;
a SIGKILL mid-write leaves only the temporary file, which readers never open and `clean()`
removes (its process is dead here, or it is an hour old). Two processes writing one key both
succeed: the last rename wins, with the same bytes. A file damaged anyway (a disk error,
truncation by another program) fails its checksum or its size check and is read as a miss, then
rewritten. The store is an accelerator: a write that fails (disk full, read-only folder) is
counted and skipped, never fatal; the run's results are the same without it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from bench.files import atomic_write, stale_temp, temp_owner
from bench.history import HistoryRow

STORE_FAULT_ENV = "SFT_BENCH_TEST_STORE_PAUSE"  # tests only: seconds to sleep with half a temporary file written
STALE_TMP_SECONDS = 3600.0  # a temporary file this old is abandoned, whoever wrote it (another machine too)
_DIGEST = 32  # bytes of the SHA-256 trailer after a feature file's array


@dataclass
class StoreCounts:
    """What one process's store did: read hits, misses, files rejected as damaged, writes, failed writes."""

    hits: int = 0
    misses: int = 0
    rejected: int = 0
    writes: int = 0
    write_errors: int = 0
    last_error: str = ""


def atomic_write_chunks(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write `chunks` to a fresh temporary file beside `path` (bench/files.py: created exclusively,
    a planted link never followed), fsync it, rename it over `path`.

    The rename is the commit: a reader never sees a partial file. `SFT_BENCH_TEST_STORE_PAUSE`
    (tests) sleeps once half the bytes are on disk, so a test can kill the writer there."""
    parts = [memoryview(c).cast("B") for c in chunks]
    total = sum(len(p) for p in parts)
    pause = float(os.environ.get(STORE_FAULT_ENV) or 0)

    def write(f: IO[Any]) -> None:
        written = 0
        for part in parts:
            if pause and written < total // 2 <= written + len(part):
                cut = total // 2 - written
                f.write(part[:cut])
                f.flush()
                time.sleep(pause)
                part = part[cut:]
            f.write(part)
            written += len(part)

    atomic_write(path, write, "wb", fsync=True)


class FeatureStore:
    """Features and probes on disk under `root`, keyed by content (see the module's docstring).

    Nothing is written until the first `save_*` (a read-only monitor that holds one touches
    nothing); `clean()` is for a worker's start."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.counts = StoreCounts()

    def feature_path(self, key: str) -> Path:
        return self.root / "features" / f"{key}.npy"

    def probe_path(self, key: str) -> Path:
        return self.root / "probes" / f"{key}.pt"

    # ------------------------------------------------------------ features

    def load_features(self, key: str, rows: int, device: torch.device) -> torch.Tensor | None:
        """The features stored under `key` (memory-mapped on CPU, copied to other devices), or None:
        absent, or damaged (wrong size, shape or checksum: counted in `rejected`, rewritten later)."""
        path = self.feature_path(key)
        if not path.is_file():
            self.counts.misses += 1
            return None
        try:
            # copy-on-write map: pages shared with every process reading the file, and a caller that
            # wrote into the tensor would change its own copy, never the file
            arr = np.load(path, mmap_mode="c", allow_pickle=False)
            data_end = arr.offset + arr.nbytes
            with open(path, "rb") as f:
                f.seek(data_end)
                trailer = f.read(_DIGEST + 1)
            ok = arr.dtype == np.float32 and arr.ndim == 2 and arr.shape[0] == rows and len(trailer) == _DIGEST
            ok = ok and hashlib.sha256(memoryview(arr).cast("B")).digest() == trailer
        except (OSError, ValueError, EOFError, TypeError):
            ok = False
        if not ok:
            self.counts.rejected += 1
            self.counts.misses += 1
            return None
        self.counts.hits += 1
        out = torch.from_numpy(arr)
        return out if device.type == "cpu" else out.to(device)

    def save_features(self, key: str, feats: torch.Tensor) -> None:
        """Keep `feats` (float32, 2-D) under `key`; a failed write is counted, never raised."""
        if feats.dtype != torch.float32 or feats.dim() != 2:
            return
        arr = np.ascontiguousarray(feats.detach().cpu().numpy())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(arr))
        body = memoryview(arr).cast("B")
        self._write(self.feature_path(key), [header.getvalue(), body, hashlib.sha256(body).digest()])

    # ------------------------------------------------------------ probes

    def load_probe(self, key: str) -> tuple[dict[str, torch.Tensor], list[HistoryRow]] | None:
        """(head state on CPU, history rows) stored under `key`, or None (absent or damaged)."""
        path = self.probe_path(key)
        if not path.is_file():
            self.counts.misses += 1
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            state, history = blob["state_dict"], blob["history"]
            ok = isinstance(state, dict) and isinstance(history, str) and blob["sha256"] == _probe_digest(state, history)
            rows = [HistoryRow.from_dict(r) for r in json.loads(history)] if ok else None
        except Exception:  # noqa: BLE001  (any damage: zip, pickle, key or JSON errors alike are a miss)
            ok, rows = False, None
        if not ok or not isinstance(rows, list):
            self.counts.rejected += 1
            self.counts.misses += 1
            return None
        self.counts.hits += 1
        return state, rows

    def save_probe(self, key: str, state: dict[str, torch.Tensor], history: list[HistoryRow]) -> None:
        """Keep a fitted probe (its tensors on CPU) and its history rows (their JSON form) under `key`."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        text = json.dumps([r.to_dict() for r in history])
        buf = io.BytesIO()
        torch.save({"state_dict": state, "history": text, "sha256": _probe_digest(state, text)}, buf)
        self._write(self.probe_path(key), [buf.getbuffer()])

    # ------------------------------------------------------------ upkeep

    def _write(self, path: Path, chunks: list[bytes | memoryview]) -> None:
        try:
            atomic_write_chunks(path, chunks)
            self.counts.writes += 1
        except OSError as exc:
            self.counts.write_errors += 1
            self.counts.last_error = f"{path}: {exc.strerror or exc}"

    def clean(self, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
        """Remove temporary files of writers that died: their process is gone from this machine, or
        the file has not changed for `older_than` seconds (a writer elsewhere finishes in seconds)."""
        removed = []
        now = time.time()
        for sub in ("features", "probes"):
            folder = self.root / sub
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                try:
                    if stale_temp(p, older_than, now) or (temp_owner(p.name) is None and now - p.lstat().st_mtime > older_than):
                        p.unlink()
                        removed.append(p)
                except OSError:
                    pass
        return removed

    def summary(self) -> str:
        """One line for a log: where the store is and what this process did with it."""
        c = self.counts
        line = f"feature store {self.root}: {c.hits} read, {c.misses} missing, {c.writes} written"
        if c.rejected:
            line += f", {c.rejected} damaged file(s) ignored"
        if c.write_errors:
            line += f", {c.write_errors} write(s) failed (last: {c.last_error})"
        return line


def _probe_digest(state: dict[str, torch.Tensor], history: str) -> str:
    """SHA-256 of a probe's tensors (names, dtypes, shapes, bytes) and its history text."""
    h = hashlib.sha256(history.encode(), usedforsecurity=False)
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()
