#!/usr/bin/env python
"""The fault matrix (issue 9): faults injected into a real `cli.py sweep`, each followed by a resume
with the same command and a row-by-row comparison of runs.csv with an uninterrupted run.

    python scripts/fault_matrix.py --out DIR [--kills 10] [--seed 0] [--pg-url URL]

The grid is tests/test_sweep.py's SMALL one (tiny backbone, synthetic data from
bench.data.synthetic_cifar, 2 methods, 3 search trials, 2 seeds, 3 steps a run: 10 trainings).
Faults: random SIGKILLs in a row (each followed by a restart until the grid completes; no temporary
file of a killed writer may outlive the completed grid), SIGTERM, three workers at once each killed
then resumed (the rows must equal one worker's: issue 19), a full disk (a 64 KB tmpfs), a read-only
folder (a read-only bind mount), a torn journal (its last line cut mid-way between runs), a symbolic
link planted at optuna.journal (refused, its target untouched) and a killed PostgreSQL connection
(pg_terminate_backend, once between queries and once mid-query). Faults at a known point use the sweep's test hook
SFT_BENCH_TEST_FAULT=kind:N:SIGNAL (here STOP, to act on a paused sweep, then CONT).

Writes DIR/fault_matrix.md and DIR/fault_matrix.json and prints the table; exits 1 if any row was
lost or differs. Mounts need root (skipped otherwise); PostgreSQL needs a server: --pg-url,
$SFT_BENCH_TEST_PG_URL, or a throwaway one from scripts/pg_throwaway.sh (skipped without binaries).
Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import collections
import csv
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG_SCRIPT = REPO / "scripts" / "pg_throwaway.sh"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
KEYS = ("method", "fraction", "seed", "run_id", "test_accuracy")
GRID = """\
backbones = ["tiny"]
methods = ["finetune", "linear_probe"]
fractions = [0.1]
seeds = 2
trials = 3
steps = 3
[search]
mode = "shared"
startup_trials = 1
"""


class Skip(Exception):
    """A fault this machine cannot inject (no root, no PostgreSQL): the reason."""


class Ctx:
    def __init__(self, out: Path, data: Path, config: Path, rng: random.Random) -> None:
        self.out, self.data, self.config, self.rng = out, data, config, rng
        self.ref: list[tuple] = []
        self.ref_wall = 0.0

    def cmd(self, results: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "cli.py"), "sweep", "--config", str(self.config), "--data-dir", str(self.data),
                "--results-dir", str(results), "--quiet", "--no-report", "--threads", "1", *extra]  # fmt: skip

    def start(self, results: Path, *extra: str, fault: str | None = None) -> subprocess.Popen:
        env = {**ENV, "SFT_BENCH_TEST_FAULT": fault} if fault else ENV
        results.mkdir(parents=True, exist_ok=True)
        log = open(results / "sweep.log", "a")  # noqa: SIM115 (the child holds it)
        err = open(results / "sweep.err", "w")  # noqa: SIM115
        return subprocess.Popen(self.cmd(results, *extra), env=env, cwd=REPO, stdout=log, stderr=err, text=True)

    def run(self, results: Path, *extra: str, fault: str | None = None, timeout: float = 600) -> tuple[int, str]:
        p = self.start(results, *extra, fault=fault)
        p.wait(timeout)
        return p.returncode, (results / "sweep.err").read_text()


def rows(results: Path) -> list[tuple]:
    path = results / "t" / "runs.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return sorted(tuple(r[k] for k in KEYS) for r in csv.DictReader(f))


def compare(ref: list[tuple], got: list[tuple]) -> dict:
    """Rows compared (the reference's), identical (same method, fraction, seed, run id, accuracy),
    lost (a reference (method, fraction, seed) with no row), extra (rows beyond the reference's)."""
    same = sum((collections.Counter(ref) & collections.Counter(got)).values())
    have = {r[:3] for r in got}
    lost = sum(1 for r in ref if r[:3] not in have)
    return {"rows_compared": len(ref), "rows_identical": same, "rows_lost": lost, "rows_extra": max(0, len(got) - len(ref))}


def leftovers(results: Path) -> list[str]:
    """Temporary files a completed grid still holds: those of killed writers must be gone by then (issue 19)."""
    out = results / "t"
    folders = [out, out / "predictions", out / "records", out / "cache" / "features", out / "cache" / "probes"]
    return sorted(
        str(p.relative_to(out))
        for d in folders
        if d.is_dir()
        for p in d.iterdir()
        if p.name.startswith(".") and p.suffix in (".tmp", ".csv")
    )


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def short(ctx: Ctx, line: str) -> str:
    """An error line for the table: up to its remedy, the output folder as DIR."""
    return line.split(";")[0].replace(str(ctx.out), "DIR")[:120]


def one_line(rc: int, stderr: str, want: str) -> str:
    """The fault's report: exit 1, exactly one error line containing `want`, no traceback."""
    err = error_lines(stderr)
    if rc != 1 or len(err) != 1 or want not in err[0] or "Traceback" in stderr:
        raise AssertionError(f"expected exit 1 and one 'error: ...{want}...' line, got exit {rc}: {stderr.strip()[-500:]}")
    return err[0]


def finish(ctx: Ctx, results: Path, *extra: str) -> None:
    rc, err = ctx.run(results, *extra)
    if rc != 0:
        raise AssertionError(f"the resume exited {rc}: {err.strip()[-500:]}")


def wait_stopped(p: subprocess.Popen, timeout: float = 300) -> None:
    """Until the sweep has stopped itself (SFT_BENCH_TEST_FAULT=...:STOP), state T in /proc."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            raise AssertionError(f"the sweep exited {p.returncode} before its fault point")
        try:
            if Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError("the sweep never reached its fault point")


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def need_root_mount(probe: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        raise Skip("needs root and mount(8)")
    probe.mkdir(parents=True, exist_ok=True)
    if not mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)):
        raise Skip("mount(8) refused here (no privilege to mount in this container)")
    subprocess.run(["umount", "-l", str(probe)], capture_output=True)


# ---------------------------------------------------------------- the faults


def f_sigkill(ctx: Ctx, kills: int) -> dict:
    """SIGKILL at random moments (uniform between 0.3 s and the reference run's wall time), each
    followed by a restart, until the grid completes; a new folder when it completes before `kills`."""
    done, landed, totals, rounds = 0, 0, collections.Counter(), 0
    while done < kills:
        results = ctx.out / f"sigkill-{rounds}"
        while True:
            journal = results / "t" / "optuna.journal"
            before = journal.stat().st_size if journal.exists() else 0
            p = ctx.start(results)
            try:
                p.wait(ctx.rng.uniform(0.3, ctx.ref_wall))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
            if p.returncode == 0:
                break
            if p.returncode != -signal.SIGKILL:
                err = (results / "sweep.err").read_text().strip()[-500:]
                raise AssertionError(
                    f"after {done} kills ({landed} mid-sweep), a restart in {results} exited {p.returncode}: {err}"
                )
            done += 1
            landed += (journal.stat().st_size if journal.exists() else 0) > before
            if done >= kills:
                rc, err = ctx.run(results)
                if rc != 0:
                    raise AssertionError(f"after {done} kills, the resume in {results} exited {rc}: {err.strip()[-500:]}")
                break
        totals.update(compare(ctx.ref, rows(results)))
        if leftovers(results):
            raise AssertionError(f"temporary files of killed writers outlived the grid in {results}: {leftovers(results)[:3]}")
        rounds += 1
    note = (
        f"{landed} of {done} kills after the sweep had written to its journal; {rounds} grid(s) completed, no temporary file left"
    )
    return {"injections": done, **totals, "note": note}


def f_parallel(ctx: Ctx) -> dict:
    """Three workers at once (--parallel 3), every worker SIGKILLed as it starts its first final run, then
    the same command resumes: the rows must be the one-worker reference's, run ids (which carry the
    hyperparameters TPE chose from slot 1 on) and accuracies bit for bit (issue 19: a study's slot k is
    sampled only from its finished slots < k, whatever the number of workers)."""
    results = ctx.out / "parallel"
    rc, err = ctx.run(results, "--parallel", "3", fault="final:1:KILL")
    if "Traceback" in err:
        raise AssertionError(f"--parallel 3 with killed workers printed a traceback: {err.strip()[-500:]}")
    finish(ctx, results, "--parallel", "3")
    return {"injections": 3, **compare(ctx.ref, rows(results)), "note": f"first run exit {rc}, then resumed with --parallel 3"}


def f_sigterm(ctx: Ctx) -> dict:
    """SIGTERM (a scheduler's stop) at a search trial, then at a final run: exit 143 each time."""
    results, notes = ctx.out / "sigterm", []
    for point in ("trial:2:TERM", "final:2:TERM"):
        rc, err = ctx.run(results, fault=point)
        if rc != 143 or "Traceback" in err:
            raise AssertionError(f"SIGTERM at {point}: exit {rc} (want 143): {err.strip()[-500:]}")
        notes.append(f"{point.rsplit(':', 1)[0]}: exit 143")
    finish(ctx, results)
    return {"injections": 2, **compare(ctx.ref, rows(results)), "note": "; ".join(notes)}


def f_disk_full(ctx: Ctx) -> dict:
    """The journal on a 64 KB tmpfs nearly filled by a padding file: it fills up mid-sweep."""
    disk = ctx.out / "disk"
    need_root_mount(disk)
    assert mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk))
    try:
        (disk / "pad").write_bytes(b"\0" * (64 * 1024 - 12 * 1024))
        storage = str(disk / "t.journal")
        results = ctx.out / "disk-full"
        rc, err = ctx.run(results, "--storage", storage)
        line = one_line(rc, err, "No space left on device")
        if not (disk / "t.journal").read_bytes().endswith(b"\n"):
            raise AssertionError("the full disk left a partial journal line")
        (disk / "pad").unlink()
        assert mount("-o", "remount,size=8m", str(disk))
        finish(ctx, results, "--storage", storage)
        got = rows(results)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return {"injections": 1, **compare(ctx.ref, got), "note": f"exit 1: {short(ctx, line)}"}


def f_read_only(ctx: Ctx) -> dict:
    """The records folder turns read-only (a read-only bind mount) while the sweep is paused at its
    2nd final run, after the first record was written."""
    results = ctx.out / "read-only"
    need_root_mount(ctx.out / "probe")
    p = ctx.start(results, fault="final:2:STOP")
    records = results / "t" / "records"
    try:
        wait_stopped(p)
        records.mkdir(parents=True, exist_ok=True)
        assert mount("--bind", str(records), str(records)) and mount("-o", "remount,ro,bind", str(records))
        p.send_signal(signal.SIGCONT)
        p.wait(300)
        line = one_line(p.returncode, (results / "sweep.err").read_text(), "Read-only file system")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
        subprocess.run(["umount", "-l", str(records)], capture_output=True)
    finish(ctx, results)
    return {"injections": 1, **compare(ctx.ref, rows(results)), "note": f"exit 1: {short(ctx, line)}"}


def f_torn_journal(ctx: Ctx, tears: int = 3) -> dict:
    """Killed at its 2nd trial or final run, then the journal's last line cut mid-way (a crash in
    the middle of an append); the next start must cut it off, keep it aside and say so."""
    results, done, warned = ctx.out / "torn-journal", 0, 0
    journal = results / "t" / "optuna.journal"
    for _ in range(tears):
        rc, err = ctx.run(results, fault="trial:2:KILL,final:2:KILL")
        warned += any(ln.startswith("warning: journal") and "kept in" in ln for ln in err.splitlines())
        if rc == 0:
            break
        if rc != -signal.SIGKILL:
            raise AssertionError(f"exit {rc}: {err.strip()[-500:]}")
        data = journal.read_bytes()
        start = data.rstrip(b"\n").rfind(b"\n") + 1
        with open(journal, "r+b") as f:
            f.truncate(start + (len(data) - start) // 2)
        done += 1
    rc, err = ctx.run(results)
    warned += any(ln.startswith("warning: journal") and "kept in" in ln for ln in err.splitlines())
    if rc != 0:
        raise AssertionError(f"the resume exited {rc}: {err.strip()[-500:]}")
    if warned != done:
        raise AssertionError(f"{done} torn tails, {warned} warnings")
    note = f"each start after a tear: one warning line, the cut bytes kept in {journal.name}.torn-*"
    return {"injections": done, **compare(ctx.ref, rows(results)), "note": note}


def f_linked_journal(ctx: Ctx) -> dict:
    """A symbolic link planted at optuna.journal, pointing outside the results folder: refused in one line
    (exit 2), its target untouched (it used to be "repaired" into a journal); without it, the same command."""
    results, target = ctx.out / "linked-journal", ctx.out / "linked-journal-target.txt"
    target.write_text("not a journal\n")
    (results / "t").mkdir(parents=True)
    os.symlink(target, results / "t" / "optuna.journal")
    rc, err = ctx.run(results)
    err_lines = error_lines(err)
    if rc != 2 or len(err_lines) != 1 or "is a symbolic link" not in err_lines[0] or "Traceback" in err:
        raise AssertionError(f"expected exit 2 and one 'error: ... is a symbolic link' line, got exit {rc}: {err.strip()[-500:]}")
    if target.read_text() != "not a journal\n" or list(ctx.out.glob("linked-journal-target.txt.*")):
        raise AssertionError("the link's target was written to")
    (results / "t" / "optuna.journal").unlink()
    finish(ctx, results)
    return {"injections": 1, **compare(ctx.ref, rows(results)), "note": f"exit 2: {short(ctx, err_lines[0])}; target untouched"}


# ---------------------------------------------------------------- PostgreSQL


def pg_connect(url: str):  # noqa: ANN201
    import psycopg
    import sqlalchemy

    u = sqlalchemy.engine.make_url(url)
    return psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database, autocommit=True)


def create_db(server: str) -> tuple[str, str]:
    """A new, empty database on the server: (its URL with the password, its name)."""
    import sqlalchemy

    name = f"fm_{uuid.uuid4().hex[:12]}"
    with pg_connect(server) as c:
        c.execute(f"CREATE DATABASE {name}")
    return sqlalchemy.engine.make_url(server).set(database=name).render_as_string(hide_password=False), name


def terminate(server: str, dbname: str) -> int:
    """pg_terminate_backend for every connection to `dbname` but ours: how many were terminated."""
    with pg_connect(server) as c:
        got = c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)
        ).fetchall()
    return sum(1 for (ok,) in got if ok)


