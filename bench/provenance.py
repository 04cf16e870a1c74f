"""Where a result came from: versions, git commit, device. Saved with every record."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "timm", "optuna", "numpy", "pandas")


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` line of /proc/cpuinfo (None where there is none, or no /proc).

    The one parser of that file: the CPU's model (every record's provenance) and its flags (perf's
    machine line) are read the same way."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, or what `platform` says where /proc/cpuinfo has none."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@functools.cache
def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def provenance(device: torch.device) -> dict:
    """Where and with what a run is computed: versions, commit, device, threads, host, and the process's
    numerical settings (bench/numerics.py `Numerics`: whether CUDA kernels were deterministic, and
    whether fp32 could use TF32 there; a CPU has no TF32, so its runs record false)."""
    from bench.numerics import Numerics

    numerics = Numerics.current()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": git_commit(),
        "device": device_name(device),
        "device_type": device.type,
        # CPU results depend slightly on it (reduction order) and the run id does not include it:
        # runs.csv carries it, and the report says when one cell mixes thread counts.
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "deterministic": numerics.deterministic,
        "tf32": numerics.tf32 and device.type == "cuda",
    }


def resolve_device(name: str) -> torch.device:
    from bench.registry import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device '{name}' is not one of: auto, cpu, cuda, cuda:N")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated by torch. CPU: the process's peak resident set (ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
