"""CIFAR-10 on the training device: loading (`cifar10`), label fractions (`splits`), batch augmentation (`batches`),
loaded datasets kept by their owner (`cache`).

Why this shape: the whole dataset is 180 MB of uint8, so it lives on the training device and
every batch is an index into it; augmentation (the article's random crop with 4 px padding and
horizontal flip) is a handful of tensor ops on the batch, with no per-image PIL and no DataLoader
workers on the hot path.

    python ../shared/data/make_cifar10.py data     # the shared real copy, offline
    python cli.py run --data-dir data ...          # or let torchvision download it
"""

from bench.data.batches import augment
from bench.data.cache import DataCache
from bench.data.cifar10 import CLASSES, FOLDER, Cifar10, load_cifar10, safe_unpickle, synthetic_cifar, synthetic_data
from bench.data.splits import Split, cv_folds, label_split, labelled_count

__all__ = [
    "CLASSES",
    "FOLDER",
    "Cifar10",
    "DataCache",
    "Split",
    "augment",
    "cv_folds",
    "label_split",
    "labelled_count",
    "load_cifar10",
    "safe_unpickle",
    "synthetic_cifar",
    "synthetic_data",
]
