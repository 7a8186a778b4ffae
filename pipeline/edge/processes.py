"""Processes on this machine: whether one is alive (for locks and records that name their owner's pid), and what a
long-lived one holds (memory, open files, temporary files), read from Linux ``/proc``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists (possibly another user's); ``pid`` 0 or less is never a live owner."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def descendants(pid: int) -> list[int]:
    """The live children of ``pid``, their children, and so on (Linux ``/proc``): a served run's subprocess and its workers."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(child) for child in task.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB (processes that end meanwhile count 0)."""
    total = 0
    for one in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{one}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


@dataclass(frozen=True)
class Footprint:
    """What a long-lived process holds: to check that it does not grow from one unit of work to the next."""

    rss_mb: float  # the process and its descendants
    open_files: int  # the process's file descriptors (sockets and pipes included)
    temp_entries: int  # files and folders under its temporary folder, at any depth
    processes: int  # the process and its live descendants


def footprint(pid: int, temp_dir: Path) -> Footprint:
    """The :class:`Footprint` of ``pid`` now, ``temp_dir`` being the TMPDIR it was started with."""
    return Footprint(
        rss_mb=tree_rss_mb(pid),
        open_files=len(os.listdir(f"/proc/{pid}/fd")),
        temp_entries=sum(1 for _ in temp_dir.rglob("*")),
        processes=1 + len(descendants(pid)),
    )
