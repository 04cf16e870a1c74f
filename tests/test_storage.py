"""The storage survives its own crashes (bench/sweep/storage.py): a torn journal tail is cut and kept aside,
a damaged middle line is refused with the line and the remedy, a failed append takes itself back,
a lock left by a killed process is broken at once, and temporary files of killed processes go away.

Journals here are written by Optuna itself (a few studies and trials), then damaged as a full
disk, a power cut or a stray editor would.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from bench.sweep.journal import (
    BOOT_ID,
    HOST,
    LOCK_PREFIX,
    JournalDamaged,
    SafeJournalBackend,
    clean_leftovers,
    open_journal,
    open_nofollow,
    repair_journal,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_journal(path: Path, trials: int = 3) -> list[float]:
    storage = open_journal(str(path))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for i in range(trials):
        study.enqueue_trial({"x": float(i)})
        study.optimize(lambda t: t.suggest_float("x", 0, 10), n_trials=1)
    return [t.value for t in study.trials]


def values(path: Path) -> list[float]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return [t.value for t in optuna.load_study(study_name="s", storage=storage).trials]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[:-7], id="truncated-tail"),
        pytest.param(lambda data: data + b'{"op_code": 5, "worker_id": "x", "study_id": 0, "trial', id="partial-line"),
        pytest.param(lambda data: data + b"\x00" * 40, id="zeros-after-power-cut"),
        pytest.param(lambda data: data + b"garbage\nmore garbage\n", id="garbage-tail"),
    ],
)
def test_a_torn_tail_is_cut_kept_aside_and_the_journal_grows_again(tmp_path: Path, damage) -> None:  # noqa: ANN001
    path = tmp_path / "optuna.journal"
    before = make_journal(path)
    sound = path.read_bytes()
    path.write_bytes(damage(sound))
    torn = path.read_bytes()
    notes: list[str] = []
    storage = open_journal(str(path), notes)
    assert len(notes) == 1 and "cut a torn tail" in notes[0] and "kept in" in notes[0], notes
    aside = Path(notes[0].rsplit("kept in ", 1)[1])
    assert aside.parent == tmp_path and path.read_bytes() + aside.read_bytes() == torn  # nothing lost, only moved
    assert all(json.loads(ln) for ln in lines(path))
    # The storage works and keeps working: a new trial, then a fresh reader sees every trial.
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: 42.0, n_trials=1)
    got = values(path)
    assert got[-1] == 42.0 and got[:2] == before[:2]  # the cut write (at most the last trial's end) alone is lost
    assert repair_journal(path) is None  # sound now: nothing to do


def test_optuna_alone_makes_a_partial_line_fatal_and_the_safe_backend_does_not(tmp_path: Path) -> None:
    """The issue's failure: the next write lands on the partial line, and every later read fails."""
    plain, safe = tmp_path / "plain.journal", tmp_path / "safe.journal"
    for path in (plain, safe):
        make_journal(path, trials=1)
        with open(path, "ab") as f:
            f.write(b'{"op_code": 4, "worker')  # a full disk cut this append
    stock = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(plain)))
    with pytest.raises(AssertionError):  # "Should not reach.": its own write landed on the partial line
        optuna.create_study(study_name="t1", storage=stock)
    with pytest.raises(ValueError):  # and from the next write on, every read fails
        optuna.create_study(study_name="t2", storage=optuna.storages.JournalStorage(type(stock._backend)(str(plain))))
    with pytest.raises(ValueError):
        values(plain)
    # The safe backend, appended to without the open-time repair, still never writes onto the partial line.
    storage = optuna.storages.JournalStorage(SafeJournalBackend(str(safe)))
    optuna.create_study(study_name="t1", storage=storage)
    optuna.create_study(study_name="t2", storage=storage)
    assert values(safe) == [0.0]
    assert {s.study_name for s in storage.get_all_studies()} == {"s", "t1", "t2"}
    assert list(tmp_path.glob("safe.journal.torn-*"))


def test_a_damaged_middle_line_is_refused_with_the_line_and_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    make_journal(path)
    ls = lines(path)
    ls[3] = ls[3][:10] + b"#" + ls[3][11:]
    path.write_bytes(b"".join(ls))
    damaged = path.read_bytes()
    with pytest.raises(JournalDamaged) as err:
        open_journal(str(path))
    msg = str(err.value)
    assert "\n" not in msg and "line 4 is damaged" in msg and "head -n 3" in msg and "backup" in msg
    assert path.read_bytes() == damaged and not list(tmp_path.glob("*.torn-*"))  # refused: nothing touched
    assert not (tmp_path / "optuna.journal.lock").exists()  # and the lock released


