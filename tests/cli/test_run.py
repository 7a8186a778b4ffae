"""The Python API: checks before anything starts, footers read once, the flow called with what was read; train, retrain and
score from Python on the test months."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline import run
from pipeline.cluster import ClusterSpec
from pipeline.core.config import RetrainConfig, ScoreConfig, TrainConfig
from pipeline.edge import reader
from pipeline.edge.registry import Registry
from pipeline.errors import PipelineError
from pipeline.runtime import local_stack


def _config(source: Path | str, output: Path, **extra: Any) -> TrainConfig:
    return TrainConfig(source=str(source), train_months="2023-01:2023-02", val_month="2023-03", output=output, **extra)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand-ins for the run's (temporary) Prefect API, its early cluster and the flow, recording how they were called."""
    calls: dict[str, Any] = {"api": 0}

    class FakeEarly:
        def spec(self) -> ClusterSpec:
            return ClusterSpec(address="tcp://127.0.0.1:2")

        def close(self) -> None:
            calls["closed"] = True

    @contextmanager
    def fake_early(spec: ClusterSpec, imports: tuple[str, ...] = ()) -> Iterator[FakeEarly]:
        calls["early"] = spec
        yield FakeEarly()

    @contextmanager
    def fake_api(url: str | None = None) -> Iterator[str]:
        calls["api"] += 1
        yield "http://127.0.0.1:1/api"

    def fake_flow(config: TrainConfig, cluster: ClusterSpec, plans: list[reader.MonthPlan] | None = None) -> str:
        calls["flow"] = (config, cluster, plans)
        return "result"

    monkeypatch.setattr(local_stack, "prefect_api", fake_api)
    monkeypatch.setattr(local_stack, "early_cluster", fake_early)
    monkeypatch.setattr(local_stack, "configured_api_url", lambda: None)
    monkeypatch.setattr("pipeline.flows.train.train_flow", fake_flow)  # run.train imports it after its checks
    return calls


def test_local_footers_are_read_once_and_handed_to_the_flow(months_dir, tmp_path, recorded, monkeypatch):
    opened: list[Path] = []
    inspect = reader.inspect
    monkeypatch.setattr(reader, "inspect", lambda path, columns: opened.append(path) or inspect(path, columns))
    lines: list[str] = []
    spec = ClusterSpec(n_workers=1)
    assert run.train(_config(months_dir, tmp_path / "out"), spec, announce=lines.append) == "result"
    _, cluster, plans = recorded["flow"]
    assert recorded["early"] is spec and cluster == ClusterSpec(address="tcp://127.0.0.1:2") and recorded["closed"]
    assert [str(p.file.month) for p in plans] == ["2023-01", "2023-02", "2023-03"]
    assert len(opened) == 3  # one footer read per month, and the flow is handed the plans
    assert lines == ["Prefect API: http://127.0.0.1:1/api", local_stack.TEMPORARY_NOTE]  # its links end with the run, and it says so


def test_remote_sources_are_located_by_the_flow(tmp_path, recorded):
    run.train(_config("http://127.0.0.1:9/trip-data", tmp_path / "out"))
    assert recorded["flow"][2] is None  # no download before the run: the flow's locate tasks fetch with retries


def test_a_missing_month_fails_before_the_api_starts(months_dir, tmp_path, recorded):
    config = TrainConfig(source=str(months_dir), train_months="2023-01", val_month="2023-04", output=tmp_path / "out")
    with pytest.raises(PipelineError, match=r"month 2023-04: file not found"):
        run.train(config)
    assert recorded["api"] == 0 and "flow" not in recorded
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_fails_before_the_api_starts(months_dir, tmp_path, recorded):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PipelineError, match=rf"scheduler tcp://127\.0\.0\.1:{port} \(--scheduler\): connection refused"):
        run.train(_config(months_dir, tmp_path / "out"), ClusterSpec(address=f"tcp://127.0.0.1:{port}"))
    assert recorded["api"] == 0 and "flow" not in recorded


