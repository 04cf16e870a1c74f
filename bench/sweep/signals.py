"""Ctrl-C and SIGTERM held back while storage writes must land together.

Why a module of its own: a sweep is stopped with Ctrl-C or SIGTERM at any moment, and a
signal in the middle of a storage write breaks things that outlive the process (a lock file
left behind, a claim made but never known, a result saved but never marked done). Every
storage call of the sweep, and every group of writes that belongs together, runs with the
signals deferred: they are delivered right after, so the process still stops at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import optuna

# A name, not the class: importing optuna here would cost the command line's start-up (every command
# imports bench.sweep) about a third of a second for an annotation.
StorageT = TypeVar("StorageT", bound="optuna.storages.BaseStorage")


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a few storage writes must land together (a claim and the
    knowledge of its id; a result, its attributes and its COMPLETE); deliver them right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            handler = old[got[0]]
            if callable(handler):
                handler(got[0], None)  # default_int_handler raises KeyboardInterrupt; the CLI's SIGTERM handler too
            elif handler != signal.SIG_IGN:
                os.kill(os.getpid(), got[0])


def signal_safe(storage: StorageT) -> StorageT:
    """Every storage call finishes before a Ctrl-C or SIGTERM is delivered.

    Why: a KeyboardInterrupt inside the journal file's lock or its replay leaves the lock
    file behind or the in-memory replay half-applied (measured: a traceback from optuna's
    lock release instead of a clean exit 130). Storage calls take milliseconds, so holding
    the signal that long costs nothing.
    """
    for name in dir(type(storage)):
        if name.startswith("_"):
            continue
        method = getattr(storage, name, None)
        if callable(method):
            setattr(storage, name, _deferring(method))
    return storage


def _deferring(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method`, called with the signals deferred (see signal_safe)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return method(*args, **kwargs)

    call.__name__ = getattr(method, "__name__", "call")
    call.__doc__ = method.__doc__
    return call


# ---------------------------------------------------------------- stopping a sweep


class Stop(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping us): stop like Ctrl-C."""


def on_sigterm(signum: int, frame: Any) -> None:
    """A scheduler's SIGTERM takes the Ctrl-C path: the claim is given back, the same command resumes."""
    raise Stop()


def listen_to_sigint() -> None:
    """A sweep started in the background (`nohup python cli.py sweep ... &`) inherits SIGINT ignored (the shell
    does that to background jobs), so a user's `kill -INT` or Ctrl-C after `fg` did nothing: take it back, so
    that SIGINT stops the sweep cleanly like SIGTERM, and the same command resumes."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupted_code(exc: KeyboardInterrupt) -> int:
    """The exit code of a stop: 143 for SIGTERM (`Stop`), 130 for SIGINT (Ctrl-C)."""
    return 143 if isinstance(exc, Stop) else 130


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """While a sweep trains: a scheduler's SIGTERM takes the Ctrl-C path (the claim is given back, the
    same command resumes); the previous handler afterwards."""
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