def test_a_failed_append_takes_itself_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "optuna.journal"
    make_journal(path, trials=1)
    sound = path.read_bytes()
    storage = optuna.storages.JournalStorage(SafeJournalBackend(str(path)))
    real_write = os.write

    def full_disk(fd: int, data) -> int:  # noqa: ANN001
        if len(data) > 8:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as err:
        optuna.create_study(study_name="big", storage=storage)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert path.read_bytes() == sound  # the half-written line was taken back
    monkeypatch.setattr(os, "write", real_write)
    assert not (tmp_path / "optuna.journal.lock").exists()


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_a_lock_left_by_a_killed_process_is_broken_at_once(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    make_journal(path, trials=1)
    lock = tmp_path / "optuna.journal.lock"
    os.symlink(f"{LOCK_PREFIX}{HOST}|{BOOT_ID}|{_dead_pid()}|1", lock)
    started = time.monotonic()
    notes: list[str] = []
    storage = open_journal(str(path), notes)
    optuna.create_study(study_name="after", storage=storage)
    assert time.monotonic() - started < 5  # not Optuna's 30 s grace period
    assert not lock.exists() and not lock.is_symlink()
    assert any("removed the lock a killed process left" in n for n in notes), notes


def test_a_live_lock_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    make_journal(path, trials=1)
    lock = tmp_path / "optuna.journal.lock"
    from bench.sweep.journal import owner_id

    os.symlink(LOCK_PREFIX + owner_id(), lock)  # this very process holds it
    backend = SafeJournalBackend(str(path))
    backend.lock.grace_period = 0.5  # a lock of a live owner is only broken after the grace period without change
    started = time.monotonic()
    backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "late", "directions": [1]}])
    assert time.monotonic() - started >= 0.5


def test_temporary_files_of_killed_processes_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    preds = tmp_path / "predictions"
    preds.mkdir()
    dead, live = _dead_pid(), os.getpid()
    old = time.time() - 3600
    leftovers = [preds / f".abc.{dead}.csv", preds / f".abc.csv.gz.{dead}.tmp", tmp_path / f".runs.csv.{dead}.tmp"]
    kept = [preds / f".def.{live}.csv", preds / f".fresh.{dead}.csv", preds / "abc.csv.gz"]
    for p in leftovers + kept:
        p.write_bytes(b"")
    for p in leftovers + kept[:1] + kept[2:]:
        os.utime(p, (old, old))
    removed = clean_leftovers([tmp_path, preds, tmp_path / "records"], older_than=180)
    assert sorted(removed) == sorted(leftovers)
    assert all(p.exists() for p in kept)


def test_temporary_files_of_a_dead_writer_here_go_at_once_and_another_machines_after_the_grace_period(tmp_path: Path) -> None:
    """bench/files.py's names carry the machine: a writer known dead here leaves nothing for the next start
    to wait for, however fresh its file; one of another machine (sharing the folder) is kept until stale."""
    from bench.files import TAG

    dead, live = _dead_pid(), os.getpid()
    fresh_dead = tmp_path / f".abc.csv.{TAG}.{dead}.{'a' * 16}.tmp"
    mine = tmp_path / f".abc.csv.{TAG}.{live}.{'b' * 16}.tmp"
    far = tmp_path / f".abc.csv.elsewhere-1234.{dead}.{'c' * 16}.tmp"
    far_old = tmp_path / f".def.csv.elsewhere-1234.{dead}.{'d' * 16}.tmp"
    for p in (fresh_dead, mine, far, far_old):
        p.write_bytes(b"")
    old = time.time() - 3600
    os.utime(far_old, (old, old))
    assert sorted(clean_leftovers([tmp_path], older_than=180)) == sorted([fresh_dead, far_old])
    assert mine.exists() and far.exists()


def test_the_runs_lock_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    lock = tmp_path / ".runs.csv.lock"
    os.symlink(target, lock)
    with open_nofollow(lock) as f:
        f.write("")
    assert not lock.is_symlink() and lock.is_file()
    assert target.read_text() == "precious\n"


