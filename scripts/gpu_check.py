#!/usr/bin/env python
"""The GPU check of issue 18: one command that says whether the suite is right and how fast it is on a CUDA
GPU, and writes what it measured (report.json, report.md) to --out.

    python scripts/gpu_check.py --out results/gpu/h100            # one H100: under 8 minutes
    python scripts/gpu_check.py --quick --out /tmp/gpu-check       # any machine, this CPU too: a minute or two

Needs only torch, torchvision, timm and this project: CIFAR-10 is synthetic, full-size (50,000 + 10,000
images in memory; --quick: a small set), and a backbone whose weight package is absent is measured from
scratch weights (the speed is the same; the report says which). Sections, in order:

  environment   versions, the device, the numerical flags (deterministic, TF32, cuDNN benchmark), MPS
  syncs         host syncs per training step and per history row, against the documented counts
                (bench/train/syncs.py; on CUDA also torch's own sync debug mode)
  determinism   the same run twice in one process, with default flags and with --deterministic (each in
                its own process, as the flags are process-wide): identical or not, max abs difference
  compile       graphs compiled and steady throughput of the suite's loop: eager, compiled, CUDA graphs
  throughput    the suite's loop against a pipelined ceiling (k steps between two syncs) for Lite0 at
                32/64/128/224 px and ResNet-18 at 32 px, with GPU busy share and peak memory
  trial         one 1% trial end to end (quick.toml's settings: 32 px, batch 64, pooled over 2 seeds)
  workers       1, 2 and 4 training processes at once on the device(s)

On a CPU the GPU-only figures say "skipped: no CUDA device"; nothing is estimated in their place. A
section that would overrun --budget is skipped and says so. Every figure is measured by this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.budget import REPORTS  # noqa: E402
from bench.data import Cifar10, synthetic_data  # noqa: E402
from bench.models.backbones import get_backbone, input_resolution  # noqa: E402
from bench.models.hparams import HParams  # noqa: E402
from bench.models.kinds import METHODS  # noqa: E402
from bench.numerics import Numerics, configure_numerics  # noqa: E402
from bench.run_config import RunConfig  # noqa: E402
from bench.train.caches import Caches  # noqa: E402
from bench.train.compiling import compile_spec, graph_count  # noqa: E402
from bench.train.context import FitContext, FitData  # noqa: E402
from bench.train.device import sync  # noqa: E402

NO_CUDA = "skipped: no CUDA device"
SECTIONS = ("environment", "syncs", "determinism", "compile", "throughput", "trial", "workers")
FULL_CASES = (("efficientnet_lite0", 32), ("efficientnet_lite0", 64), ("efficientnet_lite0", 128), ("efficientnet_lite0", 224))
FULL_CASES += (("resnet18", 32),)


class Check:
    """The run's settings and what it has found so far (written after every section)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        from bench.provenance import resolve_device

        self.device = resolve_device(args.device)
        self.cuda = self.device.type == "cuda"
        self.out = Path(args.out)
        self.deadline = time.monotonic() + args.budget
        self.sections: dict[str, dict[str, Any]] = {}
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self._data: Cifar10 | None = None
        # sizes: the full check is sized for one H100 in under 8 minutes; --quick for a CPU in a minute or two
        self.backbone = "tiny" if self.quick else "efficientnet_lite0"
        self.batch = 32 if self.quick else 128
        self.interval = 2 if self.quick else 10  # steps per history interval of the throughput measurements
        self.cases = (("tiny", 32), ("tiny", 64)) if self.quick else FULL_CASES

    @property
    def data(self) -> Cifar10:
        """Synthetic CIFAR-10 in memory: full size (5,000 + 1,000 images per class), --quick a small set."""
        if self._data is None:
            self._data = synthetic_data(*((60, 20) if self.quick else (1000, 1000)))
        return self._data

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def pretrained(self, backbone: str) -> bool:
        """Pretrained weights where their package is installed, else scratch (the same speed)."""
        return get_backbone(backbone).available()[0]

    def config(
        self,
        method: str,
        fraction: float,
        overrides: dict,
        backbone: str | None = None,
        resolution: int | None = None,
        **more: Any,
    ) -> RunConfig:
        """The run config the suite would make (seed 0) on this check's device and data: one place for
        the four measurements that each need one (default backbone: the check's; resolution: the
        backbone's own for the tuned recipe)."""
        from bench.run_config import make_config

        b = backbone or self.backbone
        return make_config(
            backbone=b,
            method=method,
            fraction=fraction,
            seed=0,
            device=self.device,
            data=self.data,
            resolution=resolution or input_resolution(b, "tuned"),
            pretrained=self.pretrained(b),
            overrides=overrides,
            **more,
        )


