"""Whether a process on this machine is alive: for locks and records that name their owner's pid."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """The process exists (possibly another user's); ``pid`` 0 or less is never a live owner."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