# ---------------------------------------------------------------- through the sweep

ONE = """
backbones = ["tiny"]
methods = ["finetune"]
fractions = [0.1]
seeds = 2
trials = 2
steps = 3
[search]
mode = "shared"
startup_trials = 1
"""


def _sweep_args(tmp_path: Path, synthetic_dir: Path, results: Path) -> list[str]:
    cfg = tmp_path / "one.toml"
    cfg.write_text(ONE)
    return ["sweep", "--config", str(cfg), "--data-dir", str(synthetic_dir), "--results-dir", str(results), "--quiet"]


def test_a_sweep_resumes_over_a_torn_journal_tail_to_the_same_rows(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    whole, torn = tmp_path / "whole", tmp_path / "torn"
    runner = CliRunner()
    first = runner.invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, whole) + ["--no-report"])
    assert first.exit_code == 0, first.output
    # The same sweep, stopped by a crash in the middle of a journal write: keep the first 60% of
    # the journal's lines and half of the next one.
    # (In a subprocess: claims carry their process, and this one stays alive.)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "cli.py")]
    part = subprocess.run(
        cmd + _sweep_args(tmp_path, synthetic_dir, torn) + ["--no-report", "--threads", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert part.returncode == 0, part.stdout + part.stderr
    journal = torn / "one" / "optuna.journal"
    ls = lines(journal)
    keep = int(len(ls) * 0.6)
    journal.write_bytes(b"".join(ls[:keep]) + ls[keep][: len(ls[keep]) // 2])
    (torn / "one" / "runs.csv").unlink()
    again = runner.invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, torn) + ["--no-report"])
    assert again.exit_code == 0, again.output
    warning = [ln for ln in again.output.splitlines() if "cut a torn tail" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning:")
    import csv

    def rows(p: Path) -> list[tuple]:
        with open(p / "one" / "runs.csv", newline="") as f:
            return sorted((r["seed"], r["run_id"], r["test_accuracy"]) for r in csv.DictReader(f))

    assert rows(torn) == rows(whole)


def test_a_damaged_journal_is_one_line_and_exit_2(tmp_path: Path, synthetic_dir: Path) -> None:
    import cli

    results = tmp_path / "r"
    journal = results / "one" / "optuna.journal"
    make_journal_dir = journal.parent
    make_journal_dir.mkdir(parents=True)
    make_journal(journal)
    ls = lines(journal)
    ls[2] = b"}" + ls[2][1:]
    journal.write_bytes(b"".join(ls))
    result = CliRunner().invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, results))
    assert result.exit_code == 2, result.output
    out = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(out) == 1 and out[0].startswith("error: journal") and "line 3 is damaged" in out[0], result.output


def _one_line(result) -> str:  # noqa: ANN001
    out = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(out) == 1 and out[0].startswith("error:"), result.output
    return out[0]


def test_a_journal_that_is_a_link_is_refused_and_its_target_never_touched(tmp_path: Path, synthetic_dir: Path) -> None:
    """Audit item 2: a link at optuna.journal was followed and its target "repaired" into a journal."""
    import cli

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    results = tmp_path / "r"
    (results / "one").mkdir(parents=True)
    os.symlink(victim, results / "one" / "optuna.journal")
    line = _one_line(CliRunner().invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, results)))
    assert "is a symbolic link" in line and str(victim) in line
    assert victim.read_text() == "precious\n" and not list(tmp_path.glob("victim.txt.torn-*"))
    assert sorted(p.name for p in (results / "one").iterdir()) == ["optuna.journal"]  # nothing written beside it


@pytest.mark.parametrize(
    "content",
    [b"hello world\n", b'backbones = ["tiny"]\nmethods = ["finetune"]\n', bytes(range(256)), b'{"a": 1}\n'],
    ids=["text", "toml", "binary", "json-not-an-entry"],
)
def test_a_storage_file_that_is_not_a_journal_is_refused_not_repaired(
    tmp_path: Path, synthetic_dir: Path, content: bytes
) -> None:
    """Audit item 3: --storage naming a text or TOML file had its whole content moved aside, exit 0."""
    import cli

    other = tmp_path / "notes.txt"
    other.write_bytes(content)
    results = tmp_path / "r"
    result = CliRunner().invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, results) + ["--storage", str(other)])
    line = _one_line(result)
    assert f"{other} is not an Optuna journal" in line and "--storage" in line
    assert other.read_bytes() == content and not list(tmp_path.glob("notes.txt.*")) and not results.exists()


