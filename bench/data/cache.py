"""Datasets loaded in this process, by folder (`DataCache`).

Why an object and not a module global: a sweep runs hundreds of trainings on the same
arrays and must load them once, but what is loaded, and for how long it is kept, belongs
to whoever runs those trainings (the sweep, `perf`, the `run` command), not to an import.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.data.cifar10 import Cifar10, load_cifar10


class DataCache:
    """CIFAR-10 arrays by resolved folder: the first `get` loads, later ones return the same object;
    `on` gives a dataset's copy on a training device, made once (180 MB of uint8: on a GPU the data is
    resident, and a fold is a gather there instead of a gather on the host and a copy per fold)."""

    def __init__(self) -> None:
        self._store: dict[str, Cifar10] = {}
        self._on: dict[tuple[int, str], tuple[Cifar10, Cifar10]] = {}  # (id, device) -> (dataset, its copy)

    def get(self, data_dir: str | Path, download_missing: bool = True) -> Cifar10:
        """The dataset in `data_dir`, loaded once (downloaded first when missing and allowed)."""
        key = str(Path(data_dir).resolve())
        if key not in self._store:
            self._store[key] = load_cifar10(data_dir, download_missing=download_missing)
        return self._store[key]

    def on(self, data: Cifar10, device: torch.device) -> Cifar10:
        """`data` on `device`: itself where it already is (a CPU run: no copy), else the copy made by
        the first call for this dataset and device. The dataset is kept with its copy, so its id is
        never reused for another while the entry lives."""
        key = (id(data), str(device))
        if key not in self._on:
            moved = data.to(device)
            if moved is data:
                return data
            self._on[key] = (data, moved)
        return self._on[key][1]

    def __len__(self) -> int:
        return len(self._store)
