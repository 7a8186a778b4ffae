"""The flow on real remote-style clusters: separate `dask scheduler` / `dask worker` processes on 127.0.0.1.

Plaintext and TLS, a worker killed mid-run, a version mismatch, and workers that
were never told the Prefect API URL but must report to the flow's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cluster import ClusterSpec, connect
from pipeline.core.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.run import train
from tests.conftest import DaskProcesses, read_task_runs, task_kind

pytestmark = pytest.mark.slow


def _train(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A run's result as its metrics.json document."""
    return train(*args, **kwargs).to_dict()


#: What must not change between runs of the same months (timings and ids do).
_SAME = ("train_rows", "val_rows", "train_rmse", "val_rmse", "alpha", "train_months", "val_month")


def _config(source: Path, output: Path, chunk_rows: int = 15_000) -> TrainConfig:
    # cache=False: every run computes its chunks on the workers under test
    return TrainConfig(
        source=str(source), train_months=["2023-01", "2023-02"], val_month="2023-03", output=output, chunk_rows=chunk_rows, cache=False
    )


def _task_names(flow_run_id: str, expected: int) -> Counter:
    runs = read_task_runs(flow_run_id, expected)
    unfinished = [(r.name, r.state) for r in runs if not (r.state and r.state.is_completed())]
    assert not unfinished, unfinished
    return Counter(task_kind(r.name) for r in runs)


def _weights(output: Path) -> dict[str, np.ndarray]:
    with np.load(output / "model.npz", allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


@pytest.fixture(scope="module")
def local_run(months_dir: Path, prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Counter, Path]:
    """The reference: the same months on a LocalCluster, the task runs its API recorded, and its output folder."""
    output = tmp_path_factory.mktemp("local") / "run"
    metrics = _train(_config(months_dir, output), ClusterSpec(n_workers=2, dashboard_address=":0"))
    names = Counter(task_kind(r.name) for r in read_task_runs(metrics["flow_run_id"], expected=0, timeout=0))
    return metrics, _task_names(metrics["flow_run_id"], sum(names.values())), output


def test_remote_workers_give_the_local_result_and_report_to_the_flows_api(
    months_dir, prefect_api_url, dask_processes, local_run, tmp_path, caplog
):
    local_metrics, local_tasks, _ = local_run
    metrics = _train(_config(months_dir, tmp_path / "run"), ClusterSpec(address=dask_processes.address))
    assert {k: metrics[k] for k in _SAME} == {k: local_metrics[k] for k in _SAME}
    assert metrics["cv"]["by_alpha"] == local_metrics["cv"]["by_alpha"]
    assert f"Dask scheduler: {dask_processes.address} (--scheduler, 2 workers)" in caplog.text
    # every task ran on a worker without PREFECT_API_URL of its own, yet is in the flow's API
    assert _task_names(metrics["flow_run_id"], sum(local_tasks.values())) == local_tasks
    with dask_processes.client() as client:
        assert set(client.run(os.environ.get, "PREFECT_API_URL").values()) == {prefect_api_url}


def test_workers_that_served_another_api_are_repointed(dask_processes, prefect_api_url):
    """Prefect's event service on a worker keeps the API it started with; the plugin restarts it on the new one."""
    from pipeline.runtime.plugins import PrefectApiPlugin

    def _worker_state() -> dict[str, Any]:  # nested: cloudpickled by value, as workers cannot import this module
        import os

        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.settings import get_current_settings

        services = [s for s in EventsWorker._instances.values() if isinstance(s, (EventsWorker, APILogWorker))]
        return {"env": os.environ.get("PREFECT_API_URL"), "settings": get_current_settings().api.url, "event_services": len(services)}

    def _emit() -> None:  # as a task run on the worker does: it starts the worker's event service on the current API
        from prefect.events import emit_event

        assert emit_event(event="taxi-pipeline.test.served", resource={"prefect.resource.id": "taxi-pipeline.test"}) is not None

    with dask_processes.client() as client:
        # The workers serve the session's API first, whatever ran on them before (or did not: tests run in any order).
        client.register_plugin(PrefectApiPlugin(prefect_api_url))
        client.run(_emit)
        before = client.run(_worker_state)
        assert all(s["event_services"] >= 1 and s["settings"] == prefect_api_url for s in before.values()), before
        client.register_plugin(PrefectApiPlugin("http://127.0.0.1:9/api"))
        moved = client.run(_worker_state)
        assert all(
            s == {"env": "http://127.0.0.1:9/api", "settings": "http://127.0.0.1:9/api", "event_services": 0} for s in moved.values()
        ), moved
        client.register_plugin(PrefectApiPlugin(prefect_api_url))
        assert all(s["settings"] == prefect_api_url for s in client.run(_worker_state).values())


def test_a_package_version_mismatch_is_one_line(dask_processes, monkeypatch):
    import distributed.versions

    real = distributed.versions.get_versions

    def client_side(packages=None):  # the client's pyarrow differs from every worker's
        versions = real(packages)
        versions["packages"]["pyarrow"] = "0.0.1"
        return versions

    monkeypatch.setattr(distributed.versions, "get_versions", client_side)
    with pytest.raises(PipelineError) as raised, connect(ClusterSpec(address=dask_processes.address)):
        pass
    assert raised.match(
        r"^package version mismatch: pyarrow 0\.0\.1 here \(the client\) but \d+\.\d+\.\d+ on worker "
        r"tcp://127\.0\.0\.1:\d+; install the same versions everywhere"
    )


def test_tls_cluster_gives_the_same_result_and_refuses_plaintext(
    months_dir, prefect_api_url, tls_dask_processes, tls_files, local_run, tmp_path, capsys, monkeypatch
):
    ca, cert, key = map(str, tls_files)
    metrics = _train(
        _config(months_dir, tmp_path / "run"), ClusterSpec(address=tls_dask_processes.address, tls_ca_file=ca, tls_cert=cert, tls_key=key)
    )
    assert metrics["val_rmse"] == local_run[0]["val_rmse"]
    assert _task_names(metrics["flow_run_id"], sum(local_run[1].values())) == local_run[1]

    # a plaintext client: the CLI's one line and exit code 2
    plain = "tcp://" + tls_dask_processes.address.partition("://")[2]
    from pipeline import cli

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "taxi-pipeline",
            "train",
            "--source",
            str(months_dir),
            "--train-months",
            "2023-01",
            "--val-month",
            "2023-02",
            "--output",
            str(tmp_path / "plain"),
            "--scheduler",
            plain,
        ],
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"error: scheduler {plain} (--scheduler): refused the connection; it requires TLS: use {tls_dask_processes.address} "
        "and pass --tls-ca-file/--tls-cert/--tls-key\n" in err
    )
    assert not (tmp_path / "plain").exists()