def terminate_mid_query(url: str, dbname: str, p: subprocess.Popen, timeout: float = 120) -> int:
    """The paused sweep `p` (SFT_BENCH_TEST_FAULT=...:STOP) resumed against an exclusive lock on
    Optuna's trials table; once one of its backends waits on the lock, inside a query, terminate
    its connections: the query fails with the connection gone (no pre-ping can hide that)."""
    with pg_connect(url) as lock:
        lock.autocommit = False
        lock.execute("LOCK TABLE trials IN ACCESS EXCLUSIVE MODE")
        p.send_signal(signal.SIGCONT)
        deadline = time.time() + timeout
        with pg_connect(url) as watch:
            while time.time() < deadline:
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (dbname,)
                ).fetchone()[0]
                if waiting:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the sweep never queried the trials table")
            with pg_connect(url) as killer:
                n = killer.execute(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid NOT IN (pg_backend_pid(), %s, %s)) AS t",
                    (dbname, lock.info.backend_pid, watch.info.backend_pid),
                ).fetchone()[0]
        lock.rollback()
    return n


class Postgres:
    """The server: --pg-url, $SFT_BENCH_TEST_PG_URL, or a throwaway one (stopped on close)."""

    def __init__(self, out: Path, url: str | None) -> None:
        self.folder: Path | None = None
        self.url = url or os.environ.get("SFT_BENCH_TEST_PG_URL")
        self.why = ""
        try:
            import psycopg  # noqa: F401
        except ImportError:
            self.why, self.url = "needs psycopg (pip install 'sft-bench[postgres]')", None
            return
        if self.url:
            return
        if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
            self.why = "no PostgreSQL binaries (apt-get install postgresql) and no --pg-url"
            return
        self.folder = out / "pg"
        started = subprocess.run([str(PG_SCRIPT), "start", str(self.folder)], capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            self.why = f"could not start a throwaway PostgreSQL: {started.stderr.strip()[-200:]}"
            return
        self.url = started.stdout.strip()

    def need(self) -> str:
        if not self.url:
            raise Skip(self.why)
        return self.url

    def close(self) -> None:
        if self.folder and self.url:
            subprocess.run([str(PG_SCRIPT), "stop", str(self.folder)], capture_output=True, timeout=120)


def f_db_idle(ctx: Ctx, pg: Postgres) -> dict:
    """Every connection of the paused sweep terminated between its queries, at a search trial and
    at a final run: the pool's pre-ping replaces them and the sweep goes on (exit 0)."""
    server = pg.need()
    url, name = create_db(server)
    results, n = ctx.out / "db-idle", 0
    p = ctx.start(results, "--storage", url, fault="trial:2:STOP,final:2:STOP")
    try:
        for _ in range(2):
            wait_stopped(p)
            n += terminate(server, name)
            p.send_signal(signal.SIGCONT)
        p.wait(300)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
    if p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {(results / 'sweep.err').read_text()[-500:]}")
    note = f"{n} connections terminated at 2 points; exit 0 without a restart (pool pre-ping reconnects)"
    return {"injections": n, **compare(ctx.ref, rows(results)), "note": note}


def f_db_mid_query(ctx: Ctx, pg: Postgres) -> dict:
    """The sweep's connections terminated while a query of it waits (mid-query): one line, exit 1,
    then the same command resumes."""
    server = pg.need()
    url, name = create_db(server)
    results = ctx.out / "db-mid-query"
    p = ctx.start(results, "--storage", url, fault="trial:2:STOP")
    try:
        wait_stopped(p)
        n = terminate_mid_query(url, name, p)
        p.wait(300)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
    line = one_line(p.returncode, (results / "sweep.err").read_text(), "lost the storage")
    finish(ctx, results, "--storage", url)
    return {
        "injections": 1,
        **compare(ctx.ref, rows(results)),
        "note": f"{n} connection(s) terminated; exit 1: {short(ctx, line)}",
    }


# ---------------------------------------------------------------- the matrix


def table(results: list[dict]) -> str:
    head = "| fault | injections survived | rows compared | rows identical | rows lost | wall s | what happened |"
    lines = [head, "|" + "---|" * 7]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['fault']} | skipped: {r['skipped']} | | | | | |")
        elif "failed" in r:
            lines.append(f"| {r['fault']} | FAILED | | | | {r['wall_seconds']:.0f} | {r['failed'][:200]} |")
        else:
            lines.append(
                f"| {r['fault']} | {r['injections']} | {r['rows_compared']} | {r['rows_identical']} | {r['rows_lost']}"
                f" | {r['wall_seconds']:.0f} | {r['note']} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="a new or empty folder for the runs and the table")
    ap.add_argument("--kills", type=int, default=10, help="random SIGKILLs in a row (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    ap.add_argument("--pg-url", help="a PostgreSQL server to create databases on (default: a throwaway one)")
    ap.add_argument(
        "--only",
        help="comma-separated fault names "
        "(sigkill,sigterm,parallel,disk-full,read-only,torn-journal,linked-journal,db-idle,db-mid-query)",
    )
    a = ap.parse_args()
    if a.kills < 1:
        ap.error("--kills must be positive")
    out = a.out.resolve()
    if out.exists() and any(out.iterdir()):
        ap.error(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from bench.data import synthetic_cifar

    config = out / "t.toml"
    config.write_text(GRID)
    ctx = Ctx(out, synthetic_cifar(out / "data"), config, random.Random(a.seed))
    t0 = time.time()
    finish(ctx, out / "reference")
    ctx.ref_wall, ctx.ref = time.time() - t0, rows(out / "reference")
    print(f"reference: {len(ctx.ref)} rows in {ctx.ref_wall:.1f} s", flush=True)

    pg = Postgres(out, a.pg_url)
    faults: list[tuple[str, Callable[[], dict]]] = [
        (f"SIGKILL at random moments ({a.kills} in a row)", lambda: f_sigkill(ctx, a.kills)),
        ("SIGTERM (exit 143)", lambda: f_sigterm(ctx)),
        ("3 workers at once, each SIGKILLed, resumed (same rows as 1 worker)", lambda: f_parallel(ctx)),
        ("disk full (64 KB tmpfs)", lambda: f_disk_full(ctx)),
        ("read-only folder (ro bind mount)", lambda: f_read_only(ctx)),
        ("torn journal (last line cut mid-way)", lambda: f_torn_journal(ctx)),
        ("symbolic link planted at optuna.journal", lambda: f_linked_journal(ctx)),
        ("PostgreSQL connection killed between queries", lambda: f_db_idle(ctx, pg)),
        ("PostgreSQL connection killed mid-query", lambda: f_db_mid_query(ctx, pg)),
    ]
    names = [
        "sigkill",
        "sigterm",
        "parallel",
        "disk-full",
        "read-only",
        "torn-journal",
        "linked-journal",
        "db-idle",
        "db-mid-query",
    ]
    only = set(a.only.split(",")) if a.only else set(names)
    results = []
    try:
        for short, (fault, fn) in zip(names, faults, strict=True):
            if short not in only:
                continue
            started = time.time()
            try:
                r = {"fault": fault, **fn()}
            except Skip as exc:
                r = {"fault": fault, "skipped": str(exc)}
            except (AssertionError, subprocess.TimeoutExpired) as exc:
                r = {"fault": fault, "failed": str(exc).replace("\n", " ")}
            r["wall_seconds"] = round(time.time() - started, 1)
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
    finally:
        pg.close()
    md = table(results)
    cmd = "python scripts/fault_matrix.py --out DIR" + (f" --kills {a.kills}" if a.kills != 10 else "")
    (out / "fault_matrix.md").write_text(f"{md}\n\nReference: {len(ctx.ref)} rows, {ctx.ref_wall:.1f} s. Command: `{cmd}`\n")
    (out / "fault_matrix.json").write_text(
        json.dumps({"reference_rows": len(ctx.ref), "reference_seconds": round(ctx.ref_wall, 1), "faults": results}, indent=2)
    )
    print(md)
    bad = [
        r
        for r in results
        if "failed" in r or r.get("rows_lost") or r.get("rows_extra") or r.get("rows_identical", 0) != r.get("rows_compared", 0)
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