# ---------------------------------------------------------------- helpers


def fit_rates(
    check: Check, backbone: str, resolution: int, *, compile: bool | str = False, steps_per_row: int | None = None
) -> dict:
    """The suite's loop (`fit`, finetune, end to end, augmented, the suite's precision) for REPORTS history
    intervals: steady images/s (median of the intervals after the first), compile seconds and graphs,
    peak memory on CUDA."""
    from bench.run_config import RunConfig
    from bench.train.fit import fit
    from bench.train.run import build_model

    k = steps_per_row or check.interval
    data = check.data
    cfg = check.config("finetune", 1.0, {"steps": REPORTS * k, "batch_size": check.batch}, backbone, resolution)
    assert isinstance(cfg, RunConfig)
    torch.manual_seed(0)
    net = build_model(cfg, data.num_classes).to(check.device).to(memory_format=torch.channels_last)
    n = min(len(data.train_y), check.batch * k)
    x, y = data.train_x[:n].to(check.device), data.train_y[:n].to(check.device)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.device)
    graphs = graph_count()
    result = fit(
        net,
        METHODS.get("finetune"),
        cfg.hp,
        FitData(x, y),
        FitContext(seed=0, precision=cfg.precision, compile=compile_spec(compile)),
    )
    rates = [images / seconds for images, seconds in result.interval_seconds[1:]]
    return {
        "precision": cfg.precision,
        "batch": cfg.hp.batch_size,
        "images_per_second": statistics.median(rates),
        "compile_seconds": round(result.compile_seconds, 2),
        "graphs": graph_count() - graphs,
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(check.device) / 2**20) if check.cuda else NO_CUDA,
        "net": net,
        "cfg": cfg,
        "x": x,
        "y": y,
    }


def ceiling_rate(check: Check, backbone: str, resolution: int, precision: str, per_sync: int, steps: int) -> float:
    """Forward + backward + optimiser step on synthetic float tensors already in memory (the hardware's
    ceiling for this model), `per_sync` steps between two device syncs (a pipelined loop)."""
    from bench.perf import PerfCase, PerfSettings
    from bench.perf.measure import Bench, timed

    settings = PerfSettings(batch_size=check.batch, precision=precision, steps=steps, per_sync=per_sync, warmup=2)
    bench = Bench(PerfCase(backbone, resolution), check.data, check.device, settings)
    hp = HParams().update(batch_size=check.batch)
    cfg = bench.config("finetune", {"batch_size": check.batch})
    step = bench.train_step(cfg, hp, precision, "channels_last", torch.Generator().manual_seed(0))
    groups = timed(step, check.device, settings.warmup, steps, float("inf"), per_sync)
    return check.batch * sum(n for n, _ in groups) / sum(t for _, t in groups)


