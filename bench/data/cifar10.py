"""CIFAR-10 as uint8 tensors: the file format read safely, the md5 check, the download, a synthetic copy.

Why this shape: the whole dataset is 180 MB of uint8, so it lives on the training
device and every batch is an index into it; augmentation (the article's random crop
with 4 px padding and horizontal flip) is a handful of tensor ops on the batch, with no
per-image PIL and no DataLoader workers on the hot path.

    python ../shared/data/make_cifar10.py data     # the shared real copy, offline
    python cli.py run --data-dir data ...          # or let torchvision download it
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.cifar_files import FILE_MD5
from bench.cifar_files import fingerprint as data_fingerprint
from bench.data.splits import labelled_count
from bench.registry import UserError, check_path

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _SafeUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch needs: numpy arrays and dtypes, nothing callable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 2 pickles store byte strings this way
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR-10 format")


def safe_unpickle(data: bytes) -> object:
    return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()


def _key(d: dict, name: str) -> object:
    return d[name] if name in d else d[name.encode()]


@dataclass
class Cifar10:
    """Train and test images as uint8 [N, 3, 32, 32] with int64 labels.

    Test labels are read through `test()` only, which counts its callers, so a test
    can prove that hyperparameter search never touched them.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    _test_x: torch.Tensor
    _test_y: torch.Tensor
    classes: tuple[str, ...] = CLASSES
    fingerprint: str = ""
    official: bool = True
    test_reads: int = field(default=0)
    # a copy on another device (`to`) counts its test reads on the dataset it was copied from
    origin: Cifar10 | None = field(default=None, repr=False, compare=False)

    def labelled_count(self, fraction: float) -> int:
        """The size of the labelled subset at `fraction` (what a run config's step budget needs)."""
        return labelled_count(self.train_y, fraction)

    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        (self.origin or self).test_reads += 1
        return self._test_x, self._test_y

    def to(self, device: torch.device) -> Cifar10:
        """This dataset with every tensor on `device` (itself when they are there already). Whoever
        trains many runs moves it once (`DataCache.on`); a fold then gathers its images on the device."""
        tensors = (self.train_x, self.train_y, self._test_x, self._test_y)
        if all(t.device == device for t in tensors):
            return self
        moved = [t.to(device) for t in tensors]
        return Cifar10(
            *moved, classes=self.classes, fingerprint=self.fingerprint, official=self.official, origin=self.origin or self
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def copy(self) -> str:
        """Which copy this is, as records and reports name it (protocol v3): "official" when every file's
        md5 is the official one, else "derived" (the shared JPEG-derived copy, a synthetic set, ...)."""
        return "official" if self.official else "derived"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(root: Path) -> None:
    """Fetch the official archive through torchvision (md5-verified), or fail in one line."""
    from torchvision.datasets.utils import download_and_extract_archive

    archive = root / "cifar-10-python.tar.gz"
    created = [p for p in (root, *root.parents) if not p.exists()]  # what a failure must remove again
    had_archive = archive.exists()
    try:
        download_and_extract_archive(URL, str(root), filename=archive.name, md5=ARCHIVE_MD5)
    except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "no data"
        # Bad input leaves nothing behind: no partial archive, no folders made for it.
        if not had_archive:
            archive.unlink(missing_ok=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours): keep it and what is above it
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"CIFAR-10 is not in {root / FOLDER} and could not be downloaded ({reason}); "
            f"put the standard cifar-10-batches-py folder there (offline: "
            f"python ../shared/data/make_cifar10.py {root}) or connect to the internet"
        ) from None


def _unpickle_file(path: Path) -> object:
    """A refused or damaged pickle is bad input: one line naming the file, not a traceback."""
    try:
        return safe_unpickle(path.read_bytes())
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path} is not a CIFAR-10 batch ({exc}); re-create the folder") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, ImportError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc}); re-create the folder") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle_file(path)
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a CIFAR-10 batch (a dict was expected); re-create the folder")
    try:
        x = np.asarray(_key(d, "data"))
        y = np.asarray(_key(d, "labels"), dtype=np.int64)
    except KeyError as exc:
        raise UserError(f"{path} has no {exc} entry, so it is not a CIFAR-10 batch; re-create the folder") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path} has labels that are not integers ({exc}); re-create the folder") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(y) != len(x):
        raise UserError(f"{path} has data of shape {x.shape} and dtype {x.dtype}, not N x 3072 uint8; re-create the folder")
    return x.reshape(-1, 3, 32, 32), y


def _check_folder(root: Path, folder: Path) -> None:
    """Files where folders belong (or the reverse) are bad input with their own remedy, not a download
    that fails ("could not be downloaded") or a NotADirectoryError traceback."""
    check_path(folder, "--data-dir")
    if root.exists() and not root.is_dir():
        raise UserError(f"data folder {root} is a file, not a folder; give --data-dir the folder that holds {FOLDER}")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not the {FOLDER} folder; move it away and re-create the folder")
    for name in FILE_MD5:
        if (folder / name).exists() and not (folder / name).is_file():
            raise UserError(f"{folder / name} is not a file (a CIFAR-10 batch was expected there); re-create {folder}")


