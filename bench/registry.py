"""One registry per plug-in kind (backbones, methods), filled by decorators.

Why: the CLI's choices, the sweep's validation and the tests' parametrisation all
read the same keys, so a new plug-in is one decorated function and nothing else.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Bad input from the user: the CLI prints it as one line and exits with code 2."""


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs, tmpfs, NFS)
PATH_MAX = 4096  # bytes in a whole path (Linux)


def check_path(path: str | Path, option: str) -> None:
    """A path the file system can take at all, refused before anything uses it: a component longer than
    NAME_MAX bytes (a 300-character name) made every later call raise ENAMETOOLONG, a traceback."""
    text = os.fsencode(path)
    if len(text) >= PATH_MAX:
        raise UserError(f"{option}: the path is {len(text)} bytes long; at most {PATH_MAX - 1}")
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UserError(
                f"{option}: the name '{part[:24]}...' is {len(os.fsencode(part))} bytes long; file systems take at most "
                f"{NAME_MAX}; give a shorter one"
            )


def check_writable(folder: str | Path, option: str = "--results-dir", what: str = "") -> None:
    """Fail before any work if `folder` could not be written: its nearest existing ancestor must be a
    folder where a file can be created. Why a real file (created exclusively and removed at once) rather
    than os.access: as root, access() says yes to /proc and /sys, and the command then failed after
    training (`run --record /proc/x.json`) or with exit 1 (`--results-dir /proc/x`). No folder is
    created here, so a refused command leaves nothing behind."""
    from bench.files import create_temp

    folder = Path(folder)
    check_path(folder, option)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    why = ""
    if probe.is_dir():
        try:
            fd, tmp = create_temp(probe / ".sft-bench-write-check")
            os.close(fd)
            os.unlink(tmp)
            return
        except OSError as exc:
            why = f" ({exc.strerror})" if exc.strerror else ""
    raise UserError(f"cannot write {what}to {folder}: {probe} is not a writable folder{why}; choose another {option}")


class RenamedWarning(FutureWarning):
    """An old name was given for something renamed: it still works, and the user is told the new one.

    A FutureWarning, not a DeprecationWarning: Python shows FutureWarning to the users of a
    command by default, and hides DeprecationWarning outside `__main__`."""


def renamed(kind: str, old: str, new: str) -> None:
    """The one-line note for an old name that is mapped to its new one."""
    warnings.warn(f"{kind} '{old}' is now called '{new}'; '{old}' still works and means '{new}'", RenamedWarning, stacklevel=3)


class Registry(Generic[T]):
    """Plug-ins of one kind by name; old names of renamed entries (`alias`) still resolve."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def alias(self, old: str, new: str) -> None:
        """`old` is read as `new` (a renamed entry); it is not listed among the names."""
        if new not in self._items or old in self._items:
            raise KeyError(f"{self.kind} alias '{old}' -> '{new}': '{new}' must exist and '{old}' must not")
        self._aliases[old] = new

    def canonical(self, name: str) -> str:
        """The current name of `name`: an old name becomes the new one, with a RenamedWarning."""
        new = self._aliases.get(name)
        if new is None:
            return name
        renamed(self.kind, name, new)
        return new

    def get(self, name: str) -> T:
        name = self._aliases.get(name, name)
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
