"""Opening the sweep's storage (one `open_storage` for the sweep, the report and perf), and URLs
that never show a password.

Why a module of its own: the sweep keeps all its state in one Optuna storage, and people
leave sweeps running for days, so that storage meets full disks, power cuts, SIGKILLs and
crowds of workers starting at once. Optuna's defaults do not survive all of these:

- The journal file: a torn tail, a stale lock (bench/sweep/journal.py). `open_storage`
  repairs the file before a writer uses it; a reader (report, perf) opens it as it is.
- RDBStorage creating its schema from several processes at once races (UniqueViolation):
  `open_rdb` retries, and serialises the creation with a PostgreSQL advisory lock.
- A URL's password must never be written (config.toml, report.html) or printed: `masked`
  hides it, and `with_password` fills it back in at run time from $PGPASSWORD or ~/.pgpass.
- A writer's storage defers Ctrl-C and SIGTERM around every call (bench/sweep/signals.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from bench.registry import UserError, check_writable
from bench.sweep.journal import SafeJournalBackend, check_journal_file, open_journal
from bench.sweep.signals import signal_safe

if TYPE_CHECKING:
    from bench.sweep.experiment import Experiment

JOURNAL = "optuna.journal"

# ---------------------------------------------------------------- database URLs


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for anything written or printed."""
    if "://" not in url:
        return url
    try:
        import sqlalchemy

        u = sqlalchemy.engine.make_url(url)
    except Exception:
        return url
    return u.render_as_string(hide_password=True) if u.password else url


def pgpass_password(host: str | None, port: int | None, database: str | None, user: str | None) -> str | None:
    """The password ~/.pgpass (or $PGPASSFILE) gives for this connection, as libpq reads it."""
    path = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    want = [host or "localhost", str(port or 5432), database or "", user or ""]
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields, cur, esc = [], "", False
        for ch in line:
            if esc:
                cur, esc = cur + ch, False
            elif ch == "\\":
                esc = True
            elif ch == ":" and len(fields) < 4:
                fields.append(cur)
                cur = ""
            else:
                cur += ch
        fields.append(cur)
        if len(fields) == 5 and all(f == "*" or f == w for f, w in zip(fields[:4], want, strict=True)):
            return fields[4]
    return None


def with_password(url: str) -> str:
    """A URL stored masked (***) gets its password back at run time: $SFT_BENCH_DB_PASSWORD, $PGPASSWORD,
    or ~/.pgpass. A URL without a password takes $SFT_BENCH_DB_PASSWORD when set (what
    scripts/slurm_sweep.sh documents); otherwise it is left to the driver, which reads $PGPASSWORD
    and ~/.pgpass itself."""
    if "://" not in url:
        return url
    import sqlalchemy

    u = sqlalchemy.engine.make_url(url)
    if u.password is None and os.environ.get("SFT_BENCH_DB_PASSWORD") and not u.drivername.startswith("sqlite"):
        return u.set(password=os.environ["SFT_BENCH_DB_PASSWORD"]).render_as_string(hide_password=False)
    if u.password not in ("***", "%2A%2A%2A"):
        return url
    pw = os.environ.get("SFT_BENCH_DB_PASSWORD") or os.environ.get("PGPASSWORD")
    if pw is None:
        pw = pgpass_password(u.host, u.port, u.database, u.username)
    if pw is None:
        raise UserError(
            f"storage {masked(url)}: the password is not stored; give the full URL with --storage, "
            "or set PGPASSWORD, or add it to ~/.pgpass"
        )
    return u.set(password=pw).render_as_string(hide_password=False)


def strip_password(url: str) -> str:
    """What config.toml stores: the URL with the password masked (*** is filled in at run time)."""
    return masked(url)


# ---------------------------------------------------------------- several workers on one database


def open_rdb(url: str, engine_kwargs: dict[str, Any], attempts: int = 8, sleep: Callable[[float], None] = time.sleep) -> Any:
    """RDBStorage, created safely by any number of processes at once.

    Optuna creates the schema (and its version row) when it finds no tables; processes that
    start together on an empty database each try, and all but one fail (UniqueViolation,
    "relation already exists"). On PostgreSQL the creation is serialised with an advisory
    lock; elsewhere (and for any other transient error) it is retried a few times."""
    import optuna
    import sqlalchemy

    u = sqlalchemy.engine.make_url(url)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            if u.get_backend_name() == "postgresql":
                engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
                try:
                    with engine.connect() as conn:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(5157420190)"))
                        try:
                            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
                        finally:
                            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(5157420190)"))
                            conn.commit()
                finally:
                    engine.dispose()
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            last = exc
        except Exception as exc:  # optuna wraps some of these
            if "already exists" not in str(exc) and "UniqueViolation" not in str(exc):
                raise
            last = exc
        sleep(0.2 * (attempt + 1))
    assert last is not None
    raise last


