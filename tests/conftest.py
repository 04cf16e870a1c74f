"""Shared fixtures: a synthetic CIFAR-format folder, the real CIFAR-10 folder, the CPU thread count.

Why one thread: the suite runs on machines whose few cores are shared with other jobs, and
the models in the tests are tiny. With torch's default of one thread per core, every small
op waits on busy cores (a tiny-backbone run measured 15 s with 2 threads on 2 loaded cores
against 1.3 s with 1 thread). `SFT_BENCH_TEST_THREADS=N` overrides it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MAKE_CIFAR10 = SHARED_DATA / "make_cifar10.py"

torch.set_num_threads(int(os.environ.get("SFT_BENCH_TEST_THREADS", "1")))

# Every sweep projects its cost from measured rates, remembered in a cache file: one per test session
# (shared with the sweeps the tests start as subprocesses), never the user's own ~/.cache/sft-bench.
if "SFT_BENCH_RATE_CACHE" not in os.environ:
    import tempfile

    os.environ["SFT_BENCH_RATE_CACHE"] = str(Path(tempfile.mkdtemp(prefix="sft-bench-rates-")) / "rates.json")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding a synthetic `cifar-10-batches-py` (3,000 train, 200 test images).

    Written once per session by `bench.data.synthetic_cifar` with its defaults; treat it as
    read-only (tests that need a damaged copy make their own).
    """
    from bench.data import synthetic_cifar

    return synthetic_cifar(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def synthetic_data(synthetic_dir: Path):  # noqa: ANN201 (bench.data.Cifar10)
    """`synthetic_dir` loaded once (`bench.train.run.get_data` caches it per process too)."""
    from bench.train.run import get_data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # md5 sums of a synthetic folder differ from the official ones
        return get_data(synthetic_dir)


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 (60,000 images) built from ../shared/data into a session temp dir.

    Skipped, with the reason, where ../shared/data is not beside the repository (it is
    provided by the project, not by pip).
    """
    if not MAKE_CIFAR10.is_file():
        pytest.skip(f"real CIFAR-10 not available: {MAKE_CIFAR10} is absent (the shared data folder is not beside the repo)")
    out = tmp_path_factory.mktemp("cifar10")
    proc = subprocess.run([sys.executable, str(MAKE_CIFAR10), str(out)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{MAKE_CIFAR10} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


@pytest.fixture(scope="session")
def tiny_net():  # noqa: ANN201 (a factory)
    """`tiny_net(method, hp=None, seed=0)`: the method's Net on the `tiny` backbone, 10 classes, 32 px.

    The same construction as a run (bench.train.run.build_model) without a RunConfig, so tests
    can train it with bench.train.fit.fit directly. The seed fixes the new layers' init.
    """
    from bench.models.backbones import build_backbone, get_backbone
    from bench.models.hparams import HParams
    from bench.models.methods import Backbone, InputAdapter, build_net

    def make(method: str, hp: HParams | None = None, seed: int = 0):  # noqa: ANN202
        spec = get_backbone("tiny")
        torch.manual_seed(seed)
        feats, head = build_backbone(spec, True)
        backbone, adapter = Backbone(feats, head, spec.feature_dim), InputAdapter(spec.mean, spec.std, 32)
        return build_net(method, backbone, adapter, 10, hp or HParams())

    return make
