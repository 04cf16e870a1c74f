"""The machine a perf run measured on, and how loaded it was (these machines are shared)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.provenance import cpu_model, cpuinfo_field, git_commit, provenance


def loadavg() -> float:
    """The 1-minute load average (nan where /proc cannot tell): printed beside every figure."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (whether it has bf16 instructions decides what bf16 costs on CPU)."""
    return set((cpuinfo_field("flags") or "").split())


def machine(device: torch.device, command: str = "") -> dict:
    """Where and how the figures were measured: CPU, GPU, versions, commit, command, start time and load."""
    flags = cpu_flags()
    prov = provenance(device)
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (not measured on GPU)",
        "device": str(device),
        "python": prov["python"],
        "versions": prov["versions"],
        "onednn": torch.backends.mkldnn.is_available(),
        "deterministic": prov["deterministic"],
        "tf32": prov["tf32"],
        "git_commit": git_commit(),
        "hostname": platform.node(),
        "command": command or " ".join(shlex.quote(a) for a in sys.argv),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_start": loadavg(),
    }
