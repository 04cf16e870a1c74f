"""perf: the benchmark runs end to end and writes its tables; the engine's speed paths
(feature cache, compile, bf16, channels_last, fused optimisers) give the results of
the plain path. No timing is asserted anywhere: figures come from `cli.py perf`."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from configs import tiny_config
from typer.testing import CliRunner

from bench import perf
from bench.data import label_split, load_cifar10, synthetic_cifar
from bench.models.hparams import HParams
from bench.models.kinds import METHODS
from bench.records import CacheCounts
from bench.train.caches import Caches
from bench.train.compiling import compile_spec
from bench.train.context import FitContext, FitData
from bench.train.evaluate import predict
from bench.train.features import FeatureCache, encode_all
from bench.train.fit import fit
from bench.train.loop import FitResult, make_optimizer
from bench.train.run import build_model, execute

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cifar(tmp_path_factory.mktemp("syn"), n_train_per_class=8, n_test_per_class=6)


@pytest.fixture(scope="module")
def data(syn: Path) -> object:
    return load_cifar10(syn)


def _app() -> object:
    import cli

    return cli.app


# ---------------------------------------------------------------- the perf verb


def test_perf_cli_writes_tables(syn: Path, tmp_path: Path) -> None:
    out = tmp_path / "perf"
    args = ["perf", "--quick", "--cases", "tiny@32", "--data-dir", str(syn), "--out", str(out)]
    args += ["--batch-size", "16", "--steps", "2", "--max-seconds", "0.2", "--frozen-steps", "3"]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    with open(out / "perf.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == perf.COLUMNS
    frozen = [r for r in rows if r["path"].startswith("d_sft-mlp-frozen")]
    assert frozen and all(r["note"].startswith("sft-mlp-frozen, 3 steps") for r in frozen), frozen  # --frozen-steps
    paths = {r["path"] for r in rows}
    expected = {"a_train", "a_forward", "b_suite_train", "c_article_train", "e_suite_eval"}
    expected |= {f"d_sft-mlp-frozen_{k}" for k in ("recompute", "cached_cold", "cached_warm")}
    assert expected <= paths, expected - paths
    # every precision x memory format of the ceiling, plus the article's own configuration
    ceiling = {(r["precision"], r["memory_format"], r["batch_size"]) for r in rows if r["path"] == "a_train"}
    assert ceiling == {(p, m, "16") for p in ("fp32", "bf16") for m in ("contiguous", "channels_last")} | {
        ("fp32", "contiguous", "100")
    }
    assert all(float(r["images_per_second"]) > 0 for r in rows)
    assert {r["weights"] for r in rows} == {"pretrained"}
    with open(out / "perf_summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert tuple(summary[0]) == perf.SUMMARY_COLUMNS
    metrics = {r["metric"] for r in summary}
    assert {"b/a", "b/c", "d sft-mlp-frozen warm", "e/a"} <= metrics
    # --quick measures every compared pair in 3 alternating rounds: each has its range
    alternating = {r["metric"]: r for r in summary if r["rounds"]}
    assert {"b/a", "b/c", "d sft-mlp-frozen warm", "e/a"} <= set(alternating)
    assert all(r["rounds"] == "3" and float(r["low"]) <= float(r["value"]) <= float(r["high"]) for r in alternating.values())
    assert all(r["met"] in ("yes", "no", "untrusted", "") for r in summary)
    by_path = {r["path"]: r for r in rows}
    assert by_path["b_suite_train"]["repeats"] == "2"  # --quick: two timed history intervals after a warm-up one
    assert "history intervals of 2 steps" in by_path["b_suite_train"]["note"]
    assert "after its linear probe" in by_path["d_sft-mlp-frozen_recompute"]["note"]
    md = (out / "perf.md").read_text()
    for needle in (
        "command: `python cli.py perf --cases tiny@32 --quick --batch-size 16",
        "machine:",
        "load average",
        "| b/a |",
        "torch ",
    ):
        assert needle in md
    info = json.loads((out / "perf.json").read_text())["machine"]
    assert info["cpu_cores"] and info["versions"]["torch"] and "not measured on GPU" in info["gpu"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cases", "resnet18"], "BACKBONE@PIXELS"),
        (["--cases", "resnet81@32"], "resnet18"),
        (["--precision", "fp16"], "precision 'fp16'"),
        (["--project", "no/such.toml"], "does not exist"),
        (["--sweep", "no/such/folder"], "does not exist"),
        (["--cases", "tiny@32", "--project", "BAD_GRID"], "unknown backbone 'resnet81'"),
    ],
)
def test_perf_bad_input_is_one_line_and_writes_nothing(syn: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "perf"
    grid = tmp_path / "bad.toml"
    grid.write_text('backbones = ["resnet81"]\nmethods = ["finetune"]\nfractions = [0.1]\n')
    args = [str(grid) if a == "BAD_GRID" else a for a in args]
    res = CliRunner().invoke(_app(), ["perf", "--data-dir", str(syn), "--out", str(out), *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_summary_ratios_and_targets() -> None:
    case = perf.PerfCase("m", 32)

    def row(
        path: str, ips: float, precision: str = "fp32", fmt: str = "channels_last", setting: str = "suite", sec: float = 1.0
    ) -> perf.PerfRow:
        rid = perf.RowId(case, path, precision, fmt, 100, setting)
        return replace(perf.measured(rid, "scratch", [(int(ips * sec), sec)]), images_per_second=ips)

    rows = [
        row("a_train", 1000, "bf16"),
        row("a_train", 800),
        row("a_train", 400, fmt="contiguous", setting="article"),
        row("a_forward", 4000),
        row("b_suite_train", 760),
        row("c_article_train", 380, fmt="contiguous"),
        row("d_sft-mlp-frozen_recompute", 1, sec=20.0),
        row("d_sft-mlp-frozen_cached_warm", 1, sec=0.5),
        row("e_suite_eval", 3800),
    ]
    got = {r.metric: r for r in perf.summarise(rows, "cpu")}
    assert got["b/a"].value == pytest.approx(0.76) and got["b/a"].met == "no"  # against the fastest (bf16) ceiling
    assert got["b/a same config"].value == pytest.approx(0.95)
    assert got["b/c"].value == pytest.approx(2.0) and got["b/c"].target == 1.5 and got["b/c"].met == "yes"
    assert got["c/a article config"].value == pytest.approx(0.95)
    assert got["d sft-mlp-frozen warm"].value == pytest.approx(40.0) and got["d sft-mlp-frozen warm"].met == "yes"
    assert got["e/a"].value == pytest.approx(0.95) and got["e/a"].met == "yes"
    assert {r.metric: r for r in perf.summarise(rows, "cuda")}["b/c"].target == 3.0

    # Measured in alternation too: the median replaces the sequential figure, with its range; a
    # range wider than SPREAD_LIMIT of the median is flagged, not judged against the target.
    steady = perf.Interleaved("m@32", "b/a", (0.93, 0.95, 0.94, 0.96, 0.95), "suite", "ceiling")
    noisy = perf.Interleaved("m@32", "b/c", (0.9, 3.9, 1.6), "suite", "article")
    alt = {r.metric: r for r in perf.summarise(rows, "cpu", [steady, noisy])}
    assert alt["b/a"].value == pytest.approx(0.95) and (alt["b/a"].low, alt["b/a"].high, alt["b/a"].rounds) == (0.93, 0.96, 5)
    assert alt["b/a"].met == "yes" and "alternating rounds" in alt["b/a"].detail
    assert alt["b/c"].met == "untrusted" and alt["b/c"].value == pytest.approx(1.6)
    assert alt["b/a same config"].rounds is None  # measured once: no range


def test_interleave_alternates_the_order_and_takes_per_round_ratios() -> None:
    """Each round runs both sides, the order flipping (den num, num den, ...), after a warm-up round;
    a load that slows whatever runs second hits both sides alike over two rounds."""
    calls: list[str] = []
    slow_second = {"on": False}

    def side(name: str, images: int) -> Callable[[], tuple[int, float]]:
        def sample() -> tuple[int, float]:
            calls.append(name)
            seconds = 1.0 * (1.5 if slow_second["on"] and len(calls) % 2 == 0 else 1.0)
            return images, seconds

        return sample

    ratios = perf.interleave(side("num", 200), side("den", 100), rounds=4)
    assert calls == ["den", "num"] + ["den", "num", "num", "den"] * 2  # warm-up, then alternating
    assert ratios == (2.0, 2.0, 2.0, 2.0)
    calls.clear()
    slow_second["on"] = True  # the second sample of every round takes 1.5x as long
    ratios = perf.interleave(side("num", 200), side("den", 100), rounds=4, warmup=0)
    assert sorted(ratios) == pytest.approx([2 / 1.5, 2 / 1.5, 3.0, 3.0])  # flipped order: a bias on either side shows as spread
    m = perf.Interleaved("c", "x", ratios, "num", "den")
    assert not m.trusted and m.spread > perf.SPREAD_LIMIT
    assert perf.Interleaved("c", "x", (1.0, 1.02), "n", "d").trusted is False  # two rounds never make a result
    with pytest.raises(ValueError):
        perf.interleave(side("num", 1), side("den", 1), rounds=0)


# ---------------------------------------------------------------- engine speed paths give the same model


def _fit(
    data: object, method: str, overrides: dict, caches: Caches | None = None, **kw: object
) -> tuple[FitResult, torch.nn.Module]:
    cfg = tiny_config(data, method, 0.5, 0, overrides=overrides, stage="trial")
    torch.manual_seed(0)
    net = build_model(cfg, 10).to(memory_format=torch.channels_last)
    split = label_split(data.train_y, 0.5, 0)
    val = (data.train_x[split.val], data.train_y[split.val])
    precision = kw.pop("precision", "fp32")
    x, y = data.train_x[split.train], data.train_y[split.train]
    r = fit(
        net, METHODS.get(method), cfg.hp, FitData(x, y, val=val), FitContext(seed=0, precision=precision, caches=caches, **kw)
    )
    return r, net


def _fresh(data: object, method: str, overrides: dict, caches: Caches, **kw: object) -> tuple[FitResult, torch.nn.Module]:
    caches.probes.clear()  # else a second fit of the same probe is served from the probe cache, untrained
    return _fit(data, method, overrides, caches, **kw)


@pytest.mark.parametrize("method", ["sft-mlp-frozen", "sft-side-frozen"])
def test_feature_cache_modes_train_the_same_model(data: object, method: str) -> None:
    caches = Caches()
    overrides = {"steps": 4}
    runs = {mode: _fresh(data, method, overrides, caches, feature_cache=mode) for mode in ("off", "trial", "shared")}
    again, _ = _fit(data, method, {**overrides, "lr": 0.01}, caches, feature_cache="shared")  # another trial of the cell
    losses = {mode: [h.loss for h in r.history if h.loss is not None] for mode, (r, _) in runs.items()}
    assert losses["off"] == pytest.approx(losses["trial"], rel=1e-5) and losses["trial"] == losses["shared"]
    vals = {mode: [h.val_accuracy for h in r.history if h.phase == "train"] for mode, (r, _) in runs.items()}
    assert vals["off"] == vals["trial"] == vals["shared"]
    assert runs["shared"][0].feature_cache_hits == 0 and again.feature_cache_hits == 2  # train and val features
    train_rows = [h for h in runs["off"][0].history if h.phase == "train"]
    assert len(runs["off"][0].interval_seconds) == len(train_rows) == 4


def test_feature_cache_keys_on_content(data: object) -> None:
    cache = FeatureCache(max_mb=64)
    cfg = tiny_config(data, "linear_probe", 1.0, 0)
    net = build_model(cfg, 10)
    x = data.train_x[:32]
    first, hit = cache.encode(net, x, "fp32")
    assert not hit and torch.equal(first, encode_all(net, x, "fp32"))
    assert cache.encode(net, x.clone(), "fp32")[1]  # same content, another tensor: a hit
    assert not cache.encode(net, x, "bf16")[1]  # another precision
    assert not cache.encode(net, x[:16], "fp32")[1]  # other images
    with torch.no_grad():
        next(net.backbone.parameters()).add_(0.01)  # trained or other weights: another key
    changed, hit = cache.encode(net, x, "fp32")
    assert not hit and not torch.equal(changed, first)
    net.backbone.net[1].running_mean.add_(1.0)  # BatchNorm statistics count too
    assert not cache.encode(net, x, "fp32")[1]
    tiny = FeatureCache(max_mb=0.001)  # an entry larger than the budget is not kept
    tiny.encode(net, x, "fp32")
    assert len(tiny) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_precision_and_memory_format_train_and_predict(data: object, precision: str, fmt: torch.memory_format) -> None:
    overrides = {"steps": 3, "batch_size": 32}
    cfg = tiny_config(data, "finetune", 0.5, 0, overrides=overrides, precision=precision)
    torch.manual_seed(0)
    net = build_model(cfg, 10).to(memory_format=fmt)
    x, y = data.train_x[:96], data.train_y[:96]
    r = fit(net, METHODS.get("finetune"), cfg.hp, FitData(x, y), FitContext(seed=0, precision=precision))
    assert all(torch.isfinite(torch.tensor(h.loss)) for h in r.history)
    probs = predict(net, data.train_x[:40], precision, batch=16)
    assert probs.shape == (40, 10) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(40), atol=1e-3)


def test_memory_format_does_not_change_the_model(data: object) -> None:
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        cfg = tiny_config(data, "finetune", 0.5, 0, overrides={"steps": 2, "batch_size": 32})
        torch.manual_seed(0)
        net = build_model(cfg, 10).to(memory_format=fmt)
        fit(net, METHODS.get("finetune"), cfg.hp, FitData(data.train_x[:64], data.train_y[:64]), FitContext(seed=0))
        outs.append(predict(net, data.train_x[:32], "fp32"))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def test_compile_path_matches_eager(data: object) -> None:
    """`compile` goes through torch.compile (the eager backend here: the CPU stand-in for inductor on CUDA)."""
    overrides = {"steps": 4, "batch_size": 32}
    plain, net_a = _fit(data, "finetune", overrides)
    torch._dynamo.reset()
    compiled, net_b = _fit(data, "finetune", overrides, compile=compile_spec("eager"))
    assert [h.loss for h in compiled.history] == pytest.approx([h.loss for h in plain.history], rel=1e-4)
    x = data.train_x[:16]
    assert torch.allclose(predict(net_a, x, "fp32"), predict(net_b, x, "fp32"), atol=1e-4)
    torch._dynamo.reset()


def test_execute_passes_compile_and_keeps_the_run_id(data: object) -> None:
    cfg = tiny_config(data, "linear_probe", 0.5, 0, overrides={"steps": 2})
    rec = execute(cfg, data, CPU, FitContext(compile=compile_spec("eager")))
    assert rec.run_id == cfg.run_id and "compile" not in json.dumps(rec.config)
    torch._dynamo.reset()


def test_fused_optimisers_on_cpu() -> None:
    p = torch.nn.Parameter(torch.zeros(3))
    for name in ("sgd", "adamw"):
        opt = make_optimizer([{"params": [p]}], HParams(optimizer=name))
        assert opt.defaults["fused"] is True


# ---------------------------------------------------------------- sweep-level cost and projection


def test_sweep_cost_reads_journal_and_runs(tmp_path: Path) -> None:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.create_study(study_name="q/tiny/sft/tuned/0.1", storage=storage, direction="maximize")
    for i, state in enumerate(["complete", "pruned", "complete", "pruned"]):
        trial = study.ask()
        trial.report(0.1 * i, 1)
        if i:  # the first trial was recorded before the sweep counted images through the backbone
            trial.set_user_attr("backbone_images", 1000 * i)
            trial.set_user_attr(
                "cache",
                {
                    "feature_hits": i,
                    "feature_misses": 1,
                    "feature_hit_images": 100 * i,
                    "feature_miss_images": 100,
                    "probe_hits": 1,
                    "probe_misses": 0,
                },
            )
        if state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.5)
    finals = optuna.create_study(study_name="q:final/tiny/sft/tuned/0.1", storage=storage, direction="maximize")
    final = finals.ask()
    final.set_user_attr("cache", {"feature_hits": 0, "feature_misses": 2, "feature_miss_images": 500, "probe_misses": 1})
    finals.tell(final, 0.7)  # the sweep's record of a final run: not a search trial
    end = datetime.now(UTC) + timedelta(seconds=90)
    with open(tmp_path / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run_id", "wall_seconds", "finished_at"])
        w.writeheader()
        w.writerow({"run_id": "a", "wall_seconds": 30.0, "finished_at": end.isoformat()})
    cost = perf.sweep_cost(tmp_path)
    assert cost.trials == 4 and cost.states == {"COMPLETE": 2, "PRUNED": 2}
    assert cost.pruned_fraction == 0.5 and cost.final_runs == 1 and cost.final_trials == 1 and cost.studies == 1
    assert cost.wall_seconds is not None and 85 <= cost.wall_seconds <= 200
    assert (cost.trial_backbone_images, cost.trials_uncounted) == (6000, 1)
    assert (cost.final_backbone_images, cost.finals_uncounted) == (0, 1)  # runs.csv without the column
    # the caches: 1+2+3 passes served of 9, 600 of 900 images; the final run's only misses
    assert cost.trial_cache == CacheCounts(6, 3, 600, 300, 3, 0)
    assert cost.final_cache == CacheCounts(0, 2, 0, 500, 0, 1)
    assert (cost.trial_cache.feature_passes, cost.trial_cache.feature_images, cost.final_cache.probes) == (9, 900, 1)
    md = perf.sweep_markdown(cost)
    assert "50.0%" in md and "6,000 (1 run(s) without a count)" in md
    assert "6 of 9 (67%); 600 of 900 images (67%)" in md and "| 3 of 3 (100%); 0 of 1 (0%) |" in md


def _throughputs() -> list[perf.PerfRow]:
    case = perf.PerfCase("tiny", 32)
    return [
        perf.measured(perf.RowId(case, "b_suite_train", "fp32", "channels_last", 8), "x", [(1000, 1.0), (900, 1.0), (2000, 1.0)]),
        perf.measured(perf.RowId(case, "e_suite_eval", "fp32", "channels_last", 8), "x", [(4000, 1.0)]),
    ]


def test_projection_from_measured_throughputs(tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text(
        'backbones = ["tiny", "resnet18"]\nmethods = ["finetune", "linear_probe", "sft"]\nfractions = [0.1]\n'
        'seeds = 2\ntrials = 3\nresolution = 32\n[search]\nmode = "per_seed"\n[[include]]\nbackbones = ["tiny"]\n'
        'methods = ["article_sft"]\nrecipes = ["article"]\n'
    )
    rows = _throughputs()
    assert rows[0].images_per_second == 1000.0 and rows[0].repeats == 3  # the median unit's rate
    proj = perf.project_grid(grid, rows, pruned_fraction=0.5)
    cells = {(c.backbone, c.method): c for c in proj.cells}
    n_train, n_val = 4000, 1000  # 10% of 5000 per class, a fifth of it for validation
    run = 500 * 128  # the protocol's floor of 500 steps (10 passes would be 391) at batch 128
    ft = cells[("tiny", "finetune")]
    assert (ft.steps, ft.batch_size, ft.trials, ft.search_seeds) == (500, 128, 6, 2)  # per-seed search
    search = 6 * (1 - 0.5 / 2)  # 3 trials for each of 2 seeds, half of them pruned halfway
    assert ft.train_images == search * run + 2 * run
    assert ft.eval_images == search * 10 * n_val + 2 * 10_000  # 10 validation reports per trial
    assert ft.hours == pytest.approx((ft.train_images / 1000 + ft.eval_images / 4000) / 3600)
    lp = cells[("tiny", "linear_probe")]
    # no search (protocol v3: its strength is cross-validated inside the fit); its final runs solve
    # a probe on cached features: one feature pass per final run
    assert lp.frozen and lp.train_images == 0 and lp.trials == 0
    assert lp.eval_images == 2 * (n_train + n_val + 10_000)
    sft = cells[("tiny", "sft")]  # its probe's features: the training part of each search seed's split
    assert sft.train_images == ft.train_images
    assert sft.eval_images == ft.eval_images + 2 * n_train + 2 * (n_train + n_val)
    seed = cells[("tiny", "article_sft")]  # the article's 10 epochs at batch 100, no search
    assert (seed.steps, seed.batch_size, seed.trials) == (500, 100, 0)
    assert seed.train_images == 2 * 500 * 100 and seed.eval_images == 2 * 10_000
    assert proj.missing == ["resnet18@32"] and cells[("resnet18", "finetune")].hours is None
    text = perf.projection_markdown(proj)
    assert "not measured" in text and "resnet18 @ 32" in text
    assert "2 search seed(s), search mode per_seed" in text and "the protocol's rule" in text
    # per backbone: finetune and sft searched, article_sft the article's recipe, linear_probe no search (it was
    # counted as the article's before)
    assert "4 searched with 3 trials" in text and "1 with the article's fixed recipe; 2 without a search" in text


def test_projection_fixed_steps_shared_search_and_folds(tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text(
        'backbones = ["tiny"]\nmethods = ["finetune"]\nfractions = [0.1]\nseeds = 3\ntrials = 4\nsteps = 40\n'
        'cv_folds = 5\nresolution = 32\n[search]\nmode = "shared"\npruner_warmup = 0.75\n[hparams]\nbatch_size = 64\n'
    )
    proj = perf.project_grid(grid, _throughputs(), pruned_fraction=0.5)
    (ft,) = proj.cells
    assert (ft.steps, ft.batch_size, ft.trials, ft.search_seeds, ft.folds) == (40, 64, 4, 1, 5)
    search = 4 * 5 * (1 - 0.5 * 0.25)  # 4 trials of 5 folds; pruned ones train 75% of their steps
    assert ft.train_images == pytest.approx(search * 40 * 64 + 3 * 40 * 64)
    assert ft.eval_images == pytest.approx(search * 10 * 1000 + 3 * 10_000)  # a fold validates on 5000 / 5
    text = perf.projection_markdown(proj)
    assert "fixed steps = 40" in text and "search mode shared" in text and "at 75% of their steps" in text


def _v1_sweep_folder(folder: Path) -> Path:
    """A protocol v1 results folder as results/quick is: epoch keys in config.toml, hp_epochs in runs.csv."""
    folder.mkdir()
    (folder / "config.toml").write_text(
        'name = "quick"\nbackbones = ["tiny"]\nmethods = ["finetune"]\nfractions = [0.1]\nmax_epochs = 6\n'
        "[search]\npruner_warmup_epochs = 1\nepochs = false\n"
    )
    end = datetime.now(UTC)
    with open(folder / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run_id", "hp_epochs", "hp_probe_epochs", "wall_seconds", "finished_at"])
        w.writeheader()
        w.writerow({"run_id": "a", "hp_epochs": 6, "hp_probe_epochs": 30, "wall_seconds": 12.0, "finished_at": end.isoformat()})
    return folder


def test_sweep_protocol_of_old_and_new_folders(tmp_path: Path) -> None:
    v1 = _v1_sweep_folder(tmp_path / "v1")
    cost = perf.sweep_cost(v1)
    assert cost.protocol == 1 and cost.final_runs == 1 and cost.final_run_seconds == 12.0
    assert "v1 (epoch budgets)" in perf.sweep_markdown(cost)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "config.toml").write_text('name = "q"\nsteps = 40\n[search]\nmode = "per_seed"\n')
    assert perf.sweep_protocol(v2) == 2 and perf.sweep_protocol(tmp_path) is None


def test_perf_projects_from_a_v1_sweep_folder(tmp_path: Path) -> None:
    """--sweep on an old (protocol v1) folder stays readable, and the projection says what it measured."""
    import optuna

    sweep = _v1_sweep_folder(tmp_path / "quick")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna.journal")))
    study = optuna.create_study(study_name="quick/tiny/finetune/tuned/0.1", storage=storage, direction="maximize")
    study.tell(study.ask(), 0.5)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    table = tmp_path / "perf.csv"
    table.write_text(perf.to_csv([r.as_dict() for r in _throughputs()], perf.COLUMNS))
    grid = tmp_path / "g.toml"
    grid.write_text('backbones = ["tiny"]\nmethods = ["finetune"]\nfractions = [0.1]\nseeds = 1\ntrials = 2\nresolution = 32\n')
    args = ["perf", "--project", str(grid), "--throughputs", str(table), "--sweep", str(sweep), "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "v1 (epoch budgets)" in text and "Projected cost of the grid" in text
    assert f"pruned trials: 50% of trials (measured on {sweep}, protocol v1 (epoch budgets))" in text


# ---------------------------------------------------------------- faster hot-path ops are the same arithmetic


def _reference_augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The first implementation (one index per pixel), kept as the reference."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def test_augment_equals_the_per_pixel_reference() -> None:
    from bench.data import augment

    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    for seed in range(3):
        got = augment(x, torch.Generator().manual_seed(seed))
        assert torch.equal(got, _reference_augment(x, torch.Generator().manual_seed(seed)))
        assert got.shape == x.shape and got.dtype == torch.uint8


@pytest.mark.parametrize("resolution", [32, 48])
def test_input_adapter_equals_the_plain_arithmetic(resolution: int) -> None:
    from bench.models.methods import InputAdapter

    ad = InputAdapter((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), resolution)
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    ref = x.float()
    if resolution != 32:
        ref = torch.nn.functional.interpolate(ref, size=(resolution, resolution), mode="bilinear", align_corners=False)
    ref = ref * ad.scale - ad.shift
    got = ad(x)
    assert torch.equal(got, ref) and got.is_contiguous(memory_format=torch.channels_last)
    f = x.float().contiguous(memory_format=torch.channels_last)
    before = f.clone()
    ad(f)
    assert torch.equal(f, before)  # a float input of the caller is never modified in place


@pytest.mark.slow
def test_grid_cost_script_alternates_whole_sweeps_and_checks_the_results_agree(tmp_path: Path, syn: Path) -> None:
    """scripts/grid_cost.py (the grid-cost figures): A then B in round 0, B then A in round 1, each a
    whole sweep into its own folder; images through the backbone per side; results compared."""
    import subprocess
    import sys

    config = tmp_path / "t.toml"
    config.write_text(
        'backbones = ["tiny"]\nmethods = ["sft-mlp-frozen"]\nfractions = [0.1]\nseeds = 1\ntrials = 2\nsteps = 3\n'
        '[search]\nmode = "shared"\npruner = "none"\n'
    )
    out = tmp_path / "gc"
    script = Path(__file__).resolve().parent.parent / "scripts" / "grid_cost.py"
    args = [sys.executable, str(script), "--config", str(config), "--out", str(out), "--rounds", "2"]
    args += ["--a-env", "SFT_BENCH_FEATURE_STORE=off", "--a-name", "off", "--b-name", "on", "--"]
    args += ["--data-dir", str(syn), "--threads", "1"]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    sweeps = json.loads((out / "grid_cost.json").read_text())
    assert [(w["side"], w["round"]) for w in sweeps] == [("off", 0), ("on", 0), ("on", 1), ("off", 1)]
    assert all(w["exit_code"] == 0 and w["trial_images"] > 0 and w["final_images"] > 0 for w in sweeps)
    assert not (out / "off-0" / "results" / "t" / "cache").exists() and (out / "on-0" / "results" / "t" / "cache").is_dir()
    assert "Results identical on every sweep (test accuracy per run id): yes." in (out / "grid_cost.md").read_text()
    assert all(w["cache"]["feature_hits"] + w["cache"]["feature_misses"] > 0 for w in sweeps)  # hit rates recorded

    # two configs (as the default search against multi-fidelity): the results differ, and the
    # summary shows each cell's mean test accuracy side by side instead of calling them equal
    other = tmp_path / "t2.toml"
    other.write_text(config.read_text().replace("steps = 3", "steps = 5"))
    out2 = tmp_path / "gc2"
    args2 = [sys.executable, str(script), "--a-config", str(config), "--b-config", str(other), "--out", str(out2)]
    args2 += ["--rounds", "1", "--a-name", "s3", "--b-name", "s5", "--", "--data-dir", str(syn), "--threads", "1"]
    run = subprocess.run(args2, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    md = (out2 / "grid_cost.md").read_text()
    assert "Results identical on every sweep (test accuracy per run id): NO; within each side: yes." in md
    assert re.search(r"\| sft-mlp-frozen 0\.1 \| \d+\.\d\d \| \d+\.\d\d \| [+-]\d+\.\d\d \|", md), md