@pytest.mark.cluster
def test_the_local_cluster_starts_beside_the_api_and_closes_before_it(months_dir, tmp_path, monkeypatch):
    """The LocalCluster's start overlaps the API's; the flow gets its address; it is closed before the API stops."""
    import threading

    from distributed import Client

    seen: dict[str, Any] = {}

    @contextmanager
    def slow_api(url: str | None = None) -> Iterator[str]:
        seen["starting"] = [t.name for t in threading.enumerate() if t.name.startswith("start-cluster")]
        yield "http://127.0.0.1:1/api"
        seen["at_stop"] = _refused(seen["address"])

    def flow(config: TrainConfig, cluster: ClusterSpec, plans: Any) -> str:
        seen["address"], seen["origin"] = cluster.address, cluster.origin
        with Client(cluster.address, set_as_default=False) as client:
            seen["workers"] = len(client.scheduler_info(n_workers=-1)["workers"])
        return "result"

    monkeypatch.setattr(local_stack, "prefect_api", slow_api)
    monkeypatch.setattr("pipeline.flows.train.train_flow", flow)
    spec = ClusterSpec(n_workers=2, dashboard_address=":0", cluster_kwargs={"processes": False, "protocol": "tcp://"})
    assert run.train(_config(months_dir, tmp_path / "out"), spec) == "result"
    assert seen["starting"]  # the cluster's thread was under way while the API started
    assert seen["address"].startswith("tcp://127.0.0.1:") and seen["workers"] == 2
    assert seen["origin"] == "LocalCluster started for this run"  # what the flow's "Dask scheduler:" line names
    assert seen["at_stop"]  # closed when the API stops


def _refused(address: str) -> bool:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
def test_retrain_then_score_its_champion_from_python(months_dir, prefect_api_url, tmp_path):
    """``pipeline.run.retrain`` and ``pipeline.run.score`` with their configs, on the session's Prefect API and a cluster."""
    registry = tmp_path / "registry"
    spec = ClusterSpec(n_workers=1, dashboard_address=":0")
    config = RetrainConfig(source=str(months_dir), registry=str(registry), as_of="2023-04-20", folds=0, alphas=(1.0,), boosted=False)
    retrained = run.retrain(config, spec)
    assert (retrained.version, retrained.decision.action, retrained.registry) == ("v0001", "promote", str(registry))
    assert [str(m) for m in retrained.run.train_months] == ["2023-01", "2023-02"] and str(retrained.run.val_month) == "2023-03"
    output = tmp_path / "scored"
    scored = run.score(ScoreConfig(source=str(months_dir), months="2023-02:2023-03", output=str(output), registry=str(registry)), spec)
    assert scored.model == str(registry / "versions" / "v0001")  # the champion, resolved once before the run
    assert [r.month for r in scored.months] == ["2023-02", "2023-03"]
    assert scored.rows == sum(r.rows for r in scored.months) > 0
    assert sorted(p.name for p in output.iterdir()) == ["month=2023-02", "month=2023-03", "report.json", "report.md", "report.png"]


def test_retrain_and_score_check_their_input_before_the_api_starts(months_dir, tmp_path, recorded):
    with pytest.raises(PipelineError, match=r"no yellow month published at .* from 2020-07 to 2022-06"):
        run.retrain(RetrainConfig(source=str(months_dir), registry=str(tmp_path / "registry"), as_of="2022-06-01"))
    with pytest.raises(PipelineError, match="r: no model registry there"):
        run.score(ScoreConfig(source=str(months_dir), months="2023-02", output=str(tmp_path / "out"), registry=str(tmp_path / "r")))
    empty = Registry.open(tmp_path / "empty", create=True)
    with pytest.raises(PipelineError, match="no champion yet"):
        run.score(ScoreConfig(source=str(months_dir), months="2023-02", output=str(tmp_path / "out"), registry=str(empty.root)))
    assert recorded["api"] == 0 and not (tmp_path / "registry").exists() and not (tmp_path / "out").exists()
