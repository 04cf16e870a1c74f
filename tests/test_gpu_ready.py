"""Issue 18, "every path correct on CUDA by construction", checked on this CPU: what a GPU run depends on
and a CPU can show. torch.compile's graph counts in a real run and over a sweep-like sequence of
trials; the host syncs per training step; the caches keyed without a host round trip; the data
moved to the device once; `--parallel`'s device per worker; the backbone built once per process;
the CUDA defaults resolved from a `torch.device("cuda")` object.

Why here: none of these is visible in a CPU result (CPU runs are bit-identical with and without
them), and a GPU is not always at hand; each test would fail if its property broke.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import torch
from configs import tiny_config

from bench.models.kinds import METHODS
from bench.run_config import make_config
from bench.train.compiling import compile_spec
from bench.train.context import FitContext, FitData
from bench.train.run import execute

CPU = torch.device("cpu")


# ---------------------------------------------------------------- torch.compile


@dataclass
class CountingBackend:
    """A torch.compile backend (registered as "counting"): how many graphs it compiled, how often they
    ran, and an optional sleep per compilation (a slow compiler, to see where its time is booked)."""

    compiles: int = 0
    calls: int = 0
    sleep: float = 0.0
    shapes: list[tuple] = field(default_factory=list)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiles += 1
        self.shapes.append(tuple(tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor))[:1])
        time.sleep(self.sleep)

        def run(*args: object) -> object:
            self.calls += 1
            return gm.forward(*args)

        return run

    def zero(self, sleep: float = 0.0) -> None:
        # not `reset`: torch._dynamo.reset() calls a cached backend's `reset`
        self.compiles = self.calls = 0
        self.sleep = sleep
        self.shapes.clear()


COUNTING = CountingBackend()
torch._dynamo.register_backend(COUNTING, name="counting")


@pytest.fixture
def counting() -> CountingBackend:
    """The "counting" backend, its counts at zero and dynamo's caches empty (no graph from an earlier test)."""
    torch._dynamo.reset()
    COUNTING.zero()
    yield COUNTING
    torch._dynamo.reset()


def _run(data, method: str, overrides: dict, *, compile: bool | str = False, stage: str = "final", seed: int = 0, **kw):  # noqa: ANN001, ANN202
    spec = METHODS.get(method)
    cfg = make_config(
        backbone="tiny",
        method=method,
        fraction=kw.pop("fraction", 0.2),
        seed=seed,
        resolution=kw.pop("resolution", 32),
        device=CPU,
        data=data,
        overrides=overrides,
        stage=stage,
        **kw,
    )
    assert spec.trains_backbone
    return execute(cfg, data, CPU, FitContext(compile=compile_spec(compile)))


def test_one_run_compiles_one_graph_and_every_step_runs_through_it(synthetic_data, counting: CountingBackend) -> None:  # noqa: ANN001
    """A real `execute` with compile: one graph (the encoder at the run's batch shape), run by the
    warm-up and then by every one of the S steps (no fallback to eager), and the images through the
    backbone counted exactly as without compile (the counter is no longer part of the model)."""
    from bench.train.compiling import graph_count

    before = graph_count()
    eager = _run(synthetic_data, "finetune", {"steps": 12, "batch_size": 64})
    assert counting.compiles == 0 and eager.compiled_graphs == 0 and eager.compile_seconds == 0
    rec = _run(synthetic_data, "finetune", {"steps": 12, "batch_size": 64}, compile="counting")
    assert counting.compiles == 1 and graph_count() - before == 1 and rec.compiled_graphs == 1
    assert counting.calls == 1 + 12  # the warm-up, then each step
    assert counting.shapes == [((64, 3, 32, 32),)]
    assert rec.backbone_images == eager.backbone_images == 12 * 64 + rec.n_eval
    assert rec.compile_seconds > 0


