"""`cli.py run` end to end (typer's CliRunner on cli.app): the record, predictions, checkpoint, bad input.

Why: the record, the predictions CSV and the checkpoint are the suite's outputs that
reports and people read; bad input must be one line with exit code 2 and leave nothing
behind, so a sweep or a user never finds half-written results.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import cli
from bench.models.hparams import HParams, ProbeSpec
from bench.run_config import RunConfig
from bench.train.evaluate import predict
from bench.train.run import build_model

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture(scope="module")
def cli_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One successful `run` (sft, tiny backbone) with every output asked for."""
    out = tmp_path_factory.mktemp("cli_run")
    args = [
        "run",
        "--backbone",
        "tiny",
        "--method",
        "sft",
        "--fraction",
        "0.2",
        "--seed",
        "1",
        "--steps",
        "20",
        "--batch-size",
        "64",
        "--probe-set",
        "folds=3",
        "--probe-set",
        "l2_grid=[0.01, 0.1]",
        "--set",
        "label_smoothing=0.1",
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(out / "results"),
        "--save-predictions",
        str(out / "preds" / "p.csv"),
        "--save-model",
        str(out / "model.pt"),
        "--device",
        "cpu",
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    records = list((out / "results" / "runs").glob("*.json"))
    assert len(records) == 1, "the record goes to RESULTS_DIR/runs/<run_id>.json by default"
    return {"out": out, "result": result, "record_path": records[0], "record": json.loads(records[0].read_text())}


def test_record_has_metrics_costs_hparams_and_provenance(cli_run: dict) -> None:
    rec = cli_run["record"]
    assert cli_run["record_path"].stem == rec["run_id"] and len(rec["run_id"]) == 16
    assert (rec["backbone"], rec["method"], rec["fraction"], rec["seed"], rec["stage"]) == ("tiny", "sft", 0.2, 1, "final")
    assert 0.0 <= rec["test_accuracy"] <= 1.0 and 0.0 <= rec["macro_f1"] <= 1.0
    assert len(rec["per_class_accuracy"]) == 10 and all(0.0 <= a <= 1.0 for a in rec["per_class_accuracy"])
    assert rec["classes"][0] == "airplane" and len(rec["classes"]) == 10
    tiny_backbone, head = 14416, 330
    assert rec["trainable_params"] == tiny_backbone + 2 * head
    assert rec["n_train"] == 600 and rec["n_eval"] == 200
    assert rec["wall_seconds"] > 0 and rec["train_seconds"] > 0 and rec["wall_seconds"] >= rec["train_seconds"]
    assert rec["images_per_second"] > 0 and rec["eval_images_per_second"] > 0
    assert rec["peak_memory_mb"] > 0
    assert rec["hparams"]["steps"] == 20 and rec["hparams"]["label_smoothing"] == 0.1
    assert HParams(**rec["hparams"]) == HParams(steps=20, batch_size=64, label_smoothing=0.1)
    assert ProbeSpec.from_dict(rec["probe_hparams"]) == ProbeSpec(folds=3, l2_grid=(0.01, 0.1))
    assert rec["probe_l2"] in (0.01, 0.1) and rec["probe_converged"] is True and rec["probe_steps"] > 0
    assert (rec["steps"], rec["min_steps"], rec["bn"], rec["augment"]) == (20, 500, "frozen", True)
    assert [r["phase"] for r in rec["history"]] == ["probe_cv"] * 2 + ["probe"] + ["train"] * 10  # 2 strengths cross-validated
    prov = rec["provenance"]
    assert {"python", "versions", "git_commit", "device", "device_type", "hostname"} <= prov.keys()
    assert prov["device_type"] == "cpu" and prov["versions"]["torch"] and prov["versions"]["timm"]
    assert isinstance(prov["git_commit"], str) and prov["git_commit"]
    assert rec["test_accuracy"] > 0.2, "20 steps of sft learn the synthetic set (measured 0.42)"


def _predictions(cli_run: dict) -> tuple[list[str], list[dict]]:
    with open(cli_run["out"] / "preds" / "p.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_predictions_csv(cli_run: dict, synthetic_data) -> None:  # noqa: ANN001
    header, rows = _predictions(cli_run)
    classes = cli_run["record"]["classes"]
    assert header == ["index", "label", "prediction", *[f"prob_{c}" for c in classes]]
    _, test_y = synthetic_data.test()
    assert [int(r["index"]) for r in rows] == list(range(len(test_y)))
    assert [int(r["label"]) for r in rows] == test_y.tolist(), "index is the position in the test set"
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in classes]
        assert abs(sum(probs) - 1.0) < 1e-4 and min(probs) >= 0.0
        assert int(r["prediction"]) == max(range(10), key=probs.__getitem__)
    accuracy = sum(r["label"] == r["prediction"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(cli_run["record"]["test_accuracy"])


def test_checkpoint_loads_weights_only_and_reproduces_predictions(cli_run: dict, synthetic_data) -> None:  # noqa: ANN001
    ckpt = torch.load(cli_run["out"] / "model.pt", weights_only=True)
    assert ckpt["classes"] == cli_run["record"]["classes"]
    config = dict(ckpt["config"])
    cfg = RunConfig(**{**config, "hp": HParams(**config["hp"])})
    assert cfg.run_id == cli_run["record"]["run_id"], "the checkpoint's config is the run's config"
    net = build_model(cfg, 10)
    net.load_state_dict(ckpt["state_dict"])
    test_x, _ = synthetic_data.test()
    probs = predict(net, test_x, cfg.precision)
    _, rows = _predictions(cli_run)
    assert probs.argmax(1).tolist() == [int(r["prediction"]) for r in rows]
    saved = torch.tensor([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
    torch.testing.assert_close(probs, saved, rtol=1e-4, atol=1e-5)


def test_summary_is_printed(cli_run: dict) -> None:
    out = cli_run["result"].stdout
    assert cli_run["record"]["run_id"] in out and "test_accuracy" in out and "record:" in out


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)


BAD = {
    "unknown method": (["--method", "sftt"], "unknown method 'sftt' (did you mean 'sft'?)"),
    "unknown backbone": (["--backbone", "resnet19"], "did you mean 'resnet18'"),
    "fraction 0": (["--fraction", "0"], "outside (0, 1]"),
    "fraction 1.5": (["--fraction", "1.5"], "outside (0, 1]"),
    "fraction too small": (["--fraction", "0.001"], "at least 2 per class"),
    "missing data offline": (["--data-dir", "{tmp}/nodata"], "could not be downloaded"),
    "set without =": (["--set", "steps"], "NAME=VALUE"),
    "set unknown name": (["--set", "learning_rate=0.1"], "unknown hyperparameter"),
    "set wrong type": (["--set", "lr=abc"], "lr must be of type float"),
    "set float steps": (["--set", "steps=2.5"], "steps must be of type int"),
    "bad bn policy": (["--method", "finetune", "--bn", "eval"], "bn 'eval' is not one of"),
    "zero multiplier": (["--method", "finetune", "--backbone-lr-mult", "0"], "a frozen backbone is a row of its own"),
    "augmenting a frozen row": (["--method", "sft-mlp-frozen", "--set", "augment=true"], "cannot be augmented"),
    "training settings for the probe": (
        ["--method", "linear_probe", "--lr", "0.1"],
        "linear_probe has no training hyperparameters",
    ),
    "probe settings for finetune": (["--method", "finetune", "--probe-set", "lr=0.1"], "--probe-set applies to"),
    "set negative decay": (["--set", "weight_decay=-1"], "weight_decay must be >= 0"),
    "nan lr": (["--lr", "nan"], "lr must be a finite number"),
    "unknown branch": (["--method", "sft", "--branch", "cnn"], "branch 'cnn'"),
    "branch on finetune": (["--method", "finetune", "--branch", "mlp"], "sft only"),
    "weights unavailable": (["--backbone", "resnet18"], "not available"),
    "unknown optimizer": (["--optimizer", "adam"], "optimizer 'adam'"),
    "bad precision": (["--precision", "fp16"], "precision 'fp16'"),
    "bad recipe": (["--recipe", "magic"], "recipe 'magic'"),
    "bad resolution": (["--resolution", "4"], "resolution 4"),
    "zero resolution": (["--resolution", "0"], "resolution 0"),
    "zero steps": (["--steps", "0"], "steps must be positive"),
    "bad stage": (["--stage", "test"], "stage 'test'"),
    "bad device": (["--device", "tpu"], "device 'tpu'"),
    "predictions path is a folder": (["--save-predictions", "{tmp}"], "is a folder"),
    # issue 19, audit items 1, 5 and 6: checked before the data is read, so nothing trains in vain
    "huge batch": (["--batch-size", "1000000000"], "--batch-size must be at most 65536, got 1000000000"),
    "huge steps": (["--steps", "1000000000000"], "--steps must be at most 1000000"),
    "huge batch by --set": (["--set", "batch_size=100000000"], "batch_size must be at most 65,536"),
    "record where no file can be made": (["--record", "/proc/x.json"], "/proc is not a writable folder"),
    "a 300-character record name": (["--record", "{tmp}/" + "r" * 300 + ".json"], "is 305 bytes long"),
    "data folder is a file": (["--data-dir", "{repo}/README.md"], "README.md is a file, not a folder"),
    "diverging lr": (["--method", "finetune", "--optimizer", "sgd", "--schedule", "constant", "--lr", "1e30"], "diverged"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: str, synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached torchvision weights
    extra, message = BAD[case]
    out = tmp_path / "out"
    args = [
        "run",
        "--backbone",
        "tiny",
        "--method",
        "linear_probe",
        "--fraction",
        "0.1",
        "--steps",
        "2",
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(out / "results"),
        "--save-predictions",
        str(out / "p.csv"),
        "--save-model",
        str(out / "m.pt"),
        "--device",
        "cpu",
        *[a.replace("{tmp}", str(tmp_path)).replace("{repo}", str(REPO)) for a in extra],
    ]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "bad input wrote something"


def test_a_folder_where_a_batch_file_belongs_is_named_not_called_a_failed_download(synthetic_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    batch.unlink()
    batch.mkdir()
    args = [
        "run",
        "--backbone",
        "tiny",
        "--method",
        "linear_probe",
        "--data-dir",
        str(data),
        "--results-dir",
        str(tmp_path / "r"),
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{batch} is not a file" in lines[0] and "download" not in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_asked_for_without_cuda(synthetic_dir: Path, tmp_path: Path) -> None:
    args = [
        "run",
        "--backbone",
        "tiny",
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(tmp_path / "r"),
        "--device",
        "cuda",
    ]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_script_itself_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    """`python cli.py ...` (not only the Typer app in-process) exits 2 without a traceback."""
    proc = subprocess.run(
        [sys.executable, "cli.py", "run", "--backbone", "tiny", "--method", "sftt", "--results-dir", str(tmp_path / "r")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown method 'sftt'" in proc.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- one CLI, one error contract


def _help(command: str) -> str:
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "command,int_options", [("run", ["--seed", "--steps"]), ("sweep", ["--trials", "--seeds"]), ("perf", ["--batch-size"])]
)
def test_help_shows_real_types_and_the_backbones(command: str, int_options: list[str]) -> None:
    """Integer options are declared as integers (Typer shows `<int ...>`, never `<str>`), flags take no
    value, and the backbones' registry keys are listed, so `--help` alone tells a user what to type."""
    from bench.models.backbones import BACKBONES

    text = _help(command)
    lines = {ln.split()[1]: ln for ln in text.splitlines() if len(ln.split()) > 1 and ln.split()[1].startswith("--")}
    for option in int_options:
        assert "<int" in lines[option] and "<str>" not in lines[option], lines[option]
    assert all(name in text for name in BACKBONES.names()), text
    assert "<bool>" not in text


BAD_USAGE = {
    "run seed not an integer": (["run", "--seed", "abc"], "--seed must be an integer, got 'abc'"),
    "sweep trials not an integer": (["sweep", "--trials", "abc"], "--trials must be an integer, got 'abc'"),
    "sweep trials below min": (["sweep", "--trials", "0"], "--trials must be positive, got 0"),
    "unknown option": (["run", "--epochs", "3"], "No such option: --epochs"),
    "unknown command": (["runn"], "No such command 'runn'"),
}


@pytest.mark.parametrize("case", BAD_USAGE)
def test_usage_errors_are_one_line_exit_2(case: str) -> None:
    """Typer's own parse errors follow the suite's contract too: one line `error: ...` on stderr, exit 2,
    no traceback and no Rich box (a box is many lines a log or a script cannot read)."""
    args, message = BAD_USAGE[case]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output


def test_python_dash_m_bench_is_the_same_cli() -> None:
    """`python -m bench` (how --parallel starts its workers) answers like `python cli.py`."""
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "sweep" in proc.stdout and "perf" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "bench", "sweep", "--trials", "0"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --trials must be positive, got 0", bad.stderr


def test_recipe_seed_is_the_article_recipe_with_a_note(synthetic_dir: Path, tmp_path: Path) -> None:
    """`--recipe seed` (and `--method seed_sft`), the old names, train the very run `--recipe article`
    does (same config, same run id), and the user is told the new names."""
    import warnings

    from bench.registry import RenamedWarning

    records, notes = {}, {}
    for recipe, method in (("article", "article_sft"), ("seed", "seed_sft")):
        args = ["run", "--backbone", "tiny", "--method", method, "--recipe", recipe, "--fraction", "0.1", "--steps", "2"]
        args += ["--data-dir", str(synthetic_dir), "--record", str(tmp_path / f"{recipe}.json"), "--device", "cpu"]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = runner.invoke(cli.app, args)
        assert result.exit_code == 0, result.output
        records[recipe] = json.loads((tmp_path / f"{recipe}.json").read_text())
        notes[recipe] = " | ".join(str(w.message) for w in seen if issubclass(w.category, RenamedWarning))
    assert notes["article"] == ""
    assert "recipe 'seed' is now called 'article'" in notes["seed"]
    assert "method 'seed_sft' is now called 'article_sft'" in notes["seed"]
    old, new = records["seed"], records["article"]
    assert old["run_id"] == new["run_id"] and old["config"] == new["config"]
    assert (old["recipe"], old["method"]) == ("article", "article_sft")
    assert old["test_accuracy"] == new["test_accuracy"]


def test_methods_lists_each_methods_kind() -> None:
    """`methods` says what kind each method is (whether B trains, where the head starts), not only a summary."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.models.kinds import METHODS

    out = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    for name in METHODS:
        line = next(ln for ln in out.output.splitlines() if f" {name} " in ln)
        assert METHODS.get(name).kind.value.replace("_", " ") in line, line
