"""The real CIFAR-10 (built from ../shared/data) through the loader and one short real run.

Why: the synthetic set proves the mechanics; only real images show that the loader reads
the real layout, that the offline EfficientNet-Lite0 weights are ImageNet weights (its
own classifier recognises CIFAR objects), and that a pretrained linear probe reaches the
accuracy it should. Skipped, with the reason, where ../shared/data is absent.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch

from bench.data import CLASSES, load_cifar10
from bench.models.backbones import build_backbone, get_backbone
from bench.models.methods import InputAdapter
from bench.run_config import make_config
from bench.train.run import execute, get_data

pytestmark = pytest.mark.slow  # real CIFAR-10 (60,000 images) built and read
CPU = torch.device("cpu")

# ImageNet-1k classes that are a CIFAR-10 class (deer has no ImageNet counterpart).
IMAGENET = {
    "airplane": {404, 405, 812, 895, 908},  # airliner, airship, space shuttle, warplane, wing
    "automobile": {407, 436, 468, 479, 511, 573, 575, 581, 609, 627, 656, 661, 717, 751, 817},
    "bird": set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147)),
    "cat": set(range(281, 294)),  # domestic and wild cats
    "dog": set(range(151, 269)),
    "frog": {30, 31, 32},
    "horse": {339, 603},  # sorrel, horse cart
    "ship": {403, 472, 484, 510, 554, 576, 625, 628, 693, 724, 780, 814, 833, 871, 913, 914},
    "truck": {555, 569, 675, 717, 734, 757, 864, 867},
}


@pytest.fixture(scope="module")
def real_data(real_data_dir: Path):  # noqa: ANN201 (bench.data.Cifar10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_data(real_data_dir)


def test_loader_reads_all_60000_images(real_data_dir: Path) -> None:
    with pytest.warns(UserWarning, match="md5 sums differ"):  # the shared copy is JPEG-derived
        data = load_cifar10(real_data_dir, download_missing=False)
    assert data.classes == CLASSES and not data.official
    assert data.train_x.shape == (50_000, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert torch.bincount(data.train_y, minlength=10).tolist() == [5_000] * 10
    test_x, test_y = data.test()
    assert test_x.shape == (10_000, 3, 32, 32) and test_x.dtype == torch.uint8
    assert torch.bincount(test_y, minlength=10).tolist() == [1_000] * 10
    # Real photographs, not noise: neighbouring pixels are strongly correlated.
    img = data.train_x[:500].float()
    a, b = img[..., :, :-1].flatten(), img[..., :, 1:].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8


def test_lite0_imagenet_classifier_recognises_cifar_objects(real_data) -> None:  # noqa: ANN001
    """The package's ImageNet head on 20 test images of each class that ImageNet has, at 128 px.

    Measured: the true class is among the top-5 ImageNet labels for 0.51 of the images
    (top-1 0.27); the same network randomly initialised scores 0.09 (one label for every
    image). A weight-mapping error (swapped tensors of equal shape) gives the latter, so
    0.30 separates the two with margin either side.
    """
    spec = get_backbone("efficientnet_lite0")
    feats, head = build_backbone(spec, pretrained=True)
    net = torch.nn.Sequential(InputAdapter(spec.mean, spec.std, 128), feats, head).eval()
    test_x, test_y = real_data.test()
    idx = torch.cat([torch.nonzero(test_y == CLASSES.index(c)).flatten()[:20] for c in IMAGENET])
    with torch.inference_mode():
        logits = torch.cat([net(test_x[idx[i : i + 60]]) for i in range(0, len(idx), 60)])
    top5 = logits.topk(5, dim=1).indices.tolist()
    hits = [bool(set(top5[i]) & IMAGENET[CLASSES[int(test_y[j])]]) for i, j in enumerate(idx.tolist())]
    rate = sum(hits) / len(hits)
    assert rate > 0.30, f"ImageNet top-5 hit rate {rate:.2f}: the weights are not ImageNet weights"
    assert len(set(logits.argmax(1).tolist())) > 30, "a trained classifier spreads its labels"


def test_lite0_linear_probe_at_ten_percent_is_well_above_chance(real_data) -> None:  # noqa: ANN001
    """efficientnet_lite0, linear_probe (protocol v3: the logistic-regression probe, its L2 strength
    cross-validated, the standardisation floored at the median spread), fraction 0.1 (5,000 labels),
    seed 0, 32 px, full 10,000-image test set.

    Measured here (2026-12-06, `scripts/probe_floor.py --resolutions 32 --seeds 0 --floors 0,1
    --fraction 0.1`, one thread beside a running study): 0.4713 with the floor, 0.4538 without, in
    about 45 s each. Under protocol v2 (an SGD probe) it was 0.473, and that probe on a randomly
    initialised Lite0 scored 0.237. Threshold 0.38: nearly 4x chance (0.10), 0.09 below the measured
    accuracy for other CPUs and library versions, and well above what random features reach, so it
    fails if the pretrained weights or the probe stop working.
    """
    cfg = make_config(
        backbone="efficientnet_lite0", method="linear_probe", fraction=0.1, seed=0, resolution=32, device=CPU, data=real_data
    )
    t0 = time.perf_counter()
    rec = execute(cfg, real_data, CPU)
    seconds = time.perf_counter() - t0
    assert rec.n_train == 5_000 and rec.n_eval == 10_000
    assert rec.test_accuracy > 0.38, f"test accuracy {rec.test_accuracy:.3f} in {seconds:.0f} s"
    assert min(rec.per_class_accuracy) > 0.1, rec.per_class_accuracy
