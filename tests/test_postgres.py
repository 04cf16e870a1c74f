"""PostgreSQL for real (issue 9): a throwaway server on 127.0.0.1 (scripts/pg_throwaway.sh, or the URL
in $SFT_BENCH_TEST_PG_URL that .ci/run exports), a fresh database per test.

Skipped, with one line, only where no PostgreSQL binaries exist and CI is unset (a laptop);
in CI a missing server fails.
"""

from __future__ import annotations

import csv
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "pg_throwaway.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

# TPE models from the second slot on (startup_trials = 1): what slot k asks depends on slots < k, which a
# worker reads only once they have finished (bench/sweep/slots.py), so every worker count, every storage and a
# Slurm array give the one-worker rows. (Pruning is covered by tests/test_sweep.py; 3 trials are below
# protocol v3's floor of 4 anyway.)
GRID = """
backbones = ["tiny"]
methods = ["finetune", "linear_probe"]
fractions = [0.1]
seeds = 2
trials = 3
steps = 3
[search]
mode = "shared"
startup_trials = 1
pruner = "none"
"""


@pytest.fixture(scope="session")
def pg_server() -> str:
    url = os.environ.get("SFT_BENCH_TEST_PG_URL")
    if url:
        yield url
        return
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        if os.environ.get("CI"):
            pytest.fail("CI: no PostgreSQL binaries and no SFT_BENCH_TEST_PG_URL (.ci/run installs and starts one)")
        pytest.skip("no PostgreSQL binaries here (apt-get install postgresql); the PostgreSQL tests need a server")
    pytest.importorskip("psycopg", reason="pip install 'sft-bench[postgres]'")
    folder = tempfile.mkdtemp(prefix="sftbench-pg-")
    started = subprocess.run([str(SCRIPT), "start", folder], capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"could not start a throwaway PostgreSQL: {started.stderr.strip()[-300:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([str(SCRIPT), "stop", folder], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def create_db(server: str) -> str:
    """A new, empty database on the server: its URL (with the password)."""
    import psycopg
    import sqlalchemy

    name = f"t_{uuid.uuid4().hex[:12]}"
    a = sqlalchemy.engine.make_url(server)
    with psycopg.connect(host=a.host, port=a.port, user=a.username, password=a.password, dbname=a.database, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return a.set(database=name).render_as_string(hide_password=False)


@pytest.fixture()
def empty_db(pg_server: str) -> str:
    return create_db(pg_server)


def cmd(config: Path, synthetic_dir: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "cli.py"),
        "sweep",
        "--config",
        str(config),
        "--data-dir",
        str(synthetic_dir),
        "--results-dir",
        str(results),
        "--quiet",
        "--no-report",
        "--threads",
        "1",
        *extra,
    ]


def rows(results: Path) -> list[tuple]:
    with open(results / "t" / "runs.csv", newline="") as f:
        return sorted((r["method"], r["seed"], r["run_id"], r["test_accuracy"]) for r in csv.DictReader(f))


@pytest.mark.slow
def test_three_workers_at_once_on_an_empty_database_one_killed_give_the_journal_rows(
    tmp_path: Path, synthetic_dir: Path, empty_db: str
) -> None:
    import optuna
    import sqlalchemy
    from optuna.trial import TrialState

    config = tmp_path / "t.toml"
    config.write_text(GRID)
    ref = subprocess.run(cmd(config, synthetic_dir, tmp_path / "ref"), env=ENV, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    password = sqlalchemy.engine.make_url(empty_db).password
    results = tmp_path / "r"
    # Three workers at the same instant on a database without a schema; worker 0 is SIGKILLed when it
    # starts its first item, a trial or a final run (whichever the schedule gives it first).
    envs = [{**ENV, "SFT_BENCH_TEST_FAULT": "trial:1:KILL,final:1:KILL"}, ENV, ENV]
    procs = [
        subprocess.Popen(
            cmd(config, synthetic_dir, results, "--storage", empty_db),
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for e in envs
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [-9, 0, 0], outs
    assert not any("Traceback" in o for o in outs), outs
    # The killed worker, restarted: nothing left to do, or the rest.
    again = subprocess.run(
        cmd(config, synthetic_dir, results, "--storage", empty_db), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(results) == rows(tmp_path / "ref")  # the same searches, hyperparameters and results

    storage = optuna.storages.RDBStorage(empty_db)
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(s._study_id)
        assert not any(t.state == TrialState.RUNNING for t in trials)
        done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        if s.user_attrs["kind"] == "search":
            assert len(done) == 3, s.study_name  # the budget, never exceeded
        else:
            ids = [t.user_attrs["run_id"] for t in done]
            assert len(ids) == len(set(ids)) == 2, s.study_name  # each final run trained once
    reasons = [
        t.user_attrs.get("fail_reason", "") for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id)
    ]
    assert any(r.startswith("stale: worker") for r in reasons)  # the killed claim was freed
    # The password is never written or printed.
    written = (results / "t" / "config.toml").read_text()
    assert password not in written and ":***@" in written
    assert not any(password in o for o in outs + [again.stdout, again.stderr])


@pytest.mark.slow
def test_parallel_workers_read_the_password_the_parent_was_given(tmp_path: Path, synthetic_dir: Path, empty_db: str) -> None:
    """--parallel workers read config.toml, which has no password: the parent hands it over privately."""
    config = tmp_path / "t.toml"
    config.write_text(GRID.replace('"finetune", ', "").replace("trials = 3", "trials = 2"))
    run = subprocess.run(
        cmd(config, synthetic_dir, tmp_path / "r", "--storage", empty_db, "--parallel", "2"),
        env={k: v for k, v in ENV.items() if k not in ("PGPASSWORD", "SFT_BENCH_DB_PASSWORD")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(rows(tmp_path / "r")) == 2
    # From config.toml alone (password masked) a later run takes the password from PGPASSWORD or ~/.pgpass ...
    import sqlalchemy

    url = sqlalchemy.engine.make_url(empty_db)
    stored = tmp_path / "r" / "t" / "config.toml"
    env = {**ENV, "PGPASSWORD": str(url.password)}
    rerun = subprocess.run(cmd(stored, synthetic_dir, tmp_path / "r"), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # ... and without either it says so in one line.
    env = {k: v for k, v in ENV.items() if k not in ("PGPASSWORD", "SFT_BENCH_DB_PASSWORD")}
    env["PGPASSFILE"] = str(tmp_path / "nothing")
    bare = subprocess.run(cmd(stored, synthetic_dir, tmp_path / "r"), env=env, capture_output=True, text=True, timeout=300)
    assert bare.returncode == 2 and "the password is not stored" in bare.stderr and "Traceback" not in bare.stderr
    assert str(url.password) not in bare.stderr


@pytest.mark.slow
def test_a_claim_from_another_host_is_freed_after_the_stale_period(tmp_path: Path, synthetic_dir: Path, empty_db: str) -> None:
    """A worker in its own UTS namespace (another hostname) is killed holding a claim: this machine
    cannot tell whether it lives, so the claim is freed once its heartbeat is older than the stale period."""
    import optuna

    if os.geteuid() != 0 or subprocess.run(["unshare", "-u", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare -u (root) to run a worker under another hostname")
    config = tmp_path / "t.toml"
    # finetune alone (protocol v3's linear probe has no search trial to be killed in)
    text = GRID.replace(', "linear_probe"', "").replace("trials = 3", "trials = 1").replace("seeds = 2", "seeds = 1")
    config.write_text(text + "[workers]\nheartbeat_seconds = 1\nstale_after_seconds = 4\n")
    inner = " ".join(f"'{a}'" for a in cmd(config, synthetic_dir, tmp_path / "far", "--storage", empty_db))
    far = subprocess.run(
        ["unshare", "-u", "sh", "-c", f"hostname far-node && exec {inner}"],
        env={**ENV, "SFT_BENCH_TEST_FAULT": "trial:1:KILL"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert far.returncode == -9, far.stdout + far.stderr
    started = time.time()
    here = subprocess.run(
        cmd(config, synthetic_dir, tmp_path / "here", "--storage", empty_db), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert here.returncode == 0, here.stdout + here.stderr
    assert time.time() - started >= 2  # it waited for the claim to go stale
    storage = optuna.storages.RDBStorage(empty_db)
    reasons = [
        t.user_attrs.get("fail_reason", "") for s in storage.get_all_studies() for t in storage.get_all_trials(s._study_id)
    ]
    assert any(r.startswith("stale: worker far-node:") for r in reasons), reasons
    assert len(rows(tmp_path / "here")) == 1


def _create(url: str, barrier, stock: bool, q) -> None:  # noqa: ANN001
    import optuna

    from bench.sweep.storage import open_rdb

    barrier.wait()
    try:
        optuna.storages.RDBStorage(url) if stock else open_rdb(url, {})
        q.put("ok")
    except Exception as exc:
        q.put(type(exc).__name__)


def test_schema_creation_race_stock_optuna_fails_open_rdb_does_not(pg_server: str) -> None:
    """Four processes create the storage on an empty database at the same instant (a barrier):
    Optuna's RDBStorage alone loses some of them (IntegrityError: UniqueViolation); open_rdb none."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    outcomes = {}
    for stock in (True, False):
        results: list[str] = []
        for _ in range(3):
            url = create_db(pg_server)
            barrier, q = ctx.Barrier(4), ctx.Queue()
            procs = [ctx.Process(target=_create, args=(url, barrier, stock, q)) for _ in range(4)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(60)
            results += [q.get(timeout=10) for _ in procs]
        outcomes[stock] = results
    assert outcomes[False] == ["ok"] * 12, outcomes
    assert any(r != "ok" for r in outcomes[True]), outcomes  # the race is real (fails if Optuna fixes it: then drop open_rdb)
