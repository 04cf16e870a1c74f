"""`parallel` workers: K processes of `python -m bench sweep --worker` on one storage, watched from here.

Why processes and not threads: each worker is exactly what another machine would run (its own claims,
its own heartbeat, its own torch threads), so one machine with `--parallel K` and K machines on one
database take the same code path, and a worker that dies takes nothing else with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.sweep.events import Relay, SweepEvent, WorkerFailed
from bench.sweep.signals import interrupted_code

if TYPE_CHECKING:
    import torch

    from bench.data import Cifar10
    from bench.records import GridStatus
    from bench.sweep.experiment import Experiment
    from bench.sweep.projection import ItemCost


def worker_devices(dev: torch.device, k: int) -> list[str | None]:
    """The device each of K `--parallel` workers trains on: on a CUDA machine whose sweep names no
    GPU (device auto or cuda), worker i takes cuda:(i % N) of the N GPUs, one worker per GPU first
    (docs/gpu.md: more workers than GPUs share them, best under MPS). None: the worker keeps the
    experiment's device (a CPU, or the one GPU the sweep named)."""
    if dev.type != "cuda" or dev.index is not None:
        return [None] * k
    import torch

    n = max(1, torch.cuda.device_count())
    return [f"cuda:{i % n}" for i in range(k)]


def worker_commands(base: list[str], dev: torch.device, k: int, threads: int | None) -> list[list[str]]:
    """The command line of each of K workers: the shared one, its thread count (CPU workers share the
    cores: `set_threads`), its GPU (`worker_devices`)."""
    cmds = []
    for device in worker_devices(dev, k):
        cmd = list(base)
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if device is not None:
            cmd += ["--device", device]
        cmds.append(cmd)
    return cmds


def set_threads(threads: int | None, dev: torch.device, parallel: int) -> int | None:
    """torch's CPU threads in this process: `threads`, or the cores shared out among CPU workers
    (K workers with a thread per core each would fight over the same cores). On a GPU the workers'
    CPU threads only launch kernels and are not divided. Returns the count set."""
    if threads is None and dev.type == "cpu" and parallel > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def _worker_env(exp: Experiment) -> dict[str, str]:
    """The workers' environment: this checkout on PYTHONPATH, and a database password handed over privately
    (config.toml has the URL without it)."""
    env = dict(os.environ)
    # `-m bench` finds this checkout from any working directory, installed or not.
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    if "://" in exp.storage:
        import sqlalchemy

        password = sqlalchemy.engine.make_url(exp.storage).password
        if password and password != "***":
            env["SFT_BENCH_DB_PASSWORD"] = str(password)
    return env


def _stop_workers(procs: list[tuple[subprocess.Popen, Any]]) -> None:
    """Ctrl-C or SIGTERM here: pass SIGINT on to every live worker and give them a minute to hand back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + 60
    for p, _ in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_parallel(
    exp: Experiment,
    data: Cifar10,
    dev: torch.device,
    k: int,
    threads: int | None,
    costs: dict[Any, ItemCost] | None,
    progress: Relay,
    emit: Callable[[SweepEvent], None],
) -> tuple[GridStatus, int]:
    """K independent workers on the same storage (exactly what several machines do), watched from here."""
    from bench.sweep.export import export_runs
    from bench.sweep.journal import open_nofollow
    from bench.sweep.worker import Sweep

    out = exp.out_dir
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "bench", "sweep", "--config", str(out / "config.toml"), "--worker", "--no-report"]
    env = _worker_env(exp)
    procs = []
    for i, cmd in enumerate(worker_commands(base, dev, k, threads)):
        log = open_nofollow(logs / f"worker-{i}.log")  # a link planted there is never followed
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    monitor: Sweep = Sweep(exp, data, dev, read_only=True)
    monitor.costs = costs
    code = 0
    try:
        with progress:
            while any(p.poll() is None for p, _ in procs):
                progress.status(monitor.survey())
                time.sleep(2)
    except KeyboardInterrupt as exc:
        code = interrupted_code(exc)
        _stop_workers(procs)
    for i, (p, log) in enumerate(procs):
        log.close()
        if p.returncode not in (0, 130, 143) and code == 0:
            emit(WorkerFailed(i, p.returncode, logs / f"worker-{i}.log"))
            code = 1
    writer = Sweep(exp, data, dev)
    export_runs(writer)
    status = writer.survey()
    if code == 0 and not status.complete:
        code = 1
    return status, code
