"""Training and evaluation throughput of one (backbone, resolution, batch, precision) on this device,
measured once and remembered (`RateCache`), so every sweep can say what it will cost before it trains.

Why a cache: a projection needs a few seconds of timed steps per configuration (a grid of four
backbones and two resolutions: a minute or more on a loaded CPU); a user who asks twice, or a
sweep that announces its cost at every start, should not pay that again. The key names everything
a rate depends on: the backbone, resolution, batch and precision, the device's name, torch's
version and the CPU threads. A cached rate says when and under which load it was measured.

    SFT_BENCH_RATE_CACHE=PATH   where the cache lives (default ~/.cache/sft-bench/rates.json)
    SFT_BENCH_RATE_CACHE=off    measure every time, remember nothing
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.budget import REPORTS
from bench.history import HistoryRow
from bench.models.hparams import HParams
from bench.timing import timed

CACHE_ENV = "SFT_BENCH_RATE_CACHE"
OFF = ("off", "none", "no", "false", "0")


@dataclass(frozen=True)
class Rates:
    """Images per second on this device for one (backbone, resolution, batch, precision)."""

    backbone: str
    resolution: int
    batch_size: int
    train: float  # training images/s (the suite's step loop, end to end; nan: not measured, a frozen row)
    forward: float  # evaluation / feature images/s
    precision: str = "fp32"
    measured_at: str = ""  # UTC, ISO
    load: float = -1.0  # the 1-minute load average when measured (-1: unknown)
    cached: bool = False  # read from the cache, not measured by this process


def rate_key(backbone: str, resolution: int, settings: tuple, precision: str, device: torch.device) -> str:
    """What a rate depends on besides the code: the configuration and the loop's settings that change a step's
    speed, the device (its threads on a CPU) and torch."""
    from bench.provenance import device_name

    parts = "|".join(str(x) for x in settings)
    return f"{backbone}|{resolution}|{parts}|{precision}|{device_name(device)}|torch {torch.__version__}"


def cache_path(environ: dict[str, str] | None = None) -> Path | None:
    """The cache file, or None when SFT_BENCH_RATE_CACHE turns it off."""
    env = os.environ if environ is None else environ
    text = (env.get(CACHE_ENV) or "").strip()
    if text.lower() in OFF and text:
        return None
    if text:
        return Path(text).expanduser()
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sft-bench" / "rates.json"


class RateCache:
    """The remembered rates (a JSON file of key -> Rates); a damaged or unreadable file is an empty cache,
    and a write that fails is skipped: the cache saves time, it never decides a result."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}

    def get(self, key: str) -> Rates | None:
        raw = self._entries.get(key)
        if not isinstance(raw, dict):
            return None
        try:
            return Rates(**{**raw, "cached": True})
        except TypeError:
            return None

    def put(self, key: str, rates: Rates) -> None:
        self._entries[key] = {k: v for k, v in asdict(rates).items() if k != "cached"}
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass


class _Measured(Exception):
    """Raised from `on_progress` once the timed intervals are in (the rest of the budget measures nothing new)."""


INTERVAL_STEPS = 2  # steps per history interval of the measurement
INTERVALS = 2  # timed intervals, after one that warms up (kernel selection, allocator)
FORWARD_CALLS = 20  # evaluation batches timed at most (2 s at most, after 2 untimed ones)


def measure_rates(
    backbone: str,
    resolution: int,
    hp: HParams,
    device: torch.device,
    precision: str,
    *,
    compile: bool | str = False,
    train: bool = True,
) -> Rates:
    """The cell's training rate through the suite's own loop (`fit`, end to end: the cell's optimiser,
    fused where torch has one, its learning-rate groups, augmentation, clipping, BatchNorm policy,
    precision and compile setting, on uint8 batches gathered on the device), timed over history
    intervals after a warm-up one (compiling is apart: bench/train/compiling.py); and the evaluation
    rate of `encode_all` at the suite's evaluation batch for the resolution. `train=False` (a frozen
    row, which trains only heads on cached features): the forward rate only."""
    from bench.models.kinds import METHODS
    from bench.run_config import RunConfig
    from bench.train.compiling import compile_spec
    from bench.train.context import FitContext, FitData
    from bench.train.device import eval_batch
    from bench.train.features import encode_all
    from bench.train.fit import fit
    from bench.train.run import build_model

    steps = REPORTS * INTERVAL_STEPS
    hp = hp.update(steps=steps, backbone_lr_mult=hp.backbone_lr_mult or 1.0)
    cfg = RunConfig(
        backbone=backbone,
        method="finetune",
        fraction=1.0,
        seed=0,
        hp=hp,
        resolution=resolution,
        pretrained=False,
        precision=precision,
    )
    net = build_model(cfg, 10).to(device).to(memory_format=torch.channels_last)  # weights do not change the speed
    gen = torch.Generator(device=device).manual_seed(0)
    n = hp.batch_size * INTERVAL_STEPS
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)
    y = torch.randint(0, 10, (n,), generator=gen, device=device)
    rate = float("nan")
    if train:
        ends: list[float] = []

        def progress(row: HistoryRow) -> None:
            if row.tick:
                return  # a step between history rows: not an interval's end
            ends.append(time.perf_counter())  # the loop has synced the device by then
            if len(ends) > INTERVALS:
                raise _Measured

        try:
            fit(
                net,
                METHODS.get("finetune"),
                hp,
                FitData(x, y),
                FitContext(seed=0, precision=precision, on_progress=progress, compile=compile_spec(compile)),
            )
        except _Measured:
            pass
        rate = n / statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))
    ev = eval_batch(device, resolution)
    xe = torch.randint(0, 256, (ev, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device)

    groups = timed(lambda: encode_all(net, xe, precision), device, warmup=2, steps=FORWARD_CALLS, max_seconds=2.0)
    fwd = ev / statistics.median(t / k for k, t in groups)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return Rates(backbone, resolution, hp.batch_size, rate, fwd, precision, now, round(_load(), 2))


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0


def busier_then(rates: Rates, load_now: float) -> bool:
    """Whether a cached CPU rate was measured under clearly more load than there is now (more than one more
    runnable process per two cores): it then understates this device, so it is measured again (and the
    quieter figure kept). A rate measured quiet stays, whatever the load now: the projection is of the
    device, and the load is printed beside it."""
    if rates.load < 0 or load_now < 0:
        return False
    return rates.load - load_now > max(1.0, (os.cpu_count() or 2) / 2)


def speed_settings(hp: HParams, trains: bool, compile: bool | str) -> tuple:
    """What changes a step's speed besides backbone, resolution and precision: the batch, whether B trains,
    and then the loop's settings (not the method's head: a few small layers)."""
    out: tuple = (f"batch {hp.batch_size}", "trains" if trains else "frozen")
    if trains:
        out += (hp.optimizer, f"bn {hp.bn}", f"augment {hp.augment}", f"clip {hp.grad_clip > 0}", f"compile {compile}")
    return out


def rates_for(
    backbone: str,
    resolution: int,
    hp: HParams,
    device: torch.device,
    precision: str,
    cache: RateCache,
    *,
    compile: bool | str = False,
    train: bool = True,
) -> Rates:
    """From the cache when this configuration was measured on this device before, else measured now and kept."""
    key = rate_key(backbone, resolution, speed_settings(hp, train, compile), precision, device)
    hit = cache.get(key)
    if hit is not None and not (device.type == "cpu" and busier_then(hit, _load())):
        return hit
    rates = measure_rates(backbone, resolution, hp, device, precision, compile=compile, train=train)
    cache.put(key, rates)
    return rates