def busy_share(check: Check, run: Callable[[], None]) -> float | str:
    """Share of the wall time the GPU spent in kernels while `run` ran (torch.profiler's CUDA kernel
    times over the wall clock); a CPU has no such figure."""
    if not check.cuda:
        return NO_CUDA
    from torch.profiler import ProfilerActivity, profile

    sync(check.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run()
        sync(check.device)
        wall = time.perf_counter() - t0
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if kernels:  # kernels (and copies) as device events: one stream, so they do not overlap
        busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    else:  # kernels attributed to the host ops that launched them
        busy_us = sum(e.self_device_time_total for e in events)
    return round(min(1.0, busy_us / 1e6 / wall), 3)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


# ---------------------------------------------------------------- sections


def environment(check: Check) -> dict:
    from bench.provenance import cpu_model, git_commit

    numerics = Numerics.current()
    rows = [
        {"item": "torch", "value": torch.__version__},
        {"item": "CUDA (torch built with)", "value": torch.version.cuda or "none"},
        {"item": "cuDNN", "value": torch.backends.cudnn.version() if check.cuda else NO_CUDA},
        {"item": "device", "value": torch.cuda.get_device_name(check.device) if check.cuda else f"CPU: {cpu_model()}"},
        {"item": "GPUs visible", "value": torch.cuda.device_count() if check.cuda else 0},
        {"item": "CPU cores / torch threads", "value": f"{os.cpu_count()} / {torch.get_num_threads()}"},
        {"item": "deterministic (default flags)", "value": numerics.deterministic},
        {"item": "TF32 allowed (default: false)", "value": numerics.tf32},
        {"item": "cuDNN benchmark", "value": torch.backends.cudnn.benchmark},
        {"item": "MPS control daemon", "value": _mps() if check.cuda else NO_CUDA},
        {"item": "git commit", "value": git_commit()},
        {"item": "python", "value": platform.python_version()},
    ]
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        rows.insert(
            4,
            {
                "item": "compute capability / memory",
                "value": f"{props.major}.{props.minor} / {props.total_memory / 2**30:.0f} GiB",
            },
        )
    for backbone in {b for b, _ in check.cases} | {check.backbone}:
        rows.append(
            {
                "item": f"weights of {backbone}",
                "value": "pretrained" if check.pretrained(backbone) else "scratch (package absent)",
            }
        )
    return {"rows": rows}


def _mps() -> str:
    """Whether an MPS control daemon runs on this machine (several processes' kernels at once on one GPU)."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip().startswith("nvidia-cuda-mps"):
                return "running"
        except OSError:
            continue
    return "not running"


def syncs(check: Check) -> dict:
    """Host syncs counted per step and per history row of a real fit, against the documented counts."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bench.budget import report_interval
    from bench.train.fit import fit
    from bench.train.loop import SYNCS_PER_STEP, syncs_per_row
    from bench.train.run import build_model
    from bench.train.syncs import HostSyncs

    data = check.data
    steps = 20
    cfg = check.config("finetune", 1.0, {"steps": steps, "batch_size": check.batch})
    torch.manual_seed(0)
    net = build_model(cfg, data.num_classes).to(check.device).to(memory_format=torch.channels_last)
    n = check.batch * 4
    x, y = data.train_x[:n].to(check.device), data.train_y[:n].to(check.device)
    val = (data.train_x[n : n + 256].to(check.device), data.train_y[n : n + 256].to(check.device))
    deltas: list[int] = []
    warned: list[int] = []
    with HostSyncs() as counter, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if check.cuda:
            torch.cuda.set_sync_debug_mode("warn")
        last = [counter.total, 0]

        def step_done(opt: object, args: object, kwargs: object) -> None:
            deltas.append(counter.total - last[0])
            warned.append(len(caught) - last[1])
            last[0], last[1] = counter.total, len(caught)

        handle = register_optimizer_step_post_hook(step_done)
        try:
            fit(net, METHODS.get("finetune"), cfg.hp, FitData(x, y, val=val), FitContext(seed=0, precision=cfg.precision))
        finally:
            handle.remove()
            if check.cuda:
                torch.cuda.set_sync_debug_mode(0)
    k = report_interval(steps)
    in_steps = [d for i, d in enumerate(deltas[1:], start=1) if i % k]
    at_rows = [d for i, d in enumerate(deltas[1:], start=1) if i % k == 0]
    cuda_in_steps = [w for i, w in enumerate(warned[1:], start=1) if i % k] if check.cuda else None
    row = {
        "steps counted": len(deltas),
        "syncs in a step (max)": max(in_steps),
        "documented per step": SYNCS_PER_STEP,
        "syncs at a history row": statistics.median(at_rows),
        "documented per row (with validation)": syncs_per_row(True),
        "CUDA sync warnings in a step (max)": max(cuda_in_steps) if cuda_in_steps else NO_CUDA,
    }
    ok = row["syncs in a step (max)"] == SYNCS_PER_STEP and row["syncs at a history row"] == syncs_per_row(True)
    return {"rows": [row], "verdict": "as documented" if ok else "NOT as documented"}


def determinism(check: Check) -> dict:
    """The same run twice, in a child process per setting (the flags are process-wide)."""
    rows = []
    for det in (False, True):
        proc = _child(check, {"kind": "determinism", "deterministic": det}, timeout=max(30.0, check.left()))
        rows.append({"flags": "--deterministic" if det else "default", **proc})
    return {"rows": rows}


def _determinism_child(spec: dict, check: Check) -> dict:
    from bench.train.run import run_fold, run_folds

    configure_numerics(Numerics(deterministic=spec["deterministic"]))
    data = check.data
    steps = 10 if check.quick else 60
    cfg = check.config("finetune", 0.02, {"steps": steps, "batch_size": check.batch})
    outs = []
    for _ in range(2):
        fold = run_folds(cfg, data)[0]
        outs.append(run_fold(cfg, data, fold, FitContext(caches=Caches()), check.device))
    a, b = outs
    probs = (a.probs - b.probs).abs().max().item()
    weights = max((p - q).abs().max().item() for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True))
    same = probs == 0 and weights == 0 and a.fit.history == b.fit.history
    return {
        "identical": same,
        "max abs diff, test probabilities": probs,
        "max abs diff, weights": weights,
        "test accuracy (run 1, run 2)": f"{a.scores.accuracy:.4f}, {b.scores.accuracy:.4f}",
        "precision": cfg.precision,
        "steps": steps,
    }