def test_a_journal_whose_first_line_was_deleted_is_refused_not_called_protocol_v1(tmp_path: Path, synthetic_dir: Path) -> None:
    """Audit item 6: without its first study's creation every later study id shifts by one, and the
    sweep called the journal "protocol v1"; the reader (report, perf) names it too."""
    import cli
    from bench.sweep.storage import open_storage

    results = tmp_path / "r"
    first = CliRunner().invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, results) + ["--no-report"])
    assert first.exit_code == 0, first.output
    journal = results / "one" / "optuna.journal"
    journal.write_bytes(b"".join(lines(journal)[1:]))
    cut = journal.read_bytes()
    line = _one_line(CliRunner().invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, results)))
    assert "does not start with a study's creation" in line and "protocol v1" not in line
    assert journal.read_bytes() == cut
    with pytest.raises(JournalDamaged, match="line 1 is not a study's creation"):
        open_storage(journal, read_only=True)


@pytest.mark.parametrize("entry", [b"{}", b"[1,2,3]", b'{"op_code": "x"}'])
def test_a_line_of_json_that_is_not_a_journal_entry_is_one_line(tmp_path: Path, synthetic_dir: Path, entry: bytes) -> None:
    """Audit item 5: valid JSON that is not an operation was a KeyError or TypeError traceback from Optuna's
    replay. In the middle: refused with the line (writer and reader alike); at the end: cut and kept aside."""
    import cli
    from bench.sweep.storage import open_storage

    results = tmp_path / "r"
    journal = results / "one" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    make_journal(journal)
    ls = lines(journal)
    journal.write_bytes(b"".join([*ls[:2], entry + b"\n", *ls[2:]]))
    line = _one_line(CliRunner().invoke(cli.app, _sweep_args(tmp_path, synthetic_dir, results)))
    assert "line 3 is damaged (not a complete journal entry)" in line
    with pytest.raises(JournalDamaged, match="line 3 is not a journal entry"):
        open_storage(journal, read_only=True)
    journal.write_bytes(b"".join([*ls, entry + b"\n"]))
    notes: list[str] = []
    open_journal(str(journal), notes)
    assert journal.read_bytes() == b"".join(ls) and len(notes) == 1 and "kept in" in notes[0]


def test_a_read_only_folder_names_the_journals_lock_path_not_its_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Audit item 6: the symlink lock's EROFS carried the link's text ("sft-bench-lock:host|...") as the
    file name, so the sweep's one line named that instead of a path."""
    from bench.sweep import journal as J
    from bench.sweep.runner import runtime_failure

    path = tmp_path / "optuna.journal"
    make_journal(path, trials=1)
    backend = SafeJournalBackend(str(path))

    def read_only(src: str, dst: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system", src, dst)

    monkeypatch.setattr(J.os, "symlink", read_only)
    with pytest.raises(OSError) as err:
        backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "x", "directions": [1]}])
    message = runtime_failure(err.value)
    assert message is not None and f"cannot write {path}.lock: Read-only file system" in message
    assert LOCK_PREFIX not in message


def test_the_password_comes_back_at_run_time_and_is_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A masked URL (config.toml) and a URL without a password (scripts/slurm_sweep.sh) take the password
    from $SFT_BENCH_DB_PASSWORD; a given password is kept; masked() never shows it."""
    from bench.registry import UserError
    from bench.sweep.storage import masked, with_password

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("SFT_BENCH_DB_PASSWORD", "s3cret")
    assert with_password("postgresql://sft:***@db/x") == "postgresql://sft:s3cret@db/x"
    assert with_password("postgresql://sft@db/x") == "postgresql://sft:s3cret@db/x"
    assert with_password("postgresql://sft:given@db/x") == "postgresql://sft:given@db/x"
    assert "s3cret" not in masked(with_password("postgresql://sft@db/x"))
    monkeypatch.delenv("SFT_BENCH_DB_PASSWORD")
    assert with_password("postgresql://sft@db/x") == "postgresql://sft@db/x"  # left to the driver
    with pytest.raises(UserError, match="the password is not stored"):
        with_password("postgresql://sft:***@db/x")
