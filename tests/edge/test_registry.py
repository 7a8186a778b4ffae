"""The model registry: commits decide the champion under a lock, promote/rollback walk the history, failures change nothing."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import stat
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.core.solve import Weights
from pipeline.edge.metrics import write_metrics
from pipeline.edge.model_files import load_model, save_model
from pipeline.edge.registry import Decision, Registry, Version
from pipeline.errors import PipelineError
from tests.conftest import umask


class Boom(Exception):
    pass


def _result(val_rmse: float, val_month: str = "2023-03") -> RunResult:
    return RunResult(
        model="linear",
        taxi="yellow",
        train_months=(Month(2023, 1), Month(2023, 2)),
        val_month=Month.parse(val_month),
        alpha=1e-3,
        numeric=(),
        train_rows=1000,
        val_rows=500,
        train_rmse=val_rmse - 0.1,
        val_rmse=val_rmse,
        seconds=1.0,
        flow_run_id="00000000-0000-0000-0000-000000000000",
    )


def _stage(registry: Registry, val_rmse: float, val_month: str = "2023-03") -> Path:
    """A staged run: real model files and its metrics.json (the staging block is left normally, as a run would)."""
    with registry.staging() as staged:
        weights = Weights(float(val_rmse), np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0))
        save_model(Model(weights, FeatureSpec(), {"val_rmse": val_rmse}), staged)
        write_metrics(staged, _result(val_rmse, val_month))
    return staged


def _own_rmse(champion: Version) -> float:
    """Score the champion with its own validation RMSE (all tests validate on 2023-03)."""
    return champion.val_rmse


def _commit(registry: Registry, val_rmse: float, score: Callable[[Version], float | None] = _own_rmse) -> tuple[Version, Decision]:
    return registry.commit(_stage(registry, val_rmse), score)


def _champion(registry: Registry) -> str | None:
    champion = registry.champion()
    return None if champion is None else champion.name


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry.open(tmp_path / "registry", create=True)


# --- deciding -----------------------------------------------------------------------------------------------


def test_the_first_commit_promotes_and_its_files_are_a_loadable_version(registry: Registry) -> None:
    scored: list[Version] = []

    def score(champion: Version) -> float:
        scored.append(champion)
        return 0.0

    version, decision = registry.commit(_stage(registry, 5.5), score)
    assert scored == []  # nothing to score on an empty registry
    assert (version.name, version.model, version.train_months, version.val_month, version.val_rmse) == (
        "v0001",
        "linear",
        ("2023-01", "2023-02"),
        "2023-03",
        5.5,
    )
    assert version.path == registry.root / "versions" / "v0001"
    assert version.metrics == _result(5.5).to_dict()
    assert load_model(version.path).weights.intercept == 5.5
    assert (decision.action, decision.version, decision.champion_before, decision.champion_after) == ("promote", "v0001", None, "v0001")
    assert decision.reason == "first version"
    assert registry.champion() == version
    assert registry.versions() == [version]
    assert registry.history() == [decision]
    assert json.loads((registry.root / "champion.json").read_text())["version"] == "v0001"
    record = json.loads((version.path / "version.json").read_text())
    assert record["name"] == "v0001" and record["files"] == ["metrics.json", "model.json", "model.npz"]
    assert datetime.fromisoformat(decision.time).tzinfo == timezone.utc


def test_a_worse_or_equal_challenger_is_kept_out_and_a_better_one_promoted(registry: Registry) -> None:
    _commit(registry, 5.5)
    seen: list[str] = []

    def score(champion: Version) -> float:
        seen.append(champion.name)
        return champion.val_rmse

    _, kept = registry.commit(_stage(registry, 5.6), score)
    assert (kept.action, kept.champion_before, kept.champion_after) == ("keep", "v0001", "v0001")
    assert (kept.challenger_rmse, kept.champion_rmse, kept.val_month) == (5.6, 5.5, "2023-03")
    assert kept.reason.startswith("worse than the champion on 2023-03")
    assert _champion(registry) == "v0001"
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"]  # kept out, but registered

    _, tie = registry.commit(_stage(registry, 5.5 * (1 + 1e-12)), score)  # an identical retrain, scored apart: its last bits may differ
    assert (tie.action, tie.version, tie.champion_before, tie.champion_after) == ("keep", "v0003", "v0001", "v0001")
    assert tie.reason.startswith("kept the champion v0001: the challenger ties it on 2023-03 (5.5 = 5.5 for v0001)")
    assert _champion(registry) == "v0001"

    better, promoted = registry.commit(_stage(registry, 5.4), score)
    assert (promoted.action, promoted.version, promoted.champion_before, promoted.champion_after) == ("promote", "v0004", "v0001", "v0004")
    assert promoted.reason.startswith("better than the champion on 2023-03 (5.4 < 5.5 for v0001)")
    assert seen == ["v0001", "v0001", "v0001"]
    assert registry.champion() == better
    assert [d.action for d in registry.history()] == ["promote", "keep", "keep", "promote"]


@pytest.mark.parametrize("score", [None, float("nan")])
def test_a_champion_that_cannot_be_scored_is_kept(registry: Registry, score: float | None) -> None:
    _commit(registry, 5.5)
    _, decision = _commit(registry, 1.0, lambda champion: score)  # far better, but not comparable
    assert (decision.action, decision.champion_after, decision.champion_rmse) == ("keep", "v0001", None)
    assert "kept the champion v0001" in decision.reason and "2023-03" in decision.reason
    assert _champion(registry) == "v0001"
    json.loads((registry.root / "history.jsonl").read_text().splitlines()[-1])  # strict JSON: no NaN written


# --- promote and rollback -----------------------------------------------------------------------------------


def test_promote_and_rollback_move_the_pointer_and_rollback_walks_back(registry: Registry) -> None:
    _commit(registry, 5.5)  # v0001 promoted
    _commit(registry, 5.9)  # v0002 kept
    _commit(registry, 5.4)  # v0003 promoted
    manual = registry.promote("v0002", reason="hotfix for 2023-03 outage")
    assert (manual.action, manual.version, manual.champion_before, manual.champion_after) == ("manual-promote", "v0002", "v0003", "v0002")
    assert manual.reason == "hotfix for 2023-03 outage"
    assert _champion(registry) == "v0002"

    first = registry.rollback()
    assert (first.action, first.version, first.champion_before, first.champion_after) == ("rollback", "v0003", "v0002", "v0003")
    assert _champion(registry) == "v0003"
    second = registry.rollback()
    assert (second.version, second.champion_before) == ("v0001", "v0003")
    assert _champion(registry) == "v0001"
    with pytest.raises(PipelineError) as error:
        registry.rollback()
    assert str(error.value) == f"{registry.root}: nothing to roll back to"
    assert _champion(registry) == "v0001"
    assert [d.action for d in registry.history()] == ["promote", "keep", "promote", "manual-promote", "rollback", "rollback"]
    since = json.loads((registry.root / "champion.json").read_text())["since"]
    assert since == second.time


def test_rollback_skips_versions_that_are_gone(registry: Registry) -> None:
    for rmse in (5.5, 5.4, 5.3):
        _commit(registry, rmse)
    (registry.root / "versions" / "v0002" / "version.json").unlink()  # deleted by hand: no longer a version
    assert registry.rollback().version == "v0001"


def test_rollback_and_promote_refuse_what_is_not_there(registry: Registry) -> None:
    with pytest.raises(PipelineError, match="nothing to roll back to"):
        registry.rollback()
    with pytest.raises(PipelineError, match=r"no version v0001 \(no versions yet\)"):
        registry.promote("v0001")
    _commit(registry, 5.5)
    with pytest.raises(PipelineError, match="nothing to roll back to"):
        registry.rollback()
    assert len(registry.history()) == 1


# --- opening and naming -------------------------------------------------------------------------------------


def test_open_refuses_a_folder_that_is_not_a_registry_whatever_create_says(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    for create in (False, True):
        with pytest.raises(PipelineError) as error:
            Registry.open(tmp_path / "runs", create=create)
        assert str(error.value) == f"{tmp_path / 'runs'}: not a model registry (no registry.json)"
    assert _tree(tmp_path / "runs") == ["notes.txt"]  # not even a lock file left in it


def test_open_without_create_refuses_a_missing_folder_and_makes_nothing(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        Registry.open(tmp_path / "nowhere")
    assert str(error.value) == f"{tmp_path / 'nowhere'}: no model registry there"
    assert not (tmp_path / "nowhere").exists()


def test_open_creates_at_a_missing_or_empty_folder_and_reopens(tmp_path: Path) -> None:
    made = Registry.open(tmp_path / "a" / "b", create=True)
    (tmp_path / "empty").mkdir()
    Registry.open(tmp_path / "empty", create=True)
    marker = json.loads((made.root / "registry.json").read_text())
    assert marker["format"] == "taxi-pipeline/registry/v1"
    assert datetime.fromisoformat(marker["created"]).tzinfo == timezone.utc
    _commit(made, 5.5)
    again = Registry.open(f"file://{tmp_path / 'a' / 'b'}", create=True)  # an existing registry is just opened
    assert again == made and [v.name for v in again.versions()] == ["v0001"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "registry.json").write_text('{"format": "something/else"}')
    with pytest.raises(PipelineError, match="not a model registry"):
        Registry.open(tmp_path / "bad")


def test_a_location_whose_file_system_is_not_installed_is_one_line() -> None:
    with pytest.raises(PipelineError) as error:
        Registry.open("gs://bucket/registry", create=True)
    assert str(error.value).startswith("gs://bucket/registry/registry.json: cannot open this location (ImportError: ")
    assert "gcsfs" in str(error.value) and "\n" not in str(error.value)


def test_unknown_versions_are_one_line_errors_naming_the_registry_and_the_version(registry: Registry) -> None:
    _commit(registry, 5.5)
    _commit(registry, 5.4)
    assert registry.version("v0002").val_rmse == 5.4
    for name in ("v0042", "latest", "v2", "v00002", "../v0001"):
        with pytest.raises(PipelineError) as error:
            registry.version(name)
        assert str(error.value) == f"{registry.root}: no version {name} (versions: v0001..v0002)"
    with pytest.raises(PipelineError) as error:
        registry.version("v0001\nv0002")
    assert "\n" not in str(error.value) and str(registry.root) in str(error.value)


# --- failures change nothing ----------------------------------------------------------------------------------


def test_a_scorer_that_raises_leaves_everything_as_it_was(registry: Registry) -> None:
    _commit(registry, 5.5)
    staged = _stage(registry, 5.0)
    before = {p: p.read_bytes() for p in registry.root.rglob("*") if p.is_file() and staged not in p.parents}

    def fail(champion: Version) -> float:
        raise Boom("the validation month is unreadable")

    with pytest.raises(Boom):
        registry.commit(staged, fail)
    after = {p: p.read_bytes() for p in registry.root.rglob("*") if p.is_file() and staged not in p.parents}
    assert after == before  # no version, no champion change, no history line
    assert sorted(os.listdir(staged)) == ["metrics.json", "model.json", "model.npz"]  # where it was: the caller decides
    version, _ = registry.commit(staged, _own_rmse)  # and the number was not used up
    assert version.name == "v0002" and not staged.exists()


def test_a_commit_that_fails_half_way_is_undone(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    _commit(registry, 5.5)

    def append_fails(path: Path, line: str) -> None:
        raise IsADirectoryError(path)

    monkeypatch.setattr("pipeline.edge.registry._append_line", append_fails)  # fails after the champion pointer moved
    staged = _stage(registry, 5.0)
    with pytest.raises(IsADirectoryError):
        registry.commit(staged, _own_rmse)
    assert [v.name for v in registry.versions()] == ["v0001"] and os.listdir(registry.root / "versions") == ["v0001"]
    assert _champion(registry) == "v0001"
    assert sorted(os.listdir(staged)) == ["metrics.json", "model.json", "model.npz"]
    assert not [p for p in registry.root.rglob("*.tmp")]


def test_a_staged_folder_without_metrics_is_refused_and_left_alone(registry: Registry) -> None:
    with registry.staging() as staged:
        (staged / "model.npz").write_bytes(b"half a run")
    with pytest.raises(PipelineError) as error:
        registry.commit(staged, _own_rmse)
    assert str(error.value) == f"{staged}: no metrics.json, so the run did not complete; not committed"
    assert os.listdir(staged) == ["model.npz"]
    assert registry.versions() == [] and registry.history() == [] and registry.champion() is None


def test_only_staging_folders_of_the_registry_are_committed(registry: Registry, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "first"
    run.mkdir(parents=True)
    write_metrics(run, _result(5.5))
    with pytest.raises(PipelineError, match="not a staging folder"):
        registry.commit(run, _own_rmse)
    assert os.listdir(run) == ["metrics.json"] and registry.versions() == []


def test_staging_is_removed_if_the_block_raises(registry: Registry) -> None:
    with pytest.raises(Boom), registry.staging() as staged:
        write_metrics(staged, _result(5.5))
        raise Boom
    assert not staged.exists() and os.listdir(registry.root / ".staging") == []


def test_a_folder_left_by_a_killed_commit_is_not_a_version_and_its_number_is_not_reused(registry: Registry) -> None:
    _commit(registry, 5.5)
    (registry.root / "versions" / "v0002").mkdir()  # renamed in, then killed before version.json
    assert [v.name for v in registry.versions()] == ["v0001"]
    version, _ = _commit(registry, 5.4)
    assert version.name == "v0003"


# --- files on disk --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_files_follow_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    with umask(mask):
        registry = Registry.open(tmp_path / "registry", create=True)
        _commit(registry, 5.5)
        _commit(registry, 5.6)
        registry.promote("v0002")
    modes = {str(p.relative_to(registry.root)): stat.S_IMODE(p.stat().st_mode) for p in registry.root.rglob("*")}
    assert {"registry.json", "champion.json", "history.jsonl", ".lock", "versions/v0002/model.npz", ".staging"} <= set(modes)
    for name, mode in modes.items():
        assert mode == (dir_mode if (registry.root / name).is_dir() else file_mode), name


def test_history_is_one_json_object_a_line(registry: Registry) -> None:
    _commit(registry, 5.5)
    _commit(registry, 5.6)
    registry.promote("v0002")
    lines = (registry.root / "history.jsonl").read_text().splitlines()
    assert [Decision.from_dict(json.loads(line)) for line in lines] == registry.history()
    assert all(json.loads(line) == d.to_dict() for line, d in zip(lines, registry.history()))


# --- two processes at once ------------------------------------------------------------------------------------


def _commit_five(root: str, start: Any, seed: int) -> None:
    """In a spawned process: create-or-open the registry, then commit five runs of random RMSE."""
    start.wait(timeout=60)
    registry = Registry.open(root, create=True)
    rng = np.random.default_rng(seed)

    def slow_score(champion: Version) -> float:
        time.sleep(0.01)  # widen the window in which a lockless registry would interleave
        return champion.val_rmse

    for _ in range(5):
        registry.commit(_stage(registry, float(rng.uniform(5.0, 6.0))), slow_score)


def test_two_processes_committing_at_once_get_ten_complete_versions(tmp_path: Path) -> None:
    root = tmp_path / "registry"  # not created yet: both processes create it at once
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    processes = [context.Process(target=_commit_five, args=(str(root), start, seed)) for seed in (1, 2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0]

    registry = Registry.open(root)
    names = [f"v{n:04d}" for n in range(1, 11)]
    assert sorted(os.listdir(root / "versions")) == names
    for version in registry.versions():
        record = json.loads((version.path / "version.json").read_text())
        assert record["name"] == version.name
        assert all((version.path / name).is_file() for name in record["files"]) and "model.npz" in record["files"]
    assert [v.name for v in registry.versions()] == names
    history = registry.history()
    assert [d.version for d in history] == names  # numbers were claimed and decided under one lock
    for previous, decision in itertools.pairwise(history):
        assert decision.champion_before == previous.champion_after  # each decision saw the one before
        if decision.action == "promote":
            assert decision.challenger_rmse is not None and decision.champion_rmse is not None
            assert decision.challenger_rmse <= decision.champion_rmse
    champion = json.loads((root / "champion.json").read_text())["version"]
    assert champion == history[-1].champion_after and (root / "versions" / champion / "version.json").is_file()
    assert os.listdir(root / ".staging") == []
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]
