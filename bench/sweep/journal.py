"""The journal file: a storage that survives its own crashes, and who owns what.

Why a module of its own: the sweep keeps all its state in one Optuna storage, and people
leave sweeps running for days, so that storage meets full disks, power cuts, SIGKILLs and
crowds of workers starting at once. Optuna's JournalFileBackend does not survive all of these:

- It skips a partial last line (a write cut by a full disk or a power cut), then appends
  the next write onto it: one unreadable line in the middle, and every later start fails.
  `SafeJournalBackend` never appends onto a partial line, takes back its own half-written
  append when a write fails, and `repair_journal` (run when the sweep opens the file) cuts
  a torn tail, keeping what it cut beside the journal. A damaged line with readable lines
  after it is refused, naming the line and the remedy.
- Its symlink lock, left behind by a SIGKILLed process, stalls every start 30 s (the grace
  period). `OwnedSymlinkLock` names its owner in the link, so a lock whose owner is dead on
  this machine is broken at once.

Both classes extend Optuna's public ones (`JournalFileBackend`, `JournalFileSymlinkLock`) through their
public methods only, on attributes of their own; every use of Optuna's private API is in claims.py.

The owner identity (host, boot id, pid, process start time) is the one the claims carry too
(bench/sweep/claims.py), and the temporary files a killed process left are recognised by it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from bench.files import stale_temp, temp_owner, write_new
from bench.processes import pid_alive_here
from bench.registry import UserError

# ---------------------------------------------------------------- who owns what


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat")
    # Field 22 (start time in clock ticks); the command name (field 2) may contain spaces.
    return stat.rsplit(")", 1)[-1].split()[19] if stat else ""


BOOT_ID = _read("/proc/sys/kernel/random/boot_id")
HOST = socket.gethostname()


def owner_id() -> str:
    pid = os.getpid()
    return f"{HOST}|{BOOT_ID}|{pid}|{_process_start(pid)}"


def owner_alive(owner: str) -> bool | None:
    """True/False when the owner ran on this machine (since its last boot); None when unknown."""
    try:
        host, boot, pid, start = owner.split("|")
    except ValueError:
        return None
    if host != HOST or boot != BOOT_ID or not boot:
        return None
    if not start:
        return pid_alive_here(int(pid))
    return _process_start(int(pid)) == start


# ---------------------------------------------------------------- the journal file's lock

LOCK_PREFIX = "sft-bench-lock:"


class OwnedSymlinkLock(JournalFileSymlinkLock):
    """Optuna's symlink lock (the same file, so processes of older versions still exclude us),
    with its owner written into the link: a lock left by a process that died on this machine is
    broken at once instead of after the 30 s grace period. A lock of unknown owner (another
    machine, an older version) keeps the grace period, measured on the link itself (lstat)."""

    def __init__(self, filepath: str, grace_period: float = 30.0) -> None:
        # Optuna's __init__ is not called: every method of the lock is ours, on attributes of our own names
        # (Optuna's are private), so only the public lock protocol (acquire, release) is used.
        self.target_file = filepath
        self.lock_file = filepath + ".lock"
        self.grace_period = grace_period
        self.broken: list[str] = []  # owners of stale locks this process broke

    def acquire(self) -> bool:
        me = LOCK_PREFIX + owner_id()
        sleep, seen, since = 0.001, None, time.monotonic()
        while True:
            try:
                os.symlink(me, self.lock_file)
                return True
            except FileExistsError:
                pass
            except OSError as exc:  # a read-only or full file system: name the lock's path, not its text
                raise OSError(exc.errno, exc.strerror, self.lock_file) from None
            try:
                target = os.readlink(self.lock_file)
                mtime = os.lstat(self.lock_file).st_mtime_ns
            except OSError:
                continue  # released meanwhile
            if target.startswith(LOCK_PREFIX) and owner_alive(target[len(LOCK_PREFIX) :]) is False:
                self._break(target)
                continue
            if (target, mtime) != seen:
                seen, since = (target, mtime), time.monotonic()
            elif time.monotonic() - since > self.grace_period:
                self._break(target)
                continue
            time.sleep(sleep)
            sleep = min(sleep * 2, 0.25)

    def _break(self, target: str) -> None:
        """Remove the lock if it still is `target`. Breakers are serialised by flock on the journal,
        and nobody can create the lock while it exists, so the check and the removal cannot race."""
        with open(self.target_file, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if os.readlink(self.lock_file) == target:
                    os.unlink(self.lock_file)
                    self.broken.append(target)
            except OSError:
                pass
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def release(self) -> None:
        aside = f"{self.lock_file}{uuid.uuid4()}.rename"
        try:
            os.rename(self.lock_file, aside)
            os.unlink(aside)
        except OSError:
            raise RuntimeError("Error: did not possess lock") from None


class _Locked:
    def __init__(self, lock: OwnedSymlinkLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


# ---------------------------------------------------------------- the journal file


class JournalDamaged(UserError):
    """A line in the middle of the journal cannot be read (refused: cutting it would drop work)."""


CREATE_STUDY = 0  # Optuna's JournalOperation.CREATE_STUDY: every journal starts with a study's creation
NOT_A_JOURNAL = "give another --storage path (or results folder), or move the file away"


def _entry(obj: Any) -> bool:
    """Whether a decoded line is a journal entry (an operation), not just any JSON (`{}`, `[1,2,3]`)."""
    return isinstance(obj, dict) and isinstance(obj.get("op_code"), int) and not isinstance(obj.get("op_code"), bool)


def _bad(line: bytes) -> bool:
    """A line no journal writer wrote whole: cut short, not JSON, or JSON that is not an entry."""
    if not line.endswith(b"\n"):
        return True
    try:
        return not _entry(json.loads(line))
    except ValueError:
        return True


def check_journal_file(path: str | Path) -> None:
    """Refuse, before anything opens it for writing, a journal path that is a symbolic link (the sweep
    would write, and "repair", whatever it points to) and an existing file that is not a journal (a
    text or TOML file named by mistake would be moved aside and turned into one). An empty file is a
    new journal; a single partial line that starts like a study's creation is a first write cut short
    (repair_journal cuts it)."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(
            f"journal {path} is a symbolic link (to {os.readlink(path)}); the sweep never writes through a link: "
            f"give the file itself with --storage, or remove the link"
        )
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.readline(1 << 20)
    if not head:
        return
    if not head.endswith(b"\n"):
        if head.startswith(b'{"op_code":%d,' % CREATE_STUDY):
            return  # the first write, cut short: repaired like any torn tail
        raise UserError(f"{path} is not an Optuna journal (its first line is not a journal entry); {NOT_A_JOURNAL}")
    try:
        first = json.loads(head)
    except ValueError:
        first = None
    if not _entry(first):
        raise UserError(f"{path} is not an Optuna journal (its first line is not a journal entry); {NOT_A_JOURNAL}")
    if first["op_code"] != CREATE_STUDY:
        raise JournalDamaged(
            f"journal {path} does not start with a study's creation (its first line was deleted or the file was cut "
            "at its start), so every study in it would be misread; restore it from a backup, or use another --name, "
            "--results-dir or --storage"
        )


