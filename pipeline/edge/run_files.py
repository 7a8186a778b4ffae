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

So a reader sees the old complete set, then for the moment of the write no
model, then the new complete set; a loader that read one run's ``model.json``
and meets another's data file is refused by the digest, never handed a mix.
Two runs writing at once both finish, one after the other; the folder ends
as the later one's whole set.
"""

from __future__ import annotations

from pipeline.edge import storage
from pipeline.edge.baseline import COUNTS_FILE
from pipeline.edge.metrics import METRICS_FILE
from pipeline.edge.model_files import ESTIMATOR_FILE, META_FILE, WEIGHTS_FILE
from pipeline.edge.storage import Where

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
        for marker in (METRICS_FILE, META_FILE):
            if marker in previous:
                storage.delete(folder.child(marker))
        for name, data in objects.items():
            storage.put(folder.child(name), data)
        storage.put(folder.child(METRICS_FILE), metrics)
        for stale in sorted(previous - set(objects) - {METRICS_FILE}):
            storage.delete(folder.child(stale))
