"""A training run's files in its output folder, replaced as one set: never a new model beside old metrics.

``--output`` holds one run: ``model.json`` with its data file (``model.npz`` or
``model.skops``), ``train_counts.npz`` and ``metrics.json``. A run that writes
into a folder holding another run's files:

1. takes ``.run.lock`` (created only if absent: ``O_EXCL`` locally, a
   conditional put on object storage), waiting up to :data:`LOCK_WAIT` seconds
   for another run's write to end, else refused with one line naming it;
2. removes the old ``metrics.json`` then ``model.json``, the two objects that
   make a set complete and loadable;
3. writes its data objects, then ``model.json`` (naming the run id and each
   data file's SHA-256), then ``metrics.json`` (the same run id);
4. removes the old run's files its own set does not have (a ``model.npz`` left
   by a linear run after a HistGradientBoosting one), then the lock.

A write that fails (a full disk, a lost connection) puts the previous set
back before the error goes on: locally each previous file was hard-linked
aside first (no space needed to link or to rename back), remotely its bytes
were kept. So a reader sees the old complete set, then for the moment of the
write no model, then the new complete set, or the old one again; a loader that read one run's ``model.json``
and meets another's data file is refused by the digest, never handed a mix.
Two runs writing at once both finish, one after the other; the folder ends
as the later one's whole set.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from pipeline.edge import storage
from pipeline.edge.baseline import COUNTS_FILE
from pipeline.edge.metrics import METRICS_FILE
from pipeline.edge.model_files import ESTIMATOR_FILE, META_FILE, WEIGHTS_FILE
from pipeline.edge.storage import Location, Where
from pipeline.errors import PipelineError

#: Every file a run writes; a run removes those of the previous run it does not write itself.
RUN_FILES = (METRICS_FILE, META_FILE, WEIGHTS_FILE, ESTIMATOR_FILE, COUNTS_FILE)
LOCK_FILE = ".run.lock"
#: Seconds a run waits for another run's write into the same folder (a write takes well under a second).
LOCK_WAIT = 30.0


def publish_run(output: Where, run_id: str, objects: dict[str, bytes], metrics: bytes) -> None:
    """Replace the run files in ``output`` with ``objects`` (data first, ``model.json`` last) and ``metrics``."""
    folder = storage.locate(output)
    lock = folder.child(LOCK_FILE)
    busy = f"{folder}: run {{holder}} is writing its files here; not written (delete {lock} if that run is gone)"
    with storage.exclusive(lock, run_id, LOCK_WAIT, busy):
        previous = set(storage.listdir(folder)) & set(RUN_FILES)
        kept = _keep(folder, previous)
        try:
            for marker in (METRICS_FILE, META_FILE):
                if marker in previous:
                    storage.delete(folder.child(marker))
            for name, data in objects.items():
                storage.put(folder.child(name), data)
            storage.put(folder.child(METRICS_FILE), metrics)
        except BaseException:
            _restore(folder, kept, written=set(objects) | {METRICS_FILE})
            raise
        _drop(kept)
        for stale in sorted(previous - set(objects) - {METRICS_FILE}):
            storage.delete(folder.child(stale))


#: What a previous file was kept as: a hard link beside it (local) or its bytes (object storage).
Kept = dict[str, Path | bytes]


def _keep(folder: Location, previous: set[str]) -> Kept:
    """Keep the previous run's files so a failed write can put them back; a killed run's leftover links go first."""
    kept: Kept = {}
    if folder.path is not None:
        for leftover in folder.path.glob(".*.previous"):
            leftover.unlink(missing_ok=True)
    for name in sorted(previous):
        if folder.path is not None:
            aside = folder.path / f".{name}.previous"
            os.link(folder.path / name, aside)
            kept[name] = aside
        else:
            kept[name] = storage.read_bytes(folder.child(name))
    return kept


def _restore(folder: Location, kept: Kept, written: set[str]) -> None:
    """Put the previous set back as it was, markers last; remove what the failed write added. Best effort, never raises."""
    order = sorted(kept, key=lambda name: (name == METRICS_FILE, name == META_FILE))  # data, model.json, metrics.json
    for name in sorted(written - set(kept)):
        with suppress(PipelineError, OSError):
            storage.delete(folder.child(name))
    for name in order:
        with suppress(PipelineError, OSError):
            value = kept[name]
            if isinstance(value, Path):
                assert folder.path is not None
                os.replace(value, folder.path / name)
            else:
                storage.put(folder.child(name), value)
    _drop(kept)  # rename onto a link of the same file (one never replaced) does nothing: the link stays


def _drop(kept: Kept) -> None:
    for value in kept.values():
        if isinstance(value, Path):
            value.unlink(missing_ok=True)