def compile_section(check: Check) -> dict:
    """Eager, inductor and CUDA graphs on the suite's loop: graphs, compile time, steady rate."""
    rows = []
    modes: list[tuple[str, bool | str]] = [
        ("eager", False),
        ("compiled (inductor)", True),
        ("CUDA graphs (reduce-overhead)", "reduce-overhead"),
    ]
    for label, mode in modes:
        if mode == "reduce-overhead" and not check.cuda:
            rows.append({"path": label, "images/s": NO_CUDA})
            continue
        if check.left() < (60 if not check.quick else 10):
            rows.append({"path": label, "images/s": f"skipped: time budget ({check.left():.0f} s left)"})
            continue
        r = fit_rates(check, check.backbone, 32, compile=mode)
        rows.append(
            {
                "path": label,
                "images/s": round(r["images_per_second"]),
                "graphs compiled": r["graphs"],
                "compile seconds (apart)": r["compile_seconds"],
                "precision": r["precision"],
                "batch": r["batch"],
            }
        )
    eager = rows[0]["images/s"]
    for r in rows[1:]:
        if isinstance(r["images/s"], int) and isinstance(eager, int):
            r["vs eager"] = round(r["images/s"] / eager, 2)
    return {"rows": rows, "note": f"{check.backbone} @ 32 px, finetune, the suite's fit (history intervals after the first)"}


def throughput(check: Check) -> dict:
    """Per case: the suite's loop, the pipelined ceiling, GPU busy share, peak memory."""
    from bench.train.fit import fit

    rows = []
    for backbone, res in check.cases:
        if check.left() < (40 if not check.quick else 5):
            rows.append({"case": f"{backbone}@{res}", "suite images/s": f"skipped: time budget ({check.left():.0f} s left)"})
            continue
        r = fit_rates(check, backbone, res)
        ceiling = ceiling_rate(check, backbone, res, r["precision"], per_sync=check.interval, steps=3 * check.interval)
        hp = r["cfg"].hp.update(steps=2 * check.interval)

        def profiled(r: dict = r, hp: HParams = hp) -> None:
            fit(r["net"], METHODS.get("finetune"), hp, FitData(r["x"], r["y"]), FitContext(seed=1, precision=r["precision"]))

        rows.append(
            {
                "case": f"{backbone}@{res}",
                "precision": r["precision"],
                "batch": r["batch"],
                "suite images/s": round(r["images_per_second"]),
                f"ceiling images/s ({check.interval} steps per sync)": round(ceiling),
                "suite / ceiling": round(r["images_per_second"] / ceiling, 2),
                "GPU busy share (suite)": busy_share(check, profiled),
                "peak memory MB": r["peak_memory_mb"],
            }
        )
        del r
    return {"rows": rows}


