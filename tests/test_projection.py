"""The cost-aware start (issue 20): every sweep projects its wall time from rates measured on this
device, remembered so that asking again costs seconds, warns in one line with cheaper alternatives
when it is more than a day, and the live ETA starts from the same projection.

Why: the README's main command projected at 135-206 days on a 2-core CPU and started without a word,
its live ETA jumped between 25 minutes and a day, and `--dry-run` took 3.5 minutes to say so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bench.records import Cell, CellStatus, Claim, GridStatus, RunRecord
from bench.sweep.experiment import resolve
from bench.sweep.projection import DAY, ItemCost, Projection, advice
from bench.sweep.rates import RateCache, Rates, rate_key, rates_for
from bench.sweep.status import eta

CPU = torch.device("cpu")


def test_rates_are_measured_once_then_read_from_the_cache(tmp_path: Path) -> None:
    from bench.models.hparams import HParams

    hp = HParams(batch_size=16)
    cache = RateCache(tmp_path / "rates.json")
    t0 = time.perf_counter()
    first = rates_for("tiny", 32, hp, CPU, "fp32", cache)
    measured = time.perf_counter() - t0
    assert not first.cached and first.train > 0 and first.forward > 0 and first.measured_at
    t0 = time.perf_counter()
    again = rates_for("tiny", 32, hp, CPU, "fp32", RateCache(tmp_path / "rates.json"))  # another process
    assert again.cached and again.train == first.train and time.perf_counter() - t0 < measured / 5
    from bench.sweep.rates import speed_settings

    key = rate_key("tiny", 32, speed_settings(hp, True, False), "fp32", CPU)
    assert "tiny|32|batch 16|trains|adamw|bn frozen|" in key and "|fp32|" in key
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
    # another optimiser or BatchNorm policy is another rate (a step's speed depends on them); a frozen row's only
    # on the forward pass
    assert rate_key("tiny", 32, speed_settings(hp.update(optimizer="sgd"), True, False), "fp32", CPU) != key
    assert speed_settings(hp.update(optimizer="sgd"), False, False) == speed_settings(hp, False, False)
    # a damaged cache file is an empty cache, never an error
    (tmp_path / "bad.json").write_text("{not json")
    assert RateCache(tmp_path / "bad.json").get(key) is None
    off = RateCache(None)
    off.put(key, first)  # a cache that is off remembers in memory only, writes no file
    assert off.get(key) is not None


def _status(done_trial: float | None = None, done_final: float | None = None) -> GridStatus:
    cell = Cell("tiny", "finetune", "tuned", 0.1)
    cs = CellStatus(cell, trials_budget=4, finals_total=3)
    from bench.records import SearchStatus

    ss = SearchStatus(0, 1, 4)
    if done_trial is not None:
        ss.done, ss.trial_seconds = 1, [done_trial]
    cs.searches[0] = ss
    if done_final is not None:
        cs.finals[0] = RunRecord.from_dict(
            {"run_id": "r", "config": {}, "backbone": "tiny", "method": "finetune", "fraction": 0.1, "seed": 0, "recipe": "tuned",
             "resolution": 32, "pretrained": False, "stage": "final", "val_fraction": 0.2, "precision": "fp32",
             "device_type": "cpu", "data": "", "cv_folds": 1, "protocol": 3, "hparams": {}, "probe_hparams": None,
             "wall_seconds": done_final}
        )  # fmt: skip
    return GridStatus([cs], [Claim("w", "x", "")])


def test_the_eta_starts_at_the_projection_and_scales_smoothly() -> None:
    costs = {Cell("tiny", "finetune", "tuned", 0.1): ItemCost(final=10.0, trial=5.0)}
    seconds, basis = eta(_status(), costs)
    assert seconds == 4 * 5.0 + 3 * 10.0 and basis == "projected"  # what --dry-run prints, before anything finished
    # one trial took twice its projection: everything left is scaled by 2, no jump to a single item's time
    seconds, basis = eta(_status(done_trial=10.0), costs)
    assert seconds == pytest.approx(2.0 * (3 * 5.0 + 3 * 10.0)) and "× 2.00" in basis
    seconds, _ = eta(_status(done_trial=10.0, done_final=10.0), costs)
    assert seconds == pytest.approx((20.0 / 15.0) * (3 * 5.0 + 2 * 10.0))
    # without a projection: from the finished items, as before (nothing measured: no made-up number)
    assert eta(_status(), None) == (None, "finished items")


def _projection(seconds: float) -> Projection:
    return Projection((Rates("tiny", 32, 64, 1.0, 1.0),), seconds * 1.2, seconds, 10, 10, 0.0, {})


def test_a_grid_of_more_than_a_day_says_so_with_cheaper_alternatives() -> None:
    exp = resolve({"name": "big", "backbones": ["tiny"], "methods": ["finetune"], "fractions": [0.01, 0.1, 1.0]})
    assert advice(exp, _projection(0.5 * DAY), CPU, 0) is None
    line = advice(exp, _projection(3 * DAY), CPU, 0)
    assert line is not None and "\n" not in line and "3.0 days" in line
    assert "--fractions 0.01,0.1" in line and "--experiment quick" in line and "GPU" in line
    gpu = advice(exp, _projection(3 * DAY), torch.device("cuda"), 4)
    assert gpu is not None and "--parallel 4" in gpu and "GPU (docs" not in gpu


def test_every_sweep_prints_its_projection_and_a_second_dry_run_takes_seconds(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    config = tmp_path / "p.toml"
    config.write_text('backbones = ["tiny"]\nmethods = ["finetune"]\nfractions = [0.1]\nseeds = 1\ntrials = 1\nsteps = 3\n')
    env = {"SFT_BENCH_RATE_CACHE": str(tmp_path / "rates.json")}
    args = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r")]
    t0 = time.perf_counter()
    first = CliRunner().invoke(cli.app, [*args, "--dry-run"], env=env)
    cold = time.perf_counter() - t0
    assert first.exit_code == 0, first.output
    assert "projected wall time on cpu:" in first.output and "rates measured in" in first.output
    assert json.loads((tmp_path / "rates.json").read_text())
    t0 = time.perf_counter()
    second = CliRunner().invoke(cli.app, [*args, "--dry-run"], env=env)
    assert second.exit_code == 0 and "(cached rates" in second.output
    assert time.perf_counter() - t0 < cold
    run = CliRunner().invoke(cli.app, [*args, "--quiet", "--no-report"], env=env)
    assert run.exit_code == 0, run.output
    assert run.output.index("projected wall time on cpu:") < run.output.index("start trial 1")  # before anything trains
    # a dry run of a half-done grid says what is finished and what the rest projects to, and writes nothing
    assert "already done" not in first.output  # nothing was finished then
    files = {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file()}
    half = CliRunner().invoke(cli.app, [*args, "--fractions", "0.1,0.2", "--dry-run"], env=env)
    assert half.exit_code == 0, half.output
    text = " ".join(half.output.split())  # the console wraps long lines
    line = text[text.index("already done in") :]
    assert ": 1/2 final runs and 1/2 trials; the rest projects to " in line and "with one worker (projected ×" in line
    assert {p: p.read_bytes() for p in sorted((tmp_path / "r").rglob("*")) if p.is_file()} == files


def test_a_cpu_rate_measured_under_much_more_load_than_now_is_measured_again() -> None:
    """A rate taken while other jobs shared the cores understates the device (measured here: a 36.8 h
    projection of quick.toml at a load of 4 on 2 cores): it is taken again once the machine is quieter."""
    from dataclasses import replace

    from bench.sweep.rates import busier_then

    busy = Rates("tiny", 32, 64, 10.0, 50.0, load=5.0)
    assert busier_then(busy, 0.5) and not busier_then(busy, 4.5)
    assert not busier_then(replace(busy, load=-1.0), 0.0) and not busier_then(replace(busy, load=0.2), 0.0)


def test_after_a_resume_the_eta_is_paced_by_items_finished_since_the_start() -> None:
    """Items timed in an earlier session (other threads, other load) no longer pace a resumed sweep's ETA."""
    import datetime as dt
    from dataclasses import replace

    costs = {Cell("tiny", "finetune", "tuned", 0.1): ItemCost(final=10.0, trial=5.0)}
    status = _status(done_trial=20.0, done_final=10.0)  # the trial took 4x its projection, the final run 1x
    status.cells[0].searches[0].trial_ends = [1000.0]  # long before this start
    final = status.cells[0].finals[0]
    status.cells[0].finals[0] = replace(final, finished_at=dt.datetime.fromtimestamp(5000.0, dt.UTC).isoformat())
    left = 3 * 5.0 + 2 * 10.0
    seconds, basis = eta(status, costs, since=4000.0)  # only the final run finished since
    assert seconds == pytest.approx(1.0 * left) and basis == "projected × 1.00 as measured since this start"
    seconds, basis = eta(status, costs, since=6000.0)  # nothing since: every finished item, as before
    assert seconds == pytest.approx((30.0 / 15.0) * left) and basis.endswith("as measured so far")