def test_a_sweep_like_sequence_of_trials_reuses_its_graphs(synthetic_data, counting: CountingBackend) -> None:  # noqa: ANN001
    """Trials of every method that trains the backbone, other seeds, fractions, learning rates, head
    widths and a side branch: one graph for all of them (the encoder's shapes do not depend on the
    method); BatchNorm in train mode is a second graph, and nothing else is."""
    trials = [
        ("finetune", {"lr": 0.01}, 0, 0.2),
        ("sft", {"lr": 0.001, "backbone_lr_mult": 0.1}, 1, 0.2),
        ("sft-mlp", {"branch_width": 64}, 0, 0.1),
        ("sft-mlp", {"branch_width": 1024}, 1, 0.1),
        ("sft-side", {"branch_width": 64}, 0, 0.2),
        ("lp_ft", {"label_smoothing": 0.1}, 2, 0.2),
        ("article_sft", {}, 0, 0.1),
    ]
    steps = 0
    for method, hp, seed, fraction in trials:
        overrides = {"steps": 4, "batch_size": 32, **hp}
        _run(synthetic_data, method, overrides, compile="counting", stage="trial", seed=seed, fraction=fraction)
        steps += 4
    assert counting.compiles == 1
    assert counting.calls == steps + len(trials)  # every step compiled, plus one warm-up per fit
    _run(synthetic_data, "finetune", {"steps": 4, "batch_size": 32, "bn": "train"}, compile="counting", stage="trial")
    assert counting.compiles == 2


def test_compile_time_is_reported_apart_from_the_steps(synthetic_data, counting: CountingBackend) -> None:  # noqa: ANN001
    """A compiler that takes 1.5 s: the record's compile_seconds has it, train_seconds does not."""
    counting.zero(sleep=1.5)
    rec = _run(synthetic_data, "finetune", {"steps": 4, "batch_size": 32}, compile="counting")
    assert rec.compile_seconds >= 1.5
    assert rec.train_seconds < 1.0


def test_compile_settings_are_read_one_way() -> None:
    """True is inductor's default mode; a mode name is inductor in that mode (reduce-overhead: CUDA
    graphs); anything else is a backend; off is None."""
    from bench.train.compiling import CompileSpec, compile_spec

    assert compile_spec(False) is None and compile_spec("off") is None and compile_spec(None) is None
    assert compile_spec(True) == CompileSpec("inductor", None) == compile_spec("default")
    assert compile_spec("reduce-overhead") == CompileSpec("inductor", "reduce-overhead")
    assert compile_spec("reduce-overhead").cuda_graphs and not compile_spec(True).cuda_graphs
    assert compile_spec("aot_eager") == CompileSpec("aot_eager", None)


def test_reduce_overhead_degrades_to_a_plain_compile_on_cpu(synthetic_data) -> None:  # noqa: ANN001
    """CUDA graphs (compile mode "reduce-overhead") on a CPU: inductor compiles without them, the run
    trains and counts as usual, one graph."""
    torch._dynamo.reset()
    rec = _run(synthetic_data, "finetune", {"steps": 3, "batch_size": 32}, compile="reduce-overhead")
    assert rec.compiled_graphs == 1 and rec.backbone_images == 3 * 32 + rec.n_eval
    torch._dynamo.reset()


def test_perf_measures_the_compiled_path_the_sweep_takes(synthetic_data, counting: CountingBackend, monkeypatch) -> None:  # noqa: ANN001
    """`perf --compile` (its (b), the suite's loop) and a sweep's run both reach the encoder compiled
    by `fit`, with the same spec, and share its graph."""
    import bench.train.fit
    from bench.perf import PerfCase, PerfSettings
    from bench.perf.measure import Bench
    from bench.train.compiling import CompileSpec

    real = bench.train.fit.compile_encoder
    specs: list[tuple[str, CompileSpec]] = []

    def spy(net, spec):  # noqa: ANN001, ANN202
        specs.append((type(net).__name__, spec))
        return real(net, spec)

    monkeypatch.setattr(bench.train.fit, "compile_encoder", spy)
    settings = PerfSettings.quick(batch_size=32, compile="counting", rounds=0)
    units = Bench(PerfCase("tiny", 32), synthetic_data, CPU, settings).suite_units()
    assert units and specs == [("Net", CompileSpec("counting"))]
    _run(synthetic_data, "finetune", {"steps": 4, "batch_size": 32}, compile="counting")
    assert specs == [("Net", CompileSpec("counting"))] * 2
    assert counting.compiles == 1  # perf's graph is the run's


