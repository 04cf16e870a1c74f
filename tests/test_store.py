"""The on-disk feature and probe store (bench/train/store.py): a warm store gives bit-identical
runs and says so, the linear probe is fitted once for linear_probe, sft* and lp_ft across
processes, a SIGKILL mid-write leaves nothing a reader accepts, a damaged file is a miss, two
writers of one key both succeed, and a `--parallel` sweep with a resume shares one store and
writes the rows of a sweep without it.

Tiny backbone, synthetic data (tests/conftest.py), one torch thread. "Another process" is a
fresh `Caches` on the same folder (what a worker or a resume starts with) or a real child.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from configs import tiny_config
from test_postgres import GRID

from bench.history import HistoryRow
from bench.models.kinds import METHODS
from bench.records import RunRecord
from bench.run_config import RunConfig
from bench.train.caches import Caches, feature_store_dir
from bench.train.context import FitContext
from bench.train.features import FeatureCache
from bench.train.run import SaveTo, execute
from bench.train.store import STORE_FAULT_ENV, FeatureStore

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# what may differ between two runs of one config: where the time went and where the work came from
VOLATILE = {
    "train_seconds",
    "feature_seconds",
    "eval_seconds",
    "eval_images_per_second",
    "wall_seconds",
    "images_per_second",
    "peak_memory_mb",
    "feature_cache_hits",
    "probe_cache_hit",
    "backbone_images",  # what a hit saves: fewer with a warm store (asserted below)
}


def config(data, method: str, stage: str = "final", probe_of: RunConfig | None = None) -> RunConfig:  # noqa: ANN001
    """A 3-step tiny run at 20% of the labels; probe-initialised methods start from `probe_of`'s
    probe settings (the linear_probe row's, as the sweep passes them)."""
    probe = probe_of.probe if probe_of is not None and METHODS.get(method).probe_init else None
    return tiny_config(data, method, 0.2, 0, overrides={"steps": 3}, stage=stage, probe=probe)


def run(cfg: RunConfig, data, caches: Caches, preds: Path | None = None) -> RunRecord:  # noqa: ANN001
    return execute(cfg, data, CPU, FitContext(caches=caches), SaveTo(predictions=preds))


def same(a: RunRecord, b: RunRecord) -> None:
    """Two records of one config agree on everything but time and cache provenance, bit for bit."""
    da, db = a.to_dict(), b.to_dict()
    assert {k: v for k, v in da.items() if k not in VOLATILE} == {k: v for k, v in db.items() if k not in VOLATILE}


def test_a_warm_store_gives_bit_identical_runs_and_reports_hits(tmp_path: Path, synthetic_data) -> None:  # noqa: ANN001
    lp = config(synthetic_data, "linear_probe")
    methods = ["linear_probe", "sft", "lp_ft", "sft-mlp-frozen"]
    cfgs = [config(synthetic_data, m, stage, lp) for stage in ("final", "trial") for m in methods]
    plain = [run(c, synthetic_data, Caches(), tmp_path / f"plain-{i}.csv") for i, c in enumerate(cfgs)]
    cold_caches = Caches(store=FeatureStore(tmp_path / "store"))
    cold = [run(c, synthetic_data, cold_caches, tmp_path / f"cold-{i}.csv") for i, c in enumerate(cfgs)]
    warm_caches = Caches(store=FeatureStore(tmp_path / "store"))  # another process: nothing in memory
    warm = [run(c, synthetic_data, warm_caches, tmp_path / f"warm-{i}.csv") for i, c in enumerate(cfgs)]
    for i, (p, c, w) in enumerate(zip(plain, cold, warm, strict=True)):
        same(p, c)
        same(c, w)
        assert (tmp_path / f"plain-{i}.csv").read_bytes() == (tmp_path / f"warm-{i}.csv").read_bytes()
        assert w.feature_cache_hits > 0, w.method  # every method here encodes with the frozen backbone
        assert w.probe_cache_hit, w.method  # all four fit or start from the linear probe
        assert w.backbone_images < p.backbone_images, w.method  # the store's saving, in images through B
    assert cold_caches.store.counts.writes > 0 and cold_caches.store.counts.hits == 0
    counts = warm_caches.store.counts
    assert counts.hits > 0 and counts.writes == 0 and counts.rejected == 0
    assert not _tmp_files(tmp_path / "store")  # whole files only: no temporary file is left behind


def test_the_probe_linear_probe_fitted_is_reused_by_sft_and_lp_ft_in_another_process(
    tmp_path: Path,
    synthetic_data,  # noqa: ANN001
) -> None:
    store = tmp_path / "store"
    for stage in ("trial", "final"):
        lp = config(synthetic_data, "linear_probe", stage)
        first = run(lp, synthetic_data, Caches(store=FeatureStore(store)))
        assert not first.probe_cache_hit
        for method in ("sft", "lp_ft"):
            cfg = config(synthetic_data, method, stage, lp)
            later = run(cfg, synthetic_data, Caches(store=FeatureStore(store)))
            assert later.probe_cache_hit, (stage, method)
            same(later, run(cfg, synthetic_data, Caches()))  # the rows it replays are the ones it would write
            assert {r["phase"] for r in later.history} == {"probe_cv", "probe", "train"}


def test_a_probe_fitted_by_sft_serves_the_linear_probe_row(
    tmp_path: Path,
    synthetic_data,  # noqa: ANN001
) -> None:
    """The probe is deterministic and scores no validation split itself (protocol v3), so the one
    sft's trial fitted is the linear_probe trial's, from the store, bit for bit."""
    store = tmp_path / "store"
    lp = config(synthetic_data, "linear_probe", "trial")
    sft = config(synthetic_data, "sft", "trial", lp)
    assert not run(sft, synthetic_data, Caches(store=FeatureStore(store))).probe_cache_hit
    row = run(lp, synthetic_data, Caches(store=FeatureStore(store)))
    assert row.probe_cache_hit and row.val_accuracy is not None
    same(row, run(lp, synthetic_data, Caches()))


# ---------------------------------------------------------------- crashes and damage

CHILD = """
import sys, torch
from bench.train.run import execute, get_data
from bench.run_config import make_config
from bench.train.caches import Caches
from bench.train.context import FitContext
from bench.train.store import FeatureStore
torch.set_num_threads(1)
data = get_data(sys.argv[1])
cfg = make_config(backbone="tiny", method="linear_probe", fraction=0.2, seed=0, resolution=32,
                  device=torch.device("cpu"), data=data, overrides={"steps": 3})
execute(cfg, data, torch.device("cpu"), FitContext(caches=Caches(store=FeatureStore(sys.argv[2]))))
"""

WRITER = """
import sys, torch
from bench.train.store import FeatureStore
torch.manual_seed(0)
FeatureStore(sys.argv[1]).save_features("k" * 64, torch.randn(3000, 64))
"""


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")] if folder.is_dir() else []


def _wait(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the child ended (code {proc.returncode}) first: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for the child")


def test_a_sigkill_mid_write_leaves_nothing_a_reader_accepts(tmp_path: Path, synthetic_dir: Path, synthetic_data) -> None:  # noqa: ANN001
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(synthetic_dir), str(store)],
        env={**ENV, STORE_FAULT_ENV: "60"},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait(lambda: any(p.stat().st_size > 0 for p in _tmp_files(store)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (tmp,) = _tmp_files(store)
    assert not [p for p in store.rglob("*") if p.is_file() and p != tmp]  # half a temporary file, nothing else
    cfg = config(synthetic_data, "linear_probe")
    again = Caches(store=FeatureStore(store))
    assert again.store.clean() == [tmp] and not tmp.exists()  # its writer is dead: removed at the next start
    same(run(cfg, synthetic_data, again), run(cfg, synthetic_data, Caches()))
    assert again.store.counts.hits == 0 and again.store.counts.writes > 0
    warm = Caches(store=FeatureStore(store))
    assert run(cfg, synthetic_data, warm).probe_cache_hit and warm.store.counts.hits > 0


def test_damaged_files_are_misses_and_are_rewritten(tmp_path: Path, tiny_net, synthetic_data) -> None:  # noqa: ANN001
    store = FeatureStore(tmp_path)
    cache = FeatureCache(disk=store)
    net, x = tiny_net("linear_probe"), synthetic_data.train_x[:300]
    feats, hit = cache.encode(net, x, "fp32")
    key = cache.key(net, x, "fp32")
    path = store.feature_path(key)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    for damage in (good[: len(good) // 2], good[:40], b"", bytes(flipped), good + b"x", b"\x93NUMPY garbage"):
        path.write_bytes(damage)
        assert store.load_features(key, len(x), CPU) is None  # a miss, never an exception
        fresh = FeatureCache(disk=store)
        again, hit = fresh.encode(net, x, "fp32")
        assert not hit and torch.equal(again, feats)
        assert path.read_bytes() == good  # rewritten whole
    assert store.counts.rejected == 12
    state, rows = {"weight": torch.randn(10, 8), "bias": torch.randn(10)}, [HistoryRow(phase="train", loss=0.5)]
    store.save_probe("p" * 64, state, rows)
    whole = store.probe_path("p" * 64).read_bytes()
    for damage in (whole[: len(whole) // 2], b"", whole[:-30], bytes(len(whole))):
        store.probe_path("p" * 64).write_bytes(damage)
        assert store.load_probe("p" * 64) is None
    store.save_probe("p" * 64, state, rows)
    loaded, history = store.load_probe("p" * 64)
    assert history == rows and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_two_processes_writing_one_key_both_succeed(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env={**ENV, STORE_FAULT_ENV: "1"}, cwd=REPO)
        for _ in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    torch.manual_seed(0)
    expected = torch.randn(3000, 64)
    assert torch.equal(FeatureStore(tmp_path).load_features("k" * 64, 3000, CPU), expected)
    assert not _tmp_files(tmp_path)


def test_the_store_is_placed_by_its_owner_and_the_environment(tmp_path: Path) -> None:
    default = tmp_path / "cache"
    assert feature_store_dir(default, {}) == default
    assert feature_store_dir(default, {"SFT_BENCH_FEATURE_STORE": "off"}) is None
    assert feature_store_dir(default, {"SFT_BENCH_FEATURE_STORE": str(tmp_path / "x")}) == tmp_path / "x"
    assert feature_store_dir(None, {"SFT_BENCH_FEATURE_STORE": str(tmp_path / "x")}) is None  # perf, run: memory only
    assert Caches.from_env({}).store is None
    caches = Caches.from_env({}, default_store=default)
    assert caches.store is not None and caches.features.disk is caches.probes.disk is caches.store
    assert not default.exists()  # nothing is written before the first feature


# ---------------------------------------------------------------- a sweep: --parallel 2, killed, resumed

# GRID (tests/test_postgres.py) with the frozen MLP probe instead of finetune: linear_probe (no search:
# protocol v3) and sft-mlp-frozen at 10%, one shared search of 3 seeded random trials, 2 seeds, 3 steps a
# run. Every item of it encodes with the frozen backbone and fits the probe: what the store keeps.
STORE_GRID = GRID.replace('"finetune", "linear_probe"', '"sft-mlp-frozen", "linear_probe"')


def _sweep(config: Path, data_dir: Path, results: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "cli.py"), "sweep", "--config", str(config), "--data-dir", str(data_dir)]
    cmd += ["--results-dir", str(results), "--quiet", "--threads", "1", "--no-report", *extra]
    return subprocess.run(cmd, env={**ENV, **(env or {})}, cwd=REPO, capture_output=True, text=True, timeout=600)


def _rows(path: Path) -> list[tuple]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted((r["method"], r["fraction"], r["seed"], r["run_id"], r["test_accuracy"], r["macro_f1"]) for r in rows)


@pytest.mark.slow
def test_parallel_workers_and_a_resume_share_one_store_and_write_the_same_rows(tmp_path: Path, synthetic_dir: Path) -> None:
    config = tmp_path / "g.toml"
    config.write_text(STORE_GRID)
    ref = _sweep(config, synthetic_dir, tmp_path / "plain", env={"SFT_BENCH_FEATURE_STORE": "off"})
    assert ref.returncode == 0, ref.stdout + ref.stderr
    assert not (tmp_path / "plain" / "g" / "cache").exists()

    # both workers are killed when they start their first final run, then the same command resumes
    results = tmp_path / "stored"
    killed = _sweep(config, synthetic_dir, results, "--parallel", "2", env={"SFT_BENCH_TEST_FAULT": "final:1:KILL"})
    assert killed.returncode != 0, killed.stdout + killed.stderr
    store = results / "g" / "cache"
    assert list((store / "features").glob("*.npy")) and list((store / "probes").glob("*.pt"))
    done = _sweep(config, synthetic_dir, results, "--parallel", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _rows(results / "g" / "runs.csv") == _rows(tmp_path / "plain" / "g" / "runs.csv")
    for i in (0, 1):  # each worker of the resume read and wrote the one store
        assert f"feature store {store}:" in (results / "g" / "logs" / f"worker-{i}.log").read_text()

    # another experiment pointed at that store: every frozen feature and probe is read, not computed
    other = _sweep(config, synthetic_dir, tmp_path / "again", env={"SFT_BENCH_FEATURE_STORE": str(store)})
    assert other.returncode == 0, other.stdout + other.stderr
    assert _rows(tmp_path / "again" / "g" / "runs.csv") == _rows(tmp_path / "plain" / "g" / "runs.csv")
    import json

    for rec in (tmp_path / "again" / "g" / "records").glob("*.json"):
        r = json.loads(rec.read_text())
        if r["method"] == "linear_probe":
            assert r["probe_cache_hit"] and r["feature_cache_hits"] == 2, r["run_id"]  # labelled subset and test set
    assert re.search(rf"feature store {re.escape(str(store))}: [1-9]\d* read, 0 missing, 0 written", other.stdout)
    # the journal's per-trial cache counts (perf --sweep's hit rates) say the same: nothing computed again
    from bench.perf.sweep_cost import sweep_cost

    again, plain = sweep_cost(tmp_path / "again" / "g"), sweep_cost(tmp_path / "plain" / "g")
    for stage, counts in (("searches", again.trial_cache), ("final runs", again.final_cache)):
        assert counts.feature_misses == 0 and counts.feature_hits > 0, (stage, counts)
        assert counts.probe_misses == 0, (stage, counts)
    assert plain.trial_cache.feature_misses > 0 and plain.trial_cache.feature_miss_images > 0


@pytest.mark.parametrize(
    ("backbone", "method"),
    [("tiny", "linear_probe"), ("tiny", "sft-mlp-frozen"), ("tiny", "sft-side-frozen"), ("efficientnet_lite0", "linear_probe")],
)
def test_evaluating_a_frozen_row_from_its_features_is_the_full_forward_pass(backbone: str, method: str, synthetic_data) -> None:  # noqa: ANN001
    """`run_fold` scores frozen rows on the test set from (stored) features: the same numbers as
    running the whole network, because `encode_all` and `predict` cut the same batches."""
    from bench.models.backbones import build_backbone, get_backbone
    from bench.models.hparams import HParams
    from bench.models.methods import Backbone, InputAdapter, build_net
    from bench.train.evaluate import predict
    from bench.train.features import encode_all

    spec = get_backbone(backbone)
    if not spec.available()[0]:
        pytest.skip(f"{backbone}'s weights are not installed")
    torch.manual_seed(0)
    feats, head = build_backbone(spec, True)
    backbone, adapter = Backbone(feats, head, spec.feature_dim), InputAdapter(spec.mean, spec.std, 32)
    net = build_net(method, backbone, adapter, 10, HParams())
    net = net.to(memory_format=torch.channels_last)
    x, _ = synthetic_data.test()  # 200 images: a batch of 128, then one of 72
    assert torch.equal(predict(net, x, "fp32", feats=encode_all(net, x, "fp32")), predict(net, x, "fp32"))
