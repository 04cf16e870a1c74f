"""Datasets loaded in this process, by folder (`DataCache`).

Why an object and not a module global: a sweep runs hundreds of trainings on the same
arrays and must load them once, but what is loaded, and for how long it is kept, belongs
to whoever runs those trainings (the sweep, `perf`, the `run` command), not to an import.
"""

from __future__ import annotations

from pathlib import Path

from bench.data.cifar10 import Cifar10, load_cifar10


class DataCache:
    """CIFAR-10 arrays by resolved folder: the first `get` loads, later ones return the same object."""

    def __init__(self) -> None:
        self._store: dict[str, Cifar10] = {}

    def get(self, data_dir: str | Path, download_missing: bool = True) -> Cifar10:
        """The dataset in `data_dir`, loaded once (downloaded first when missing and allowed)."""
        key = str(Path(data_dir).resolve())
        if key not in self._store:
            self._store[key] = load_cifar10(data_dir, download_missing=download_missing)
        return self._store[key]

    def __len__(self) -> int:
        return len(self._store)