def trial(check: Check) -> dict:
    """One 1% trial as the quick experiment runs it (pooled over 2 seeds, 32 px, batch 64)."""
    from bench.train.run import execute

    data = check.data
    backbone = check.backbone
    overrides = {"batch_size": 64} if not check.quick else {"batch_size": 32, "steps": 20}
    cfg = check.config("sft", 0.01 if not check.quick else 0.05, overrides, backbone, stage="trial", pool=(0, 1))
    rec = execute(cfg, data, check.device, FitContext(caches=Caches()))
    row = {
        "run": f"{backbone} sft, fraction {cfg.fraction:g}, trial pooled over seeds 0 and 1",
        "steps per seed": rec.steps,
        "wall seconds": round(rec.wall_seconds, 1),
        "train seconds": round(rec.train_seconds, 1),
        "feature seconds": round(rec.feature_seconds, 1),
        "evaluation seconds": round(rec.eval_seconds, 1),
        "train images/s": round(rec.images_per_second),
        "backbone images": rec.backbone_images,
        "peak memory MB": round(rec.peak_memory_mb) if check.cuda else NO_CUDA,
    }
    return {"rows": [row]}


def workers(check: Check) -> dict:
    """1, 2 and 4 training processes started together (worker i on cuda:(i % GPUs), as --parallel does)."""
    from bench.sweep.parallel import worker_devices

    rows = []
    base = None
    for n in (1, 2, 4):
        if check.left() < (60 if not check.quick else 15):
            rows.append({"workers": n, "total images/s": f"skipped: time budget ({check.left():.0f} s left)"})
            continue
        devices = [d or str(check.device) for d in worker_devices(check.device, n)]
        threads = max(1, (os.cpu_count() or 1) // n) if not check.cuda else None
        procs = [_spawn(check, {"kind": "worker", "device": d, "threads": threads}) for d in devices]
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a worker did not start: {p.stderr.read() if p.stderr else ''}")
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=max(30.0, check.left()))[0].strip().splitlines()[-1]) for p in procs]
        wall = time.perf_counter() - t0
        images = sum(r["images"] for r in results)
        total = images / wall
        base = base or total
        rows.append(
            {
                "workers": n,
                "devices": ", ".join(sorted(set(devices))),
                "total images/s": round(total),
                "per worker images/s": ", ".join(str(round(r["images_per_second"])) for r in results),
                "vs 1 worker": round(total / base, 2),
                "peak memory MB per worker": ", ".join(str(r["peak_memory_mb"]) for r in results) if check.cuda else NO_CUDA,
            }
        )
    return {
        "rows": rows,
        "note": f"each worker: {check.backbone} finetune at 32 px, batch 64, the suite's fit. Per worker: its own "
        "training rate (timed steps); total: every worker's images over the wall time from their common start (setup included)",
    }


def _worker_child(spec: dict, check: Check) -> dict:
    from bench.run_config import make_config
    from bench.train.fit import fit
    from bench.train.run import build_model

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    check.device, check.cuda = device, device.type == "cuda"
    data = check.data
    steps = 10 if check.quick else 200
    cfg = make_config(
        backbone=check.backbone,
        method="finetune",
        fraction=1.0,
        seed=0,
        device=device,
        data=data,
        resolution=input_resolution(check.backbone, "tuned"),
        pretrained=check.pretrained(check.backbone),
        overrides={"steps": steps, "batch_size": 64},
    )
    torch.manual_seed(0)
    net = build_model(cfg, data.num_classes).to(device).to(memory_format=torch.channels_last)
    n = 64 * 20
    x, y = data.train_x[:n].to(device), data.train_y[:n].to(device)
    print("ready", flush=True)
    sys.stdin.readline()
    result = fit(net, METHODS.get("finetune"), cfg.hp, FitData(x, y), FitContext(seed=0, precision=cfg.precision))
    return {
        "images": result.images_seen,
        "images_per_second": result.images_seen / result.train_seconds if result.train_seconds > 0 else 0.0,
        "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if check.cuda else 0,
    }


