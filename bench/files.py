"""Files written whole or not at all, through temporary files nobody can plant in advance.

Why one module: every file the suite writes (config.toml, runs.csv, records, predictions,
checkpoints, report files, feature-store entries) is written to a temporary file beside it and
renamed over it, so a reader never sees half a file. The temporary file used to have a
predictable name (`.NAME.PID.tmp`) and was opened by following whatever was there: a symbolic
link planted at that name made the suite overwrite a file outside the results folder. Here a
temporary file is created exclusively (O_CREAT | O_EXCL | O_NOFOLLOW: an existing name, a link
included, is never opened) under a name with a random part, and a failed write names the file
being written, not its temporary twin.

The name also says who wrote it, `.NAME.TAG.PID.RANDOM.tmp` (TAG: this machine and its boot),
so the files a killed process left are recognised and removed at the next start at once when
their writer is known dead on this machine (`stale_temp`), and after a grace period otherwise
(a writer on another machine sharing the folder).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from bench.processes import pid_alive_here

TMP_SUFFIX = ".tmp"
_ATTEMPTS = 16  # names tried before giving up: each is 64 random bits, so a clash means someone plants them


def _boot_id() -> str:
    """This boot of this machine (Linux), so a pid recorded before a reboot is not taken for a live one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def owner_tag() -> str:
    """This machine and boot as a temporary file name carries them (no dots: dots separate the fields)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
    boot = _boot_id().replace("-", "")[:8]
    return f"{host}-{boot}" if boot else host


TAG = owner_tag()
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{16})\.tmp$")


def _token() -> str:
    """The random part of a temporary name (a function of its own so a test can make it predictable)."""
    return secrets.token_hex(8)


def temp_path(target: str | Path) -> Path:
    """A fresh temporary name beside `target`: `.NAME.TAG.PID.RANDOM.tmp` (not created)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{TAG}.{os.getpid()}.{_token()}{TMP_SUFFIX}")


def create_temp(target: str | Path) -> tuple[int, Path]:
    """Create a temporary file beside `target` exclusively and return (open descriptor, its path).

    O_EXCL refuses any existing name, a symbolic link included, so a link planted there is never
    followed; another random name is tried then."""
    for _ in range(_ATTEMPTS):
        tmp = temp_path(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # a full disk, a read-only folder: the file being written is what failed
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        return fd, tmp
    raise FileExistsError(errno.EEXIST, f"{_ATTEMPTS} temporary names beside it were taken", str(target))


def _named(exc: OSError, path: Path, tmp: Path) -> OSError:
    """The error of a write as the user should read it: naming the file being written, not its temporary twin."""
    if exc.filename in (None, str(tmp)):
        return OSError(exc.errno, exc.strerror, str(path))
    return exc


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "wb", *, fsync: bool = False) -> None:
    """Call `write(f)` on a fresh temporary file beside `path`, then rename it over `path`.

    A reader sees the old file or the whole new one, never a part; a failure (a full disk) leaves
    `path` as it was and no temporary file, and raises an OSError that names `path`. `mode` "w" is
    UTF-8 text with newlines as written; `fsync` makes the bytes durable before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: Path | None = None
    try:
        fd, tmp = create_temp(path)
        text = {} if "b" in mode else {"newline": "", "encoding": "utf-8"}
        with os.fdopen(fd, mode, **text) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path, tmp or path) from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, chunks: bytes | Iterable[bytes | memoryview], *, fsync: bool = False) -> None:
    """`atomic_write` for bytes: one bytes object, or chunks written in order."""
    parts = [chunks] if isinstance(chunks, bytes | bytearray | memoryview) else chunks

    def write(f: IO[Any]) -> None:
        for part in parts:
            f.write(part)

    atomic_write(path, write, "wb", fsync=fsync)


def write_new(path: str | Path, data: bytes) -> None:
    """Write `data` to `path`, which must not exist yet (a link there included): for files beside
    another, under a name of our own (a journal's torn tail kept aside)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- leftovers of killed writers


def temp_owner(name: str) -> tuple[str, int] | None:
    """(machine tag, pid) of a temporary name made by `temp_path`, or None for any other name."""
    m = _TEMP.match(name)
    return (m["tag"], int(m["pid"])) if m else None


def stale_temp(path: Path, older_than: float, now: float | None = None) -> bool:
    """Whether `path`, a temporary file of `temp_path`'s form, was left by a writer that will not finish it:
    one of this machine that is gone (at once, however recent the file), or any writer after `older_than`
    seconds without a change (one on another machine sharing the folder finishes within seconds)."""
    owner = temp_owner(path.name)
    if owner is None:
        return False
    tag, pid = owner
    if tag == TAG:
        if pid == os.getpid() or pid_alive_here(pid):
            return False
        return True
    try:
        return (now or time.time()) - path.lstat().st_mtime >= older_than
    except OSError:
        return False