def _keep_aside(aside: Path, data: bytes) -> Path:
    """Keep the cut bytes in a new file `aside` (or `aside.N`): created exclusively, so a link planted at that
    predictable name is never followed and an earlier cut is never overwritten."""
    for n in range(100):
        candidate = aside if n == 0 else aside.with_name(f"{aside.name}.{n}")
        try:
            write_new(candidate, data)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free name to keep the journal's torn tail", str(aside))


def repair_journal(path: str | Path, lock: OwnedSymlinkLock | None = None) -> str | None:
    """Cut a torn tail (a partial last line, or unreadable last lines) off the journal, keeping the
    cut bytes in PATH.torn-TIME; return one line saying so, or None when the file is sound.

    Run under the journal's lock, so no other process is in the middle of an append: what does
    not end a line now was cut by a crash or a full disk and was never read by anyone (Optuna
    skips it). A damaged line followed by readable ones is refused (JournalDamaged), naming it."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = lock or OwnedSymlinkLock(str(path))
    with _Locked(lock):
        first_bad: tuple[int, int] | None = None  # (line number, byte offset)
        offset = 0
        with open(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                if _bad(line):
                    if first_bad is None:
                        first_bad = (number, offset)
                elif first_bad is not None:
                    bad_line, _ = first_bad
                    raise JournalDamaged(
                        f"journal {path}: line {bad_line} is damaged (not a complete journal entry) and line {number} after it "
                        f"is readable, so it cannot be cut safely; keep a copy, then either restore the journal from a "
                        f"backup or keep lines 1-{bad_line - 1} (head -n {bad_line - 1} {path}.bad > {path}), "
                        "which loses the work recorded after it"
                    )
                offset += len(line)
        if first_bad is None:
            return None
        number, cut_at = first_bad
        size = path.stat().st_size
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = path.with_name(f"{path.name}.torn-{stamp}-{os.getpid()}")
        with open(path, "rb") as f:
            f.seek(cut_at)
            torn = f.read()
        aside = _keep_aside(aside, torn)
        with open(path, "r+b") as f:
            f.truncate(cut_at)
            f.flush()
            os.fsync(f.fileno())
        return (
            f"journal {path}: cut a torn tail from line {number} ({size - cut_at} bytes a crash or a full disk left "
            f"unfinished, or lines that are no journal entry; nobody had read them); kept in {aside}"
        )


class SafeJournalBackend(JournalFileBackend):
    """JournalFileBackend whose appends never land on a partial line and never stay half-written."""

    def __init__(self, file_path: str) -> None:
        self.path = file_path  # our own name for it: Optuna's attribute is private (claims.py holds all such uses)
        self.lock = OwnedSymlinkLock(file_path)
        super().__init__(file_path, lock_obj=self.lock)
        self.notes: list[str] = []

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        """Optuna's reader, with every entry checked: a line of valid JSON that is not an operation
        (`{}`, `[1,2,3]`), or a first entry that is not a study's creation, is one line naming it
        (JournalDamaged) instead of a KeyError or TypeError deep in Optuna's replay."""
        for number, log in enumerate(super().read_logs(log_number_from), start=log_number_from + 1):
            if not _entry(log) or (number == 1 and log["op_code"] != CREATE_STUDY):
                what = "is not a journal entry" if not _entry(log) else "is not a study's creation (the first line was deleted?)"
                raise JournalDamaged(
                    f"journal {self.path}: line {number} {what}; restore the journal from a backup, or remove the line "
                    "if it was added by hand"
                )
            yield log

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with _Locked(self.lock):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    os.close(fd)
                    fd = -1
                    note = self._cut_tail_locked()
                    if note:
                        self.notes.append(note)
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
                    size = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError as exc:
                    # Take back what landed: the next append must start on a fresh line.
                    try:
                        os.ftruncate(fd, size)
                        os.fsync(fd)
                    except OSError:
                        pass
                    raise OSError(exc.errno, exc.strerror, self.path) from None
            finally:
                if fd >= 0:
                    os.close(fd)

    def _cut_tail_locked(self) -> str | None:
        """The file does not end a line (a crash mid-append): cut the partial line, keeping it aside."""
        path = Path(self.path)
        with open(path, "rb") as f:
            data = f.read()
        cut_at = data.rfind(b"\n") + 1
        aside = _keep_aside(path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"), data[cut_at:])
        with open(path, "r+b") as f:
            f.truncate(cut_at)
            os.fsync(f.fileno())
        return f"journal {path}: cut a partial last line ({len(data) - cut_at} bytes); kept in {aside}"


def open_journal(path: str, notes: list[str] | None = None) -> Any:
    """The journal at `path` for a writer: checked (no link, a journal or nothing: check_journal_file),
    its torn tail cut, a lock a killed process left removed; each repair is a line in `notes`."""
    import optuna

    check_journal_file(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    backend = SafeJournalBackend(path)
    note = repair_journal(path, backend.lock)
    if note and notes is not None:
        notes.append(note)
    if backend.lock.broken and notes is not None:
        notes.append(f"journal {path}: removed the lock a killed process left ({backend.lock.broken[0]})")
    return optuna.storages.JournalStorage(backend)


# ---------------------------------------------------------------- leftovers of killed processes

_TMP_PID = re.compile(r"^\..*\.(\d+)\.(?:csv|tmp)$")  # the names of earlier versions: ".NAME.PID.csv", ".NAME.PID.tmp"


def clean_leftovers(folders: list[Path], older_than: float) -> list[Path]:
    """Remove the temporary files (bench/files.py's `.NAME.TAG.PID.RANDOM.tmp`) that killed processes
    left: at once when their process is gone from this machine, however recent the file (a killed
    run's predictions must not outlive the sweep that follows within minutes); after `older_than`
    seconds untouched when they come from another machine sharing the folder (a live writer there
    finishes its file within seconds). Names of earlier versions (".NAME.PID.csv", ".NAME.PID.tmp",
    no machine in them) go when their pid is not alive here and `older_than` has passed."""
    removed = []
    now = time.time()
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if not p.is_file() or p.is_symlink():
                continue
            try:
                if stale_temp(p, older_than, now) or _stale_legacy(p, older_than, now):
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass
    return removed


def _stale_legacy(p: Path, older_than: float, now: float) -> bool:
    """A temporary name of an earlier version whose pid is gone here and that nobody touched for `older_than` s."""
    m = _TMP_PID.match(p.name)
    if not m or temp_owner(p.name) is not None or int(m.group(1)) == os.getpid() or pid_alive_here(int(m.group(1))):
        return False
    return now - p.stat().st_mtime >= older_than


def open_nofollow(path: Path) -> Any:
    """Open a lock file for appending without ever following a symbolic link planted there
    (which would make us create or lock a file elsewhere): a link is removed and replaced."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            return os.fdopen(fd, "a")
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            path.unlink(missing_ok=True)
    raise OSError(errno.ELOOP, "keeps being replaced by a symbolic link", str(path))