def test_a_flow_run_started_as_a_deployment_starts_it_runs_on_the_named_scheduler(
    months_dir, prefect_api_url, dask_processes, local_run, tmp_path
):
    """A fresh process with only PREFECT_API_URL and DASK_SCHEDULER_ADDRESS calls the flow function: no run.train."""
    import subprocess

    output = tmp_path / "deployed"
    script = (
        "from pipeline.core.config import TrainConfig\n"
        "from pipeline.flows.train import train_flow\n"
        "if __name__ == '__main__':\n"
        f"    config = TrainConfig(source={str(months_dir)!r}, train_months='2023-01:2023-02', val_month='2023-03',\n"
        f"                         output={str(output)!r}, chunk_rows=15_000, cache=False)\n"
        "    print('flow_run_id', train_flow(config).flow_run_id)\n"
    )
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PREFECT_API_URL": prefect_api_url,
        "DASK_SCHEDULER_ADDRESS": dask_processes.address,
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Dask scheduler: {dask_processes.address} (DASK_SCHEDULER_ADDRESS, 2 workers)" in done.stderr
    flow_run_id = done.stdout.split("flow_run_id ")[1].strip()
    assert _task_names(flow_run_id, sum(local_run[1].values())) == local_run[1]
    assert json.loads((output / "metrics.json").read_text())["val_rmse"] == local_run[0]["val_rmse"]


def _kill_mid_chunk(cluster: DaskProcesses, done: threading.Event, killed: list[str]) -> None:
    """SIGKILL worker-1's process as soon as it is running a chunk task (its nanny then restarts it)."""
    with cluster.client() as client:
        victim = next(addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == "worker-1")
        pid = client.run(os.getpid, workers=[victim])[victim]
        while not done.is_set():
            busy = any(str(key).startswith("chunk") for key in client.processing(workers=[victim]).get(victim, ()))
            if busy and client.run(lambda: 1, workers=[victim], on_error="return"):  # still processing after our look?
                os.kill(pid, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.02)


def test_a_worker_killed_mid_run_changes_nothing(months_dir, prefect_api_url, dask_processes, local_run, tmp_path):
    local_metrics, local_tasks, local_output = local_run
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_mid_chunk, args=(dask_processes, done, killed), daemon=True)
    killer.start()
    try:
        # one row group per chunk: 12 chunk tasks, so chunks are in flight on both workers
        metrics = _train(_config(months_dir, tmp_path / "killed", chunk_rows=10_000), ClusterSpec(address=dask_processes.address))
    finally:
        done.set()
        killer.join(timeout=30)
    assert killed, "the worker was not killed while the flow ran"
    # the same model as an undisturbed run, to the last bit (statistics add up alike for any chunking)
    assert {k: metrics[k] for k in _SAME} == {k: local_metrics[k] for k in _SAME}
    assert metrics["cv"]["by_alpha"] == local_metrics["cv"]["by_alpha"]
    calm, hit = _weights(local_output), _weights(tmp_path / "killed")
    assert calm.keys() == hit.keys() and all(np.array_equal(calm[k], hit[k]) for k in calm)
    # the chunks lost with the worker were recomputed; every task run ends Completed in the flow's API
    # (CV runs one task per worker slot: fewer while the killed worker restarts)
    expected = local_tasks + Counter({"chunk-stats": 12 - local_tasks["chunk-stats"]})
    seen = _task_names(metrics["flow_run_id"], sum(expected.values()) - expected["cv-kfold"] + 1)
    assert 1 <= seen.pop("cv-kfold") <= expected.pop("cv-kfold")
    assert seen == expected

    # the restarted worker joined later and was pointed at the flow's API too
    with dask_processes.client() as client:
        client.wait_for_workers(2, timeout=60)
        assert set(client.run(os.environ.get, "PREFECT_API_URL").values()) == {prefect_api_url}