# ---------------------------------------------------------------- opening the storage


def storage_location(exp: Experiment) -> str:
    """What `--storage` means: "" = the journal file in the results folder, a URL = RDB, else a journal path."""
    if not exp.storage:
        return str(exp.out_dir / JOURNAL)
    return exp.storage


def is_url(location: str) -> bool:
    return "://" in location


def open_storage(
    where: str | Path | Experiment, notes: list[str] | None = None, *, read_only: bool = False
) -> optuna.storages.BaseStorage:
    """The one way the suite opens a storage: `where` is a journal path, an SQLAlchemy URL, or an
    experiment (its --storage; default R/E/optuna.journal).

    For a writer (the sweep), a journal file is checked first (bench/sweep/journal.py): a torn tail
    left by a crash or a full disk is cut (kept aside; one line in `notes`), a damaged middle line
    refused; a database is opened so that any number of workers may create its schema at once; and
    every call defers Ctrl-C and SIGTERM (bench/sweep/signals.py).

    `read_only` (the report, perf): nothing is written, not even a repair (Optuna's reader skips a
    torn last line by itself), and a database's schema is never created."""
    location = where if isinstance(where, str) else str(where) if isinstance(where, Path) else storage_location(where)
    if read_only:
        if is_url(location):
            return optuna.storages.RDBStorage(with_password(location), skip_table_creation=True)
        if not Path(location).is_file():  # Optuna's backend would create it
            raise FileNotFoundError(f"no journal file at {location}")
        return optuna.storages.JournalStorage(SafeJournalBackend(location))
    if not is_url(location):
        storage: optuna.storages.BaseStorage = open_journal(location, notes)
    else:
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if location.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 60}
        storage = open_rdb(with_password(location), kwargs)
    return signal_safe(storage)


def storage_exists(exp: Experiment) -> bool:
    """Whether the experiment's storage holds anything yet (checked without creating it)."""
    location = storage_location(exp)
    if not is_url(location):
        return Path(location).is_file()
    import sqlalchemy

    if location.startswith("sqlite"):
        db = sqlalchemy.engine.make_url(location).database
        if not db or not Path(db).is_file():
            return False
    engine = sqlalchemy.create_engine(with_password(location))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def check_storage(exp: Experiment) -> str | None:
    """Validate the storage without writing to it; return a warning line or None.

    Why before anything runs: a storage folder that is not writable, a URL with a typo or a
    missing driver would otherwise fail after the first training finished."""
    location = storage_location(exp)
    if not is_url(location):
        path = Path(location)
        if path.exists() and not path.is_file():
            raise UserError(f"storage {path} exists and is not a file")
        check_journal_file(path)  # a link, or a file that is not a journal, is refused before anything is written
        check_writable(path.parent, what="results ")
        return None
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(location)
    except Exception:
        raise UserError(f"--storage '{masked(location)}' is not an SQLAlchemy URL (e.g. postgresql://user@host/db)") from None
    if url.get_backend_name() == "sqlite":
        return _check_sqlite(url)
    _check_connect(sqlalchemy.engine.make_url(with_password(location)), url.render_as_string(hide_password=True))
    return None


def _check_sqlite(url: Any) -> str:
    """An SQLite file's folder must exist and be writable; the warning says why SQLite is a poor choice."""
    if url.database and url.database != ":memory:":
        folder = Path(url.database).expanduser().resolve().parent
        if not folder.is_dir():
            shown = url.render_as_string(hide_password=True)
            raise UserError(f"storage {shown}: folder {folder} does not exist; create it or give another path")
        check_writable(folder, what="results ")
    return (
        'SQLite storage is unsafe with several writers ("database is locked"); for processes on one machine '
        "use the default journal file, for several machines PostgreSQL"
    )


def _check_connect(url: Any, shown: str) -> None:
    """Connect once (a missing driver, a wrong host or password are one line each, password hidden)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, pool_pre_ping=True)
    except ImportError as exc:
        raise UserError(driver_missing(url.drivername, exc.name or "")) from None
    except Exception as exc:
        raise UserError(f"--storage '{shown}': {str(exc).splitlines()[0]}") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot connect to storage {shown}: {why}") from None
    finally:
        engine.dispose()


def driver_missing(drivername: str, module: str) -> str:
    """The one line for a missing database driver, naming the package that provides it."""
    if module.startswith("psycopg2"):
        return (
            f"the driver for {drivername} URLs is not installed (module {module}): pip install psycopg2-binary, "
            "or write the URL as postgresql://... (psycopg 3: pip install 'sft-bench[postgres]')"
        )
    if module.startswith("psycopg"):
        return (
            f"the driver for {drivername} URLs is not installed (module {module}): pip install 'sft-bench[postgres]' "
            "(or pip install 'psycopg[binary]')"
        )
    return f"the driver for {drivername} URLs is not installed (module {module}); install it with pip"
