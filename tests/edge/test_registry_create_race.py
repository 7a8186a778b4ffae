"""Creating a registry while another run creates it and starts staging: the second sees a registry, never "not a registry"."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from pipeline.edge import registry as registry_module
from pipeline.edge.registry import Registry
from pipeline.errors import PipelineError

#: Rounds of two processes creating one new registry at once: a guard; the two tests above are the ones that failed before.
ROUNDS = 50


def _other_run_creates_it_between_two_looks(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make the first ``_empty`` look happen after another run created the registry and staged into it.

    That is the interleaving that failed: this run found no registry.json, then, looking at the folder,
    found the other run's ``.staging/`` and took the folder for someone else's.
    """
    real_empty = registry_module._empty

    def late_look(folder: Path) -> bool:
        monkeypatch.setattr(registry_module, "_empty", real_empty)
        other = Registry.open(root, create=True)
        (other.root / registry_module.STAGING_DIR / "other-run").mkdir(parents=True)
        return real_empty(folder)

    monkeypatch.setattr(registry_module, "_empty", late_look)


@pytest.mark.parametrize("create", [True, False])
def test_a_registry_created_between_two_looks_is_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, create: bool) -> None:
    root = tmp_path / "registry"
    root.mkdir()  # made by the other run's mkdir, nothing in it yet
    _other_run_creates_it_between_two_looks(monkeypatch, root)
    assert Registry.open(root, create=create).root == root
    assert (root / "registry.json").is_file()


def test_a_reader_waits_for_a_creator_holding_the_lock(tmp_path: Path) -> None:
    """A folder holding only the lock (a creator between mkdir and registry.json) is judged once the lock is free."""
    root = tmp_path / "registry"
    root.mkdir()
    creator = Registry(root)
    context = multiprocessing.get_context("spawn")
    with creator._locked():
        reader = context.Process(target=_open_existing, args=(str(root),))
        reader.start()
        reader.join(timeout=2)
        assert reader.is_alive()  # waiting on the lock, not refusing
        registry_module._write_json(root / "registry.json", {"format": registry_module.FORMAT, "created": registry_module._now()})
    reader.join(timeout=60)
    assert reader.exitcode == 0


def test_a_folder_with_only_a_lock_is_not_a_registry_yet(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    (root / ".lock").touch()
    with pytest.raises(PipelineError, match="no model registry there"):
        Registry.open(root)


def _open_existing(root: str) -> None:
    Registry.open(root)


def _create_and_stage(roots: list[str], start: Any, failures: Any) -> None:
    """In a spawned process: for each root, wait for the other process, then create-or-open it and start staging."""
    for root in roots:
        start.wait(timeout=60)
        try:
            registry = Registry.open(root, create=True)
            (Path(root) / registry_module.STAGING_DIR).mkdir(exist_ok=True)  # what staging() does first
            with registry.staging():
                pass
        except PipelineError as exc:
            failures.put(str(exc))


def test_many_rounds_of_two_processes_creating_one_registry(tmp_path: Path) -> None:
    roots = [str(tmp_path / f"registry-{n}") for n in range(ROUNDS)]
    context = multiprocessing.get_context("spawn")
    start, failures = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_create_and_stage, args=(roots, start, failures)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert found == [] and [p.exitcode for p in processes] == [0, 0]
    assert all(Registry.open(root).versions() == [] for root in roots)
