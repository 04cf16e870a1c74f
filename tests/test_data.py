"""bench.data: loading (safely), label fractions, augmentation.

Why these tests: every number the suite reports rests on the data being the data
(nothing executed while reading it, a broken copy refused), on label fractions being
stratified and nested for one seed (so methods see the same images), and on the
augmentation being the article's crop + flip and nothing else.
"""

from __future__ import annotations

import os
import pickle
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import CLASSES, FOLDER, augment, label_split, load_cifar10, safe_unpickle
from bench.registry import UserError

# ---------------------------------------------------------------- helpers


def _copy(src: Path, dst: Path) -> Path:
    """A private, writable copy of a data directory (the session fixture stays intact)."""
    shutil.copytree(src / FOLDER, dst / FOLDER)
    return dst


def _rewrite(folder: Path, name: str, change: Callable[[dict], None]) -> None:
    path = folder / FOLDER / name
    with open(path, "rb") as f:
        batch = pickle.load(f)
    change(batch)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    """A shuffled label vector with counts[c] images of class c."""
    y = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


def _per_class(labels: torch.Tensor, idx: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(labels[idx], minlength=num_classes).tolist()


# ---------------------------------------------------------------- loading


def test_loads_synthetic_folder_as_uint8_tensors(synthetic_dir: Path) -> None:
    with pytest.warns(UserWarning, match="md5 sums differ"):
        data = load_cifar10(synthetic_dir, download_missing=False)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (3000, 3, 32, 32)
    assert data.train_y.dtype == torch.int64 and data.train_y.shape == (3000,)
    assert torch.bincount(data.train_y).tolist() == [300] * 10
    assert data.classes == CLASSES and data.num_classes == 10
    assert not data.official and len(data.fingerprint) == 16
    assert data.test_reads == 0
    tx, ty = data.test()
    assert data.test_reads == 1, "test() must count its readers"
    assert tx.dtype == torch.uint8 and tx.shape == (200, 3, 32, 32) and torch.bincount(ty).tolist() == [20] * 10
    # The pixels are the file's pixels, in its order (rows of 3072 = R, G, B planes).
    with open(synthetic_dir / FOLDER / "data_batch_2", "rb") as f:
        batch = pickle.load(f)
    n = len(batch["labels"])
    assert torch.equal(data.train_x[n : 2 * n], torch.from_numpy(batch["data"]).reshape(n, 3, 32, 32))
    assert data.train_y[n : 2 * n].tolist() == batch["labels"]


class _RunsShell:
    """Unpickling this calls os.system (pickle stores it as posix.system / nt.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _RunsEval:
    """Unpickling this calls builtins.eval on a string that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval], ids=["os.system", "builtins.eval"])
def test_restricted_unpickler_refuses_code(payload: type, synthetic_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"data": payload(marker), "labels": [0]}, protocol=4)
    # The plain pickle module would run it: that is what makes the payload a real test.
    pickle.loads(evil)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        safe_unpickle(evil)
    assert not marker.exists()

    root = _copy(synthetic_dir, tmp_path / "evil")
    (root / FOLDER / "data_batch_3").write_bytes(evil)
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar10(root, download_missing=False)
    assert not marker.exists(), "the crafted pickle ran code"


def test_corrupt_batch_is_a_user_error(synthetic_dir: Path, tmp_path: Path) -> None:
    """A truncated file or a dict without 'data' is bad input (one line), not a traceback."""
    root = _copy(synthetic_dir, tmp_path / "truncated")
    path = root / FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="test_batch"):
        load_cifar10(root, download_missing=False)

    root = _copy(synthetic_dir, tmp_path / "nodata")
    _rewrite(root, "data_batch_1", lambda b: b.pop("data"))
    with pytest.raises(UserError, match="data_batch_1"):
        load_cifar10(root, download_missing=False)


def _wrong_shape(b: dict) -> None:
    b["data"] = b["data"][:, :3000]


def _label_out_of_range(b: dict) -> None:
    b["labels"][0] = 10


def _negative_label(b: dict) -> None:
    b["labels"][0] = -1


def _unbalanced(b: dict) -> None:
    b["labels"][b["labels"].index(3)] = 4  # one image moves from class 3 to class 4


def _wrong_dtype(b: dict) -> None:
    b["data"] = b["data"].astype(np.float32)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_wrong_shape, "shape"),
        (_wrong_dtype, "dtype"),
        (_label_out_of_range, "labels outside"),
        (_negative_label, "labels outside"),
        (_unbalanced, "class counts"),
    ],
)
def test_structurally_broken_copy_is_refused(
    damage: Callable[[dict], None], message: str, synthetic_dir: Path, tmp_path: Path
) -> None:
    root = _copy(synthetic_dir, tmp_path / "broken")
    _rewrite(root, "data_batch_4", damage)
    with pytest.raises(UserError, match=message) as info:
        load_cifar10(root, download_missing=False)
    assert "\n" not in str(info.value)


def test_wrong_class_names_are_refused(synthetic_dir: Path, tmp_path: Path) -> None:
    root = _copy(synthetic_dir, tmp_path / "names")
    _rewrite(root, "batches.meta", lambda b: b.__setitem__("label_names", list(reversed(CLASSES))))
    with pytest.raises(UserError, match="class names"):
        load_cifar10(root, download_missing=False)


