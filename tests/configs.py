"""`tiny_config`: the run config most tests build (the tiny backbone at 32 px on the CPU), each with
its own method, fraction, seed and settings. A module, not a fixture: the tests' own helpers call it too."""

from __future__ import annotations

from typing import Any

import torch

from bench.run_config import DataFacts, RunConfig, make_config


def tiny_config(data: DataFacts, method: str = "finetune", fraction: float = 0.2, seed: int = 0, **kw: Any) -> RunConfig:
    """`make_config` for the tiny backbone at 32 px on the CPU; `kw` as make_config takes them."""
    return make_config(
        backbone="tiny", method=method, fraction=fraction, seed=seed, resolution=32, device=torch.device("cpu"), data=data, **kw
    )
