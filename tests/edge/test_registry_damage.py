"""A damaged registry: each damage refused in one line naming the file, listed by ``models list``, repaired only when asked."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cluster import ClusterSpec
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import Model
from pipeline.core.months import Month
from pipeline.core.results import RunResult
from pipeline.core.solve import Weights
from pipeline.edge import registry as registry_module
from pipeline.edge.metrics import write_metrics
from pipeline.edge.model_files import save_model
from pipeline.edge.registry import Registry, Version
from pipeline.errors import PipelineError
from tests.conftest import DaskProcesses, cli_here


def _stage(registry: Registry, val_rmse: float, run: str) -> Path:
    """A staged run as retrain writes it: model files naming the run, then its metrics.json."""
    with registry.staging() as staged:
        weights = Weights(float(val_rmse), np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(0))
        save_model(Model(weights, FeatureSpec(), {"run_id": run}), staged)
        result = RunResult(
            model="linear",
            taxi="yellow",
            train_months=(Month(2023, 1), Month(2023, 2)),
            val_month=Month(2023, 3),
            alpha=1e-3,
            numeric=(),
            train_rows=1000,
            val_rows=500,
            train_rmse=val_rmse - 0.1,
            val_rmse=val_rmse,
            seconds=1.0,
            flow_run_id=run,
        )
        write_metrics(staged, result)
    return staged


def _own_rmse(champion: Version) -> float:
    return champion.val_rmse


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """v0001 (champion first), v0002 (better: champion now)."""
    store = Registry.open(tmp_path / "registry", create=True)
    for n, rmse in ((1, 6.0), (2, 5.0)):
        store.commit(_stage(store, rmse, f"run-{n}"), _own_rmse)
    assert store.champion() is not None and store.champion().name == "v0002"  # type: ignore[union-attr]
    return store


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=timeout)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# --- each damage, refused in one line naming the file ---------------------------------------------------------


def _truncate_champion(root: Path) -> str:
    path = root / "champion.json"
    path.write_bytes(path.read_bytes()[:9])
    return "champion.json: unreadable"


def _garbage_champion(root: Path) -> str:
    (root / "champion.json").write_bytes(b"\x00\xff garbage \x13")
    return "champion.json: unreadable"


def _model_file_missing(root: Path) -> str:
    (root / "versions" / "v0002" / "model.npz").unlink()
    return "versions/v0002/model.npz: missing from version v0002"


def _model_of_another_run(root: Path) -> str:
    for name in ("model.npz", "model.json"):
        shutil.copy(root / "versions" / "v0001" / name, root / "versions" / "v0002" / name)
    return "versions/v0002/model.json: not the file v0002 was registered with"


DAMAGES = {
    "champion-truncated": _truncate_champion,
    "champion-garbage": _garbage_champion,
    "model-missing": _model_file_missing,
    "model-of-another-run": _model_of_another_run,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_champion_is_refused_in_one_line_and_commits_change_nothing(registry: Registry, damage: str) -> None:
    root = Path(registry.root)
    expected = DAMAGES[damage](root)
    before = _snapshot(root)
    with pytest.raises(PipelineError) as error:
        registry.champion()
    assert expected in str(error.value) and "\n" not in str(error.value)
    staged = _stage(registry, 4.0, "run-3")
    with pytest.raises(PipelineError, match="the champion is damaged: `taxi-pipeline retrain --repair` replaces it"):
        registry.commit(staged, _own_rmse)
    with pytest.raises(PipelineError, match="the champion is damaged"):
        registry.check_for_commit()
    assert _snapshot(root) == {**before, **{k: v for k, v in _snapshot(root).items() if k.startswith(".staging/")}}
    assert sorted(os.listdir(root / "versions")) == ["v0001", "v0002"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_repair_promotes_the_challenger_over_a_damaged_champion(registry: Registry, damage: str) -> None:
    DAMAGES[damage](Path(registry.root))
    version, decision = registry.commit(_stage(registry, 7.0, "run-3"), _own_rmse, repair=True)  # worse, but the champion is gone
    assert (version.name, decision.action) == ("v0003", "promote")
    assert decision.reason.startswith("replaces a damaged champion (")
    assert registry.champion() == version and registry.history()[-1] == decision


def test_a_legacy_version_holding_another_runs_model_is_refused(registry: Registry) -> None:
    """Versions committed before digests were recorded: model.json must name the run metrics.json names."""
    folder = Path(registry.root) / "versions" / "v0002"
    record = json.loads((folder / "version.json").read_text())
    del record["digests"]
    (folder / "version.json").write_text(json.dumps(record))
    for name in ("model.npz", "model.json"):
        shutil.copy(folder.parent / "v0001" / name, folder / name)
    with pytest.raises(PipelineError, match=r"v0002/model.json: model of run run-1, but v0002 is run run-2's"):
        registry.champion()


def test_a_torn_last_history_line_is_refused_then_cut_off_by_repair(registry: Registry) -> None:
    path = Path(registry.root) / "history.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"action": "promote", "vers')
    with pytest.raises(PipelineError, match=r"history.jsonl: last line torn \(27 bytes with no end"):
        registry.history()
    staged = _stage(registry, 4.0, "run-3")
    with pytest.raises(PipelineError, match="last line torn"):
        registry.commit(staged, _own_rmse)
    with pytest.raises(PipelineError, match="last line torn"):
        registry.promote("v0001")
    assert path.read_bytes().startswith(whole) and len(registry.versions()) == 2
    _, decision = registry.commit(staged, _own_rmse, repair=True)
    assert decision.action == "promote" and [d.version for d in registry.history()] == ["v0001", "v0002", "v0003"]
    (aside,) = Path(registry.root).glob("history.jsonl.torn-*")
    assert aside.read_bytes() == b'{"action": "promote", "vers'


# --- a lock left by a dead process, and one held by a live one ---------------------------------------------------


def _hold_lock(root: str, held: Any) -> None:
    with Registry(Path(root))._locked():
        held.set()
        time.sleep(600)  # killed long before


def test_a_lock_left_by_a_killed_process_is_taken_over_at_once(registry: Registry) -> None:
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(registry.root), held))
    holder.start()
    try:
        assert held.wait(60)
        assert str(holder.pid) in (Path(registry.root) / ".lock").read_text()  # the holder is named while it lives
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(timeout=30)
    started = time.monotonic()
    version, _ = registry.commit(_stage(registry, 4.0, "run-3"), _own_rmse)
    assert version.name == "v0003" and time.monotonic() - started < 5
    assert registry.survey().problems == []


def test_a_lock_held_by_a_live_process_is_refused_in_one_line_naming_it(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "LOCK_WAIT", 0.5)
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    holder = context.Process(target=_hold_lock, args=(str(registry.root), held))
    holder.start()
    try:
        assert held.wait(60)
        staged = _stage(registry, 4.0, "run-3")
        with pytest.raises(PipelineError) as error:
            registry.commit(staged, _own_rmse)
        assert f"{registry.root}/.lock: held by pid {holder.pid} on " in str(error.value)
        assert "stop that process: its lock goes with it" in str(error.value)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(timeout=30)
    assert len(registry.versions()) == 2 and staged.is_dir()


# --- what the CLI shows ----------------------------------------------------------------------------------------


def test_models_list_shows_what_it_can_and_flags_each_damage(registry: Registry) -> None:
    root = Path(registry.root)
    _model_file_missing(root)
    path = root / "history.jsonl"
    path.write_bytes(path.read_bytes() + b'{"act')
    shown = _cli("models", "list", "--registry", str(root))
    assert "v0001" in shown.stdout and "DAMAGED" in shown.stdout and "champion v0002 (damaged)" in shown.stdout
    damaged = [line for line in shown.stderr.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 2 and "v0002/model.npz: missing" in damaged[0] and "history.jsonl: last line torn" in damaged[1]
    assert _one_error_line(shown).endswith("2 damaged part(s), listed above")
    listed = json.loads(_cli("models", "list", "--registry", str(root), "--json").stdout)
    assert [(r["version"], r["champion"], r["damaged"] is not None) for r in listed] == [("v0001", False, False), ("v0002", True, True)]


def test_retrain_refuses_a_damaged_champion_before_starting_anything(registry: Registry, months_dir: Path) -> None:
    root = Path(registry.root)
    _garbage_champion(root)
    before = _snapshot(root)
    started = time.monotonic()
    line = _one_error_line(cli_here("retrain", "--source", str(months_dir), "--registry", str(root), "--as-of", "2023-04-20"))
    assert f"{root}/champion.json: unreadable" in line and "retrain --repair" in line
    assert time.monotonic() - started < 30 and _snapshot(root) == before


def test_retrain_with_repair_replaces_a_damaged_champion(
    registry: Registry, months_dir: Path, prefect_api_url: str, one_worker: DaskProcesses
) -> None:
    from pipeline.core.config import RetrainConfig
    from pipeline.flows.retrain import retrain_flow

    _model_file_missing(Path(registry.root))
    config = RetrainConfig(
        source=str(months_dir), registry=str(registry.root), as_of=date(2023, 4, 20), folds=0, alphas=(0.1,), candidates=((),), repair=True
    )
    result = retrain_flow(config, ClusterSpec(address=one_worker.address))
    assert (result.version, result.decision.action, result.decision.champion_before) == ("v0003", "promote", "v0002")
    assert "replaces a damaged champion" in result.decision.reason and "model.npz: missing" in result.decision.reason
    assert registry.champion().name == "v0003"  # type: ignore[union-attr]
