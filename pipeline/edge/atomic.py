"""Write files so that readers see the old content or the new one, never a torn one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_path(path: Path, *, parents: bool = True) -> Iterator[Path]:
    """Yield a new, empty temporary path beside ``path``; on success rename it into place.

    The temporary file is created with mode 0666 less the umask, as ``open`` would
    create ``path`` itself, so a team's readers can read what a run wrote. Missing
    folders are made, unless ``parents`` is false (then ``FileNotFoundError``).
    """
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, write: Callable[[IO[bytes]], object], *, parents: bool = True) -> None:
    """Atomically write ``path`` with ``write(file_object)``, flushed to disk before it takes the name."""
    with atomic_path(path, parents=parents) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
