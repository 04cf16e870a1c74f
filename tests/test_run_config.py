"""bench/run_config.py: a run's identity without torch, built with keywords, its id unchanged.

Why: the records, the sweep's bookkeeping and the report name runs by their config's hash; moving the
config out of the training module must neither pull torch into them nor change one run id already on
disk (results/examples holds records whose ids the sweep and the report look runs up by).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.models.hparams import HParams, ProbeSpec
from bench.registry import UserError
from bench.run_config import Precision, RunConfig, Stage

ROOT = Path(__file__).resolve().parent.parent


def test_the_config_module_imports_no_torch() -> None:
    code = "import sys, bench.run_config, bench.records; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# Run ids computed by the code before RunConfig left bench/train/run.py (commit 244e50f): the ids of
# every record on disk are these hashes, so they must never move. The probe's std_floor came later with
# a default of 1 (another probe, so other ids); at 0 it is the probe those records fitted, same ids.
LEGACY_PROBE = ProbeSpec(std_floor=0)
GOLDEN = [
    (dict(backbone="tiny", method="finetune", fraction=0.1, seed=0), "c4c98de4109011bb"),
    (
        dict(
            backbone="efficientnet_lite0", method="sft-mlp", fraction=0.01, seed=3, resolution=32, stage="trial", pool=(3, 4),
            hp=HParams(lr=0.01, branch_width=64, steps=500), probe=LEGACY_PROBE,
        ),
        "fa882e221d10c23e",
    ),
    (
        dict(
            backbone="resnet18", method="linear_probe", fraction=1.0, seed=1, hp=HParams(augment=False),
            probe=LEGACY_PROBE.update(folds=3), precision="bf16", device_type="cuda", data="abc",
        ),
        "7914e1dbc9ce1217",
    ),
    (
        dict(backbone="tiny", method="sft-side-frozen", fraction=0.5, seed=2, hp=HParams(augment=False), stage="trial",
             cv_folds=3, probe=LEGACY_PROBE),
        "226d7197781fc1d6",
    ),
    (
        dict(backbone="tiny", method="article_sft", fraction=0.1, seed=0, recipe="article",
             hp=HParams(bn="train", optimizer="sgd")),
        "18465a8bc995298d",
    ),
]  # fmt: skip


@pytest.mark.parametrize("config, run_id", GOLDEN)
def test_run_ids_are_those_of_the_code_before_the_move(config: dict, run_id: str) -> None:
    assert RunConfig(**config).run_id == run_id


def test_a_stored_config_rebuilds_to_its_run_id() -> None:
    """A record's `config` (records/*.json, a checkpoint) is the RunConfig again, with the same id."""
    cfg = RunConfig(**GOLDEN[1][0])
    config = json.loads(json.dumps(cfg.to_dict()))
    probe = None if config["probe"] is None else ProbeSpec.from_dict(config["probe"])
    again = RunConfig(**{**config, "hp": HParams(**config["hp"]), "probe": probe, "pool": tuple(config["pool"])})
    assert again == cfg and again.run_id == GOLDEN[1][1]


def test_modes_are_enums_that_keep_their_strings() -> None:
    cfg = RunConfig(backbone="tiny", method="finetune", fraction=0.1, seed=0, stage="trial", precision="bf16")
    assert cfg.stage is Stage.TRIAL and cfg.precision is Precision.BF16
    assert cfg.to_dict()["stage"] == "trial" and type(cfg.to_dict()["stage"]) is str
    assert json.dumps(cfg.stage) == '"trial"'
    with pytest.raises(UserError, match="stage 'x' is not one of: final, trial"):
        RunConfig(backbone="tiny", method="finetune", fraction=0.1, seed=0, stage="x")


def test_the_config_is_built_with_keywords_only() -> None:
    with pytest.raises(TypeError):
        RunConfig("tiny", "finetune", 0.1, 0)  # type: ignore[misc]


@pytest.mark.parametrize(
    "method, hp, message",
    [
        ("finetune", HParams(backbone_lr_mult=0.0), "backbone_lr_mult must be > 0"),
        ("sft-mlp-frozen", HParams(augment=True), "cannot be augmented"),
    ],
)
def test_the_one_fit_check_refuses_what_a_training_cannot_do(method: str, hp: HParams, message: str) -> None:
    with pytest.raises(UserError, match=message):
        RunConfig(backbone="tiny", method=method, fraction=0.1, seed=0, hp=hp)
