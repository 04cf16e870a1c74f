"""One registry per plug-in kind (backbones, methods), filled by decorators.

Why: the CLI's choices, the sweep's validation and the tests' parametrisation all
read the same keys, so a new plug-in is one decorated function and nothing else.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Bad input from the user: the CLI prints it as one line and exits with code 2."""


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_writable(folder: str | Path, option: str = "--results-dir", what: str = "") -> None:
    """Fail before any work if `folder` could not be written: its nearest existing ancestor must be a
    writable folder. Nothing is created here, so a refused command leaves nothing behind."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"cannot write {what}to {folder}: {probe} is not a writable folder; choose another {option}")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}; valid: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