def test_sweep_with_compile_logs_its_graph_count(tmp_path, synthetic_dir) -> None:  # noqa: ANN001
    """A whole (small) grid with compile on: at most two graphs (bn is not searched: one), and the
    sweep says how many it compiled."""
    from bench.sweep.experiment import read_toml, resolve
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    toml = tmp_path / "g.toml"
    toml.write_text(
        'backbones = ["tiny"]\nmethods = ["finetune", "linear_probe", "sft"]\nfractions = [0.1, 0.2]\nseeds = 2\n'
        'trials = 2\nsteps = 3\ncompile = "counting"\n[search]\nmode = "pooled"\npool = 2\n[hparams]\nbatch_size = 32\n'
    )
    raw = read_toml(toml)
    raw.update(data_dir=str(synthetic_dir), results_dir=str(tmp_path / "results"))
    exp = resolve(raw)
    lines: list[str] = []

    class Log:
        def status(self, status: object) -> None: ...
        def item_start(self, item: object) -> None: ...
        def epoch(self, row: object) -> None: ...
        def item_end(self, item: object, outcome: str) -> None: ...
        def log(self, message: str) -> None:
            lines.append(message)

    torch._dynamo.reset()
    COUNTING.zero()
    status = Sweep(exp, get_data(synthetic_dir), CPU, progress=Log()).run()
    torch._dynamo.reset()
    assert status.complete
    assert COUNTING.compiles == 1
    final = [line for line in lines if line.startswith("compile (counting):")]
    assert final and final[-1].startswith("compile (counting): 1 graph(s) compiled by this process over ")


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("run", ["--compile-mode", "fast"], "--compile-mode 'fast' is not one of: default, reduce-overhead"),
        ("run", ["--compile-mode", "reduce-overhead", "--backbone", "nope"], "backbone 'nope'"),
        ("sweep", ["--compile-mode", "fast", "--experiment", "quick"], "--compile-mode 'fast' is not one of"),
        ("perf", ["--compile-mode", "fast"], "--compile-mode 'fast' is not one of"),
    ],
)
def test_bad_compile_settings_are_one_line_exit_2(command: str, flags: list[str], message: str, synthetic_dir) -> None:  # noqa: ANN001
    """An unknown compile mode is refused before any work, as every bad input is (one line, exit 2)."""
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(cli.app, [command, *flags, "--data-dir", str(synthetic_dir)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_a_compile_backend_torch_does_not_know_is_bad_input(tmp_path, synthetic_dir) -> None:  # noqa: ANN001
    """compile = "inductr" in an experiment file: one line, exit 2, before anything is written."""
    from typer.testing import CliRunner

    import cli

    toml = tmp_path / "g.toml"
    toml.write_text('backbones = ["tiny"]\nmethods = ["finetune"]\nfractions = [0.1]\nseeds = 1\ntrials = 1\n')
    toml.write_text(toml.read_text() + 'compile = "inductr"\n')
    args = ["sweep", "--config", str(toml), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2 and "compile 'inductr' is neither a mode" in result.output, result.output
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- host syncs


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_step_loop_waits_for_the_device_only_at_its_history_rows(optimizer: str, synthetic_data, tiny_net) -> None:  # noqa: ANN001
    """Counted between two optimiser steps (HostSyncs: reads, copies to the host, data-dependent
    shapes, device syncs): the documented number in every step (none), the documented number at
    each history row, with augmentation, gradient clipping, label smoothing and a validation split on."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bench.budget import report_interval
    from bench.models.hparams import HParams
    from bench.train.fit import fit
    from bench.train.loop import SYNCS_BEFORE_STEPS, SYNCS_PER_STEP, syncs_per_row
    from bench.train.syncs import HostSyncs

    hp = HParams(steps=20, batch_size=32, lr=0.01, optimizer=optimizer, grad_clip=1.0, label_smoothing=0.1)
    x, y = synthetic_data.train_x[:200], synthetic_data.train_y[:200]
    val = (synthetic_data.train_x[200:300], synthetic_data.train_y[200:300])
    net = tiny_net("finetune", hp)
    deltas: list[int] = []
    with HostSyncs() as syncs:
        last = [syncs.total]

        def step_done(opt: object, args: object, kwargs: object) -> None:
            deltas.append(syncs.total - last[0])
            last[0] = syncs.total

        handle = register_optimizer_step_post_hook(step_done)
        try:
            result = fit(net, METHODS.get("finetune"), hp, FitData(x, y, val=val), FitContext(seed=0))
        finally:
            handle.remove()
        tail = syncs.total - last[0]
    k = report_interval(hp.steps)
    assert len(result.history) == hp.steps // k and len(deltas) == hp.steps
    row = syncs_per_row(validates=True)
    assert deltas[0] == SYNCS_BEFORE_STEPS + SYNCS_PER_STEP
    assert deltas[1:] == [SYNCS_PER_STEP + (row if step % k == 0 else 0) for step in range(1, hp.steps)]
    assert tail == row
    assert syncs.kinds["device sync"] == SYNCS_BEFORE_STEPS + 2 * len(result.history)


def test_host_syncs_are_counted_on_a_cpu_as_they_would_be_on_cuda() -> None:
    """The counter itself: each kind of host wait, once each (a test that cannot miss what it looks for)."""
    from bench.train.device import sync
    from bench.train.syncs import HostSyncs

    t = torch.arange(6.0)
    with HostSyncs() as s:
        t.sum().item()
        float(t[0])
        bool(t[1] > 0)
        t.tolist()
        t.cpu()
        t.nonzero()
        t[t > 2]
        sync(CPU)
        t * 2 + 1  # no wait
    assert s.kinds == {"read": 3, "copy to host": 2, "size from data": 2, "device sync": 1}


# ---------------------------------------------------------------- caches keyed where the data is


def _key_inputs() -> tuple:
    """The inputs of the key regression below (a fixed tiny backbone, images, features, labels)."""
    from bench.models.backbones import build_backbone, get_backbone
    from bench.models.hparams import HParams
    from bench.models.methods import Backbone, InputAdapter, build_net

    spec = get_backbone("tiny")
    torch.manual_seed(0)
    f, h = build_backbone(spec, True)
    backbone, adapter = Backbone(f, h, spec.feature_dim), InputAdapter(spec.mean, spec.std, 32)
    net = build_net("sft", backbone, adapter, 10, HParams()).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8, generator=g)
    feats = torch.randn(50, 32, generator=g)
    y = torch.randint(0, 10, (50,), generator=g)
    return net, x, feats, y


def test_cpu_cache_keys_are_the_keys_every_store_was_written_with() -> None:
    """On the CPU the keys are SHA-256 of the bytes, exactly as before the device-side digest existed
    (hex digests computed by the code before it): the feature stores of running sweeps stay valid."""
    from bench.models.hparams import ProbeSpec
    from bench.train.features import FeatureCache
    from bench.train.probe import ProbeCache

    net, x, feats, y = _key_inputs()
    assert FeatureCache.net_key(net, "fp32") == "3043e05d03745f62b81a8b9be010beca68afcd34f47b36ff1ffa892aa20f0a4b"
    assert FeatureCache.key(net, x, "fp32") == "6a3f51a7ee6a554fd567b94e78bbeb7d9a704acdb7a324efd99804d4a56cea36"
    # std_floor 0: the probe every store was written with before the floor existed (the default is 1)
    assert (
        ProbeCache.key(feats, y, ProbeSpec(std_floor=0), 10) == "a1c64f70224aabba1aa25048c49f8129b46ba532d1f26c8c99507c8c6dd85c60"
    )


def test_device_side_keys_read_back_16_bytes_and_follow_the_content() -> None:
    """The GPU path of the keys, run on CPU tensors: every weight, image and feature digested where it
    is and read back in one transfer per key (not one copy of each tensor to the host); a changed
    byte, a swapped pair of words, another layout or length is another key, equal content the same."""
    import hashlib

    from bench.train.features import device_digest, fingerprint_all
    from bench.train.syncs import HostSyncs

    net, x, feats, y = _key_inputs()
    tensors = [*net.backbone.state_dict().values(), x, feats, y]

    def key(ts: list[torch.Tensor]) -> str:
        h = hashlib.sha256()
        fingerprint_all(h, ts, device_side=True)
        return h.hexdigest()

    with HostSyncs() as syncs:
        base = key(tensors)
    assert syncs.total == 1 and syncs.kinds["copy to host"] == 1
    assert key([t.clone() for t in tensors]) == base
    changed = x.clone()
    changed[7, 1, 3, 4] ^= 1
    assert key([*tensors[:-3], changed, feats, y]) != base
    swapped = feats.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert key([*tensors[:-2], swapped, y]) != base
    assert key([*tensors[:-3], x.contiguous(memory_format=torch.channels_last), feats, y]) != base
    data = torch.randint(0, 256, (10_007,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(device_digest(data), device_digest(data, chunk=64))  # chunking is not part of it
    assert not torch.equal(device_digest(data), device_digest(data[:-1]))
    assert not torch.equal(device_digest(torch.zeros(4, dtype=torch.uint8)), device_digest(torch.zeros(8, dtype=torch.uint8)))


def test_the_dataset_goes_to_the_device_once_per_owner(synthetic_data, monkeypatch) -> None:  # noqa: ANN001
    """`DataCache.on`: one copy per dataset and device, reused by every fold and run of the owner
    (a "meta" device stands in for a GPU here); a CPU run copies nothing; the copy's test reads are
    counted on the dataset (the trial stage never reads the test set, wherever it runs)."""
    import bench.data.cifar10
    from bench.train.caches import Caches

    moves: list[str] = []
    real_to = bench.data.cifar10.Cifar10.to

    def to(self, device):  # noqa: ANN001, ANN202
        out = real_to(self, device)
        if out is not self:
            moves.append(str(device))
        return out

    monkeypatch.setattr(bench.data.cifar10.Cifar10, "to", to)
    caches = Caches()
    meta = torch.device("meta")
    first = caches.data.on(synthetic_data, meta)
    assert first.train_x.device.type == "meta" and caches.data.on(synthetic_data, meta) is first
    assert caches.data.on(synthetic_data, CPU) is synthetic_data and moves == ["meta"]
    reads = synthetic_data.test_reads
    first.test()
    assert synthetic_data.test_reads == reads + 1 and first.test_reads == 0
    # a k-fold pooled trial: every fold asks the owner's cache for the resident data
    asked: list[int] = []
    real_on = caches.data.on
    monkeypatch.setattr(caches.data, "on", lambda data, device: asked.append(id(data)) or real_on(data, device))
    overrides = {"steps": 2, "batch_size": 32}
    cfg = tiny_config(synthetic_data, "finetune", 0.2, 0, overrides=overrides, stage="trial", cv_folds=2, pool=(0, 1))
    execute(cfg, synthetic_data, CPU, FitContext(caches=caches))
    assert asked == [id(synthetic_data)] * 4 and moves == ["meta"]


# ---------------------------------------------------------------- backbones built once per process


def test_a_backbone_built_once_is_copied_bit_identically_with_the_random_state_it_left() -> None:
    """BackboneCache: the second build from the same random state is a copy of the first, equal in
    every tensor to building again, and leaves the random state the build left (the head drawn next
    is the same); another state is another build (scratch weights differ)."""
    from bench.models.backbones import BackboneCache, build_backbone, get_backbone

    spec = get_backbone("resnet18")  # torchvision, scratch: its initialisation draws from the global state
    cache = BackboneCache()

    def build(seed: int, how) -> tuple[dict, torch.Tensor]:  # noqa: ANN001
        torch.manual_seed(seed)
        feats, head = how(spec, False)
        return {**feats.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}, torch.rand(4)

    first, after_first = build(3, cache.build)
    second, after_second = build(3, cache.build)
    fresh, after_fresh = build(3, build_backbone)
    assert (cache.misses, cache.hits) == (1, 1)
    assert first.keys() == second.keys() == fresh.keys()
    assert all(torch.equal(first[k], second[k]) and torch.equal(first[k], fresh[k]) for k in first)
    assert torch.equal(after_first, after_second) and torch.equal(after_first, after_fresh)
    other, _ = build(4, cache.build)
    assert cache.misses == 2 and not torch.equal(other["net.conv1.weight"], first["net.conv1.weight"])
    small = BackboneCache(max_mb=1)  # ResNet-18 is 45 MB: built every time, nothing kept
    build(3, small.build)
    build(3, small.build)
    assert (small.misses, small.hits, len(small)) == (2, 0, 0)


def test_runs_sharing_an_owner_copy_the_backbone_and_give_the_same_record(synthetic_data) -> None:  # noqa: ANN001
    """Two runs of one seed with one owner's caches: the second copies the backbone the first built,
    and both records are the one a run with fresh caches gives (accuracy, history, images)."""
    from bench.train.caches import Caches

    cfg = tiny_config(synthetic_data, "finetune", 0.2, 5, overrides={"steps": 6, "batch_size": 32}, pretrained=False)
    caches = Caches()
    a, b = (
        execute(cfg, synthetic_data, CPU, FitContext(caches=caches)),
        execute(cfg, synthetic_data, CPU, FitContext(caches=caches)),
    )
    alone = execute(cfg, synthetic_data, CPU)
    assert (caches.backbones.misses, caches.backbones.hits) == (1, 1)
    for rec in (a, b):
        assert (rec.test_accuracy, rec.history, rec.backbone_images) == (
            alone.test_accuracy,
            alone.history,
            alone.backbone_images,
        )


def test_a_timm_spec_reads_its_config_without_building_a_model_and_runs_train_as_before(monkeypatch) -> None:  # noqa: ANN001
    """get_backbone("timm:...") builds the model on the meta device (no weights, no random draws) once
    per process; its build makes the draws the spec's CPU model used to make before it, so the
    weights and the random state after a build (the head's draws) are those of the old code."""
    import timm

    from bench.models.backbones import _timm_spec, get_backbone

    _timm_spec.cache_clear()
    devices: list[str] = []
    real = timm.create_model

    def spy(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        devices.append(str(torch.empty(0).device))  # the default device the model is built on
        return real(*a, **kw)

    monkeypatch.setattr(timm, "create_model", spy)
    state = torch.random.get_rng_state()
    spec = get_backbone("timm:resnet18")
    assert get_backbone("timm:resnet18") is spec and devices == ["meta"]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (spec.feature_dim, spec.num_pretrained_classes, spec.input_size) == (512, 1000, 224)

    torch.manual_seed(7)  # the old code: the spec's model on the CPU, then the build, then the head's draws
    real("resnet18", pretrained=False)
    old = real("resnet18", pretrained=False)
    old.reset_classifier(0)
    old_next = torch.rand(4)
    torch.manual_seed(7)
    feats, _ = spec.build(False)
    assert torch.equal(torch.rand(4), old_next)
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in feats.net.state_dict().items())


# ---------------------------------------------------------------- --parallel on a GPU machine


def test_parallel_workers_are_spread_over_the_gpus_and_share_cpu_threads_only_on_a_cpu(monkeypatch) -> None:  # noqa: ANN001
    """With the device count mocked: worker i of a CUDA sweep trains on cuda:(i % N); a sweep that
    names a GPU keeps it for every worker; CPU workers divide the cores, GPU workers do not."""
    import os

    from bench.sweep.parallel import set_threads, worker_commands, worker_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda = torch.device("cuda")
    assert worker_devices(cuda, 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices(cuda, 1) == ["cuda:0"]
    assert worker_devices(torch.device("cuda:1"), 3) == [None] * 3 and worker_devices(CPU, 2) == [None] * 2
    cmds = worker_commands(["sweep", "--worker"], cuda, 3, None)
    assert [c[c.index("--device") + 1] for c in cmds] == ["cuda:0", "cuda:1", "cuda:0"] and all(
        "--threads" not in c for c in cmds
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_devices(cuda, 6) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    threads = torch.get_num_threads()
    try:
        assert set_threads(None, cuda, 4) is None and torch.get_num_threads() == threads
        assert set_threads(None, CPU, 2) == max(1, (os.cpu_count() or 1) // 2)
        assert worker_commands(["sweep"], CPU, 2, 1) == [["sweep", "--threads", "1"]] * 2
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- timing, defaults, determinism


def test_cuda_defaults_are_resolved_from_a_cuda_device_object(synthetic_data) -> None:  # noqa: ANN001
    """`torch.device("cuda")` is enough to resolve what a CUDA run gets (no GPU needed): bf16 for
    --precision auto, an evaluation batch scaled by the resolution; a CPU keeps fp32 and 128 at
    every resolution (its results must not move)."""
    from bench.train.device import CPU_EVAL_BATCH, device_defaults, eval_batch

    cuda = torch.device("cuda")
    assert device_defaults(cuda).precision == "bf16" and device_defaults(CPU).precision == "fp32"
    assert [eval_batch(cuda, r) for r in (32, 64, 128, 224, 260, 512)] == [4096, 1024, 256, 128, 128, 128]
    assert {eval_batch(CPU, r) for r in (32, 64, 128, 224)} == {CPU_EVAL_BATCH} == {128}
    cfg = make_config(backbone="tiny", method="finetune", fraction=0.2, seed=0, resolution=32, device=cuda, data=synthetic_data)
    assert (cfg.precision, cfg.device_type) == ("bf16", "cuda")


def test_evaluation_batches_follow_the_networks_resolution(synthetic_data, tiny_net, monkeypatch) -> None:  # noqa: ANN001
    """predict and encode_all ask for the batch of their device at the network's input resolution."""
    import bench.train.evaluate
    import bench.train.features
    from bench.train.evaluate import predict
    from bench.train.features import encode_all

    asked: list[tuple[str, int]] = []
    for module in (bench.train.evaluate, bench.train.features):
        real = module.eval_batch
        monkeypatch.setattr(module, "eval_batch", lambda d, r, real=real: asked.append((d.type, r)) or real(d, r))
    net = tiny_net("finetune")
    net.adapter.resolution = 48
    x = synthetic_data.train_x[:20]
    predict(net, x, "fp32")
    encode_all(net, x, "fp32")
    assert asked == [("cpu", 48), ("cpu", 48)]


@pytest.fixture
def restore_numerics() -> None:
    """Put the process's numerical settings back to the defaults after a test that changes them."""
    import os

    from bench.numerics import Numerics, configure_numerics

    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    configure_numerics(Numerics())
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def test_deterministic_and_tf32_are_set_as_asked_and_recorded(synthetic_data, restore_numerics, monkeypatch) -> None:  # noqa: ANN001
    """--deterministic sets cuDNN's flags, torch's deterministic algorithms and cuBLAS's workspace;
    the TF32 policy sets every CUDA fp32 precision; every run's provenance records both (TF32 only
    counts on CUDA); records written before the fields existed still load."""
    import os

    import bench.provenance
    from bench.numerics import Numerics, configure_numerics
    from bench.provenance import provenance
    from bench.records import RunRecord

    assert configure_numerics(Numerics()) == Numerics(False, False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert configure_numerics(Numerics(deterministic=True, tf32=True)) == Numerics(True, True)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "tf32"
    rec = _run(synthetic_data, "finetune", {"steps": 2, "batch_size": 32})
    assert rec.provenance.deterministic and not rec.provenance.tf32  # no TF32 on a CPU
    monkeypatch.setattr(bench.provenance, "device_name", lambda device: "a CUDA device")
    assert provenance(torch.device("cuda"))["tf32"] is True
    configure_numerics(Numerics())
    assert provenance(torch.device("cuda"))["tf32"] is False and provenance(CPU)["deterministic"] is False
    old = rec.to_dict()
    for key in ("compile_seconds", "compiled_graphs"):
        del old[key]
    for key in ("deterministic", "tf32"):
        del old["provenance"][key]
    back = RunRecord.from_dict(old)
    assert (back.compile_seconds, back.compiled_graphs, back.provenance.deterministic, back.provenance.tf32) == (
        0.0,
        0,
        False,
        False,
    )


def test_the_ceiling_syncs_once_per_k_steps() -> None:
    """perf's ceiling: k steps between two device syncs (a pipelined loop), not a sync after each step."""
    from bench.perf.measure import timed
    from bench.train.syncs import HostSyncs

    calls: list[int] = []
    with HostSyncs() as syncs:
        groups = timed(lambda: calls.append(1), CPU, warmup=2, steps=10, max_seconds=float("inf"), per_sync=4)
    assert [n for n, _ in groups] == [4, 4, 2] and len(calls) == 12
    assert syncs.kinds == {"device sync": 1 + 3}


def test_the_dry_run_measures_the_suites_loop_with_the_grids_settings(tmp_path, synthetic_dir, monkeypatch) -> None:  # noqa: ANN001
    """`sweep --dry-run` times training through `fit` with each cell's optimiser, batch, clipping,
    precision and compile setting, and times no training for a frozen row (it trains heads only)."""
    from typer.testing import CliRunner

    import bench.train.fit
    import cli

    seen: list[tuple] = []
    real = bench.train.fit.fit

    def spy(net, spec, hp, data, ctx):  # noqa: ANN001, ANN202
        how = ctx.compile.describe() if ctx.compile is not None else None
        seen.append((spec.name, hp.optimizer, hp.batch_size, hp.grad_clip, ctx.precision, how, data.x.device.type))
        return real(net, spec, hp, data, ctx)

    monkeypatch.setattr(bench.train.fit, "fit", spy)
    toml = tmp_path / "g.toml"
    toml.write_text(
        'backbones = ["tiny"]\nmethods = ["finetune", "sft-mlp-frozen"]\nfractions = [0.1]\nseeds = 1\ntrials = 2\n'
        'compile = "aot_eager"\ndevice = "cpu"\n[hparams]\noptimizer = "sgd"\nbatch_size = 32\ngrad_clip = 1.0\n'
    )
    args = ["sweep", "--config", str(toml), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r"), "--dry-run"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    assert seen == [("finetune", "sgd", 32, 1.0, "fp32", "aot_eager", "cpu")]
    assert "train head only (frozen backbone)" in result.output  # sft-mlp-frozen: its forward rate only
    assert "projected wall time" in result.output and not (tmp_path / "r").exists()
