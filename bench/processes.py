"""Whether a process of this machine still lives: what decides if a leftover (a journal lock, a
temporary file, a claim) belongs to someone who may still finish it, or may be cleaned up."""

from __future__ import annotations

import os


def pid_alive_here(pid: int) -> bool:
    """True while process `pid` exists on this machine (also when it is another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