# ---------------------------------------------------------------- children, report


def _argv(check: Check, spec: dict) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(spec),
        "--device",
        str(check.device),
        "--out",
        str(check.out),
    ] + (["--quick"] if check.quick else [])


def _spawn(check: Check, spec: dict) -> subprocess.Popen:
    return subprocess.Popen(_argv(check, spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _child(check: Check, spec: dict, timeout: float) -> dict:
    proc = subprocess.run(_argv(check, spec), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["child failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


RUNNERS: dict[str, Callable[[Check], dict]] = {
    "environment": environment,
    "syncs": syncs,
    "determinism": determinism,
    "compile": compile_section,
    "throughput": throughput,
    "trial": trial,
    "workers": workers,
}


def markdown(check: Check) -> str:
    """report.md: every section's table as measured (a skipped figure says why)."""
    title = "GPU check" + (" (--quick)" if check.quick else "")
    lines = [
        f"# {title}: {check.sections.get('environment', {}).get('device', str(check.device))}",
        "",
        f"Started {check.started}; device {check.device}. Every figure below was measured by this run of "
        "`scripts/gpu_check.py`; a figure that could not be measured says why.",
        "",
    ]
    for name, sec in check.sections.items():
        lines += [f"## {name}", "", f"status: {sec['status']} ({sec.get('seconds', 0):.0f} s)"]
        for key in ("verdict", "note"):
            if sec.get(key):
                lines.append(f"{key}: {sec[key]}")
        rows = sec.get("rows") or []
        if rows:
            cols = list(dict.fromkeys(c for r in rows for c in r))
            lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def write(check: Check) -> None:
    check.out.mkdir(parents=True, exist_ok=True)
    blob = {"quick": check.quick, "device": str(check.device), "started": check.started, "sections": check.sections}
    (check.out / "report.json").write_text(json.dumps(blob, indent=2, default=str))
    (check.out / "report.md").write_text(markdown(check))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/gpu/check", help="where report.json and report.md go")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (any machine)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds: a section that would overrun is skipped")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown or (args.device.startswith("cuda") and not torch.cuda.is_available()):
        what = (
            f"section(s) {', '.join(unknown)} not among {', '.join(SECTIONS)}"
            if unknown
            else f"device {args.device}: no CUDA here"
        )
        print(f"error: {what}", file=sys.stderr)
        return 2
    configure_numerics(Numerics())  # the CLI's defaults: non-deterministic, no TF32
    check = Check(args)
    if args.child:
        spec = json.loads(args.child)
        out = _determinism_child(spec, check) if spec["kind"] == "determinism" else _worker_child(spec, check)
        print(json.dumps(out, default=str))
        return 0
    print(f"GPU check on {check.device}{' (--quick)' if check.quick else ''}, writing {check.out}", flush=True)
    for name in wanted:
        t0 = time.monotonic()
        try:
            sec = RUNNERS[name](check)
            sec["status"] = "ok"
        except Exception as exc:  # noqa: BLE001  (a failed section is reported, the others still run)
            sec = {"status": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
        sec["seconds"] = round(time.monotonic() - t0, 1)
        if name == "environment":
            sec["device"] = next((r["value"] for r in sec.get("rows", []) if r["item"] == "device"), str(check.device))
        check.sections[name] = sec
        write(check)
        print(f"\n## {name}: {sec['status']} ({sec['seconds']:.0f} s)", flush=True)
        for r in sec.get("rows", []):
            print("  " + "; ".join(f"{k}: {fmt(v)}" for k, v in r.items()), flush=True)
    print(f"\nwrote {check.out / 'report.json'} and {check.out / 'report.md'}")
    return 0 if all(not s["status"].startswith("failed") for s in check.sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