def load_cifar10(data_dir: str | Path, download_missing: bool = True) -> Cifar10:
    root = Path(data_dir)
    folder = root / FOLDER
    _check_folder(root, folder)
    missing = [f for f in FILE_MD5 if not (folder / f).is_file()]
    if missing:
        if not download_missing:
            raise UserError(
                f"CIFAR-10 is not in {folder} (missing {missing[0]}); drop --no-download to fetch the official files, or "
                f"put a cifar-10-batches-py folder there (offline here: python ../shared/data/make_cifar10.py {root})"
            )
        download(root)
    sums = {f: _md5(folder / f) for f in FILE_MD5}
    official = sums == FILE_MD5
    parts = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / "test_batch")
    meta = _unpickle_file(folder / "batches.meta")
    try:
        names = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in _key(meta, "label_names"))
    except (KeyError, TypeError) as exc:
        raise UserError(f"{folder / 'batches.meta'} has no list of label_names ({exc}); re-create the folder") from None
    if not official:
        # A local copy (like the shared JPEG-derived one): accept it only if it has
        # the structure of the real thing.
        problems = []
        if train_x.shape[1:] != (3, 32, 32) or test_x.shape[1:] != (3, 32, 32):
            problems.append(f"image shapes {train_x.shape[1:]} / {test_x.shape[1:]}")
        for name, y in (("train", train_y), ("test", test_y)):
            counts = np.bincount(y, minlength=10) if len(y) and y.min() >= 0 else None
            if counts is None or y.max() > 9:
                problems.append(f"{name} labels outside 0..9")
            elif counts.min() != counts.max() or counts.min() == 0:
                problems.append(f"{name} class counts {counts.tolist()} (CIFAR-10 has equal counts per class)")
        if names != CLASSES:
            problems.append(f"class names {names}")
        if problems:
            raise UserError(f"{folder} is not a valid CIFAR-10 copy: {'; '.join(problems)}; re-create it")
        warnings.warn(
            f"{folder}: md5 sums differ from the official files; loading it as a local copy "
            "after a structural check (shapes, dtype, labels, class counts)",
            stacklevel=2,
        )
    fingerprint = data_fingerprint(sums)
    return Cifar10(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        classes=names,
        fingerprint=fingerprint,
        official=official,
    )


def _synthetic_arrays(
    n_train_per_class: int, n_test_per_class: int, seed: int
) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """(train images [N, 3072], labels, test images, labels): class c is a coloured bar at a
    class-specific position plus noise. `n_train_per_class` is per class and per batch file (five)."""
    rng = np.random.default_rng(seed)

    def make(n_per: int) -> tuple[np.ndarray, list[int]]:
        ys = np.repeat(np.arange(10), n_per)
        rng.shuffle(ys)
        xs = rng.integers(0, 90, size=(len(ys), 3, 32, 32), dtype=np.uint8)
        for i, y in enumerate(ys):
            r0 = 3 * y
            xs[i, y % 3, r0 : r0 + 4, 4:28] = 230
            xs[i, (y + 1) % 3, 4:28, r0 : r0 + 2] = 160
        return xs.reshape(len(ys), -1), ys.tolist()

    xs, ys = make(n_train_per_class * 5)
    tx, ty = make(n_test_per_class)
    return xs, ys, tx, ty


def synthetic_cifar(root: str | Path, n_train_per_class: int = 60, n_test_per_class: int = 20, seed: int = 0) -> Path:
    """Write a small CIFAR-format folder with learnable class patterns (for tests and demos).

    Class c is a coloured bar at a class-specific position plus noise, so a tiny CNN
    learns it well above chance in seconds while augmentation still matters.
    """
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, xs: np.ndarray, ys: list[int]) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": ys, "data": xs}, f, protocol=4)

    xs, ys, tx, ty = _synthetic_arrays(n_train_per_class, n_test_per_class, seed)
    for i in range(5):
        sl = slice(i * len(ys) // 5, (i + 1) * len(ys) // 5)
        dump(f"data_batch_{i + 1}", xs[sl], ys[sl])
    dump("test_batch", tx, ty)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES), "num_cases_per_batch": len(ys) // 5, "num_vis": 3072}, f, protocol=4)
    return Path(root)


def synthetic_data(n_train_per_class: int = 60, n_test_per_class: int = 20, seed: int = 0) -> Cifar10:
    """The images `synthetic_cifar` writes, in memory (no folder): `synthetic_data(1000, 1000)` is a
    full-size CIFAR-10 (50,000 training and 10,000 test images) for speed checks (scripts/gpu_check.py)."""
    xs, ys, tx, ty = _synthetic_arrays(n_train_per_class, n_test_per_class, seed)

    def tensors(x: np.ndarray, y: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(x.reshape(-1, 3, 32, 32))), torch.tensor(y, dtype=torch.int64)

    train_x, train_y = tensors(xs, ys)
    test_x, test_y = tensors(tx, ty)
    return Cifar10(
        train_x, train_y, test_x, test_y, fingerprint=f"synthetic-{n_train_per_class}-{n_test_per_class}-{seed}", official=False
    )