def _offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every urllib request fail as it does without a network; return the URLs tried."""
    tried: list[str] = []

    def refuse(request: object, *args: object, **kwargs: object) -> None:
        tried.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return tried


def test_missing_folder_offline_is_one_line_naming_folder_and_remedy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tried = _offline(monkeypatch)
    root = tmp_path / "absent"
    with pytest.raises(UserError) as info:
        load_cifar10(root)
    message = str(info.value)
    assert tried, "the loader should have tried the download"
    assert "\n" not in message
    assert str(root / FOLDER) in message
    assert "make_cifar10.py" in message and "internet" in message
    assert not root.exists(), "a failed download must leave nothing behind"

    existing = tmp_path / "empty"
    existing.mkdir()
    with pytest.raises(UserError):
        load_cifar10(existing)
    assert existing.is_dir() and not any(existing.iterdir()), "an existing folder stays, empty"


def test_missing_folder_without_download(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not in"):
        load_cifar10(tmp_path, download_missing=False)


# ---------------------------------------------------------------- label fractions

COUNTS = [500, 480, 503, 517, 499, 450, 520, 505, 495, 531]  # uneven on purpose


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 1.0])
def test_fraction_is_stratified(fraction: float) -> None:
    labels = _labels(COUNTS)
    split = label_split(labels, fraction, seed=0)
    assert _per_class(labels, split.labelled) == [round(fraction * n) for n in COUNTS]
    assert len(torch.unique(split.labelled)) == len(split.labelled)


def test_fractions_are_nested_for_one_seed() -> None:
    labels = _labels(COUNTS)
    for seed in range(3):
        small, mid, full = (set(label_split(labels, p, seed).labelled.tolist()) for p in (0.01, 0.1, 1.0))
        assert small < mid < full
        assert full == set(range(len(labels)))


def test_split_is_deterministic_and_depends_on_the_seed() -> None:
    labels = _labels(COUNTS)
    a, b = label_split(labels, 0.1, seed=3), label_split(labels, 0.1, seed=3)
    for part in ("labelled", "train", "val"):
        assert torch.equal(getattr(a, part), getattr(b, part))
    c = label_split(labels, 0.1, seed=4)
    assert not torch.equal(a.labelled, c.labelled)
    assert len(set(a.labelled.tolist()) & set(c.labelled.tolist())) < len(a.labelled)


@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.1, 1.0])
def test_validation_split_is_stratified_disjoint_and_inside_the_subset(fraction: float) -> None:
    labels = _labels(COUNTS)
    split = label_split(labels, fraction, seed=1)
    train, val = set(split.train.tolist()), set(split.val.tolist())
    assert not train & val
    assert train | val == set(split.labelled.tolist())
    kept = _per_class(labels, split.labelled)
    val_counts = _per_class(labels, split.val)
    assert val_counts == [max(1, round(0.2 * k)) for k in kept]
    assert min(val_counts) >= 1 and min(_per_class(labels, split.train)) >= 1


def test_large_validation_fraction_still_leaves_training_images() -> None:
    labels = _labels([10] * 10)
    split = label_split(labels, 0.2, seed=0, val_fraction=0.9)  # 2 kept per class
    assert _per_class(labels, split.train) == [1] * 10
    assert _per_class(labels, split.val) == [1] * 10


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_is_refused(fraction: float) -> None:
    with pytest.raises(UserError, match=r"outside \(0, 1\]"):
        label_split(_labels(COUNTS), fraction, seed=0)


def test_fraction_leaving_a_class_without_two_images_is_refused() -> None:
    labels = _labels([100] * 9 + [250])
    with pytest.raises(UserError, match="class 0.*at least 2 per class"):
        label_split(labels, 0.01, seed=0)  # 1 image of classes 0..8
    label_split(labels, 0.02, seed=0)  # 2 each: fine


# ---------------------------------------------------------------- augmentation


def _images(n: int, seed: int = 0) -> torch.Tensor:
    """Random images with no zero pixel, so a crop window is identified by its content."""
    return torch.randint(1, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_augment_keeps_shape_and_dtype() -> None:
    x = _images(8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    x = _images(200)
    out = augment(x, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    found: list[tuple[int, int, bool]] = []
    for i in range(len(x)):
        windows = {(oy, ox): padded[i, :, oy : oy + 32, ox : ox + 32] for oy in range(9) for ox in range(9)}
        matches = [
            (oy, ox, flip)
            for (oy, ox), win in windows.items()
            for flip in (False, True)
            if torch.equal(out[i], win.flip(2) if flip else win)
        ]
        assert len(matches) == 1, f"image {i} is not exactly one (possibly flipped) window of the padded image"
        found.append(matches[0])
    offsets = {(oy, ox) for oy, ox, _ in found}
    assert len(offsets) > 40, "crop offsets should spread over the 9 x 9 possible shifts"
    assert {oy for oy, _, _ in found} == set(range(9)) and {ox for _, ox, _ in found} == set(range(9))


def test_flip_happens_about_half_the_time() -> None:
    x = _images(4000)
    out = augment(x, torch.Generator().manual_seed(2), pad=0)  # no shift: out is x or x mirrored
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())
    rate = float(mirrored.float().mean())
    assert 0.45 < rate < 0.55, rate  # 6 standard deviations of a fair coin over 4000 images


def test_augment_is_deterministic_under_a_generator_seed() -> None:
    x = _images(64)
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
