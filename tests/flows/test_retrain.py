"""Retraining: months probed at the source, deployments served on a schedule and on a work pool, their parameters checked.

What a run decides (candidates from one read, the champion scored exactly, the registry's versions):
tests/flows/test_retrain_decisions.py, a file of its own so that ``--dist loadfile`` runs the two side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import ConfigError
from pipeline.core.months import Month
from pipeline.edge.registry import Registry
from pipeline.edge.sources import latest_month, month_filename
from pipeline.errors import PipelineError
from pipeline.flows.retrain import retrain_flow
from pipeline.runtime.testing import served_deployment

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: The session's months are 2023-01..03: as of any day in April or later, March is the newest published.
AS_OF = date(2023, 4, 20)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def test_newest_published_month_is_probed_not_assumed(months_dir):
    assert latest_month(str(months_dir), "yellow", Month(2023, 6)) == Month(2023, 3)
    assert latest_month(str(months_dir), "yellow", Month(2023, 2)) == Month(2023, 2)
    with pytest.raises(PipelineError, match=r"no yellow month published at .* from 2020-11 to 2022-10"):
        latest_month(str(months_dir), "yellow", Month(2022, 10))


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_broken_config_parameter_fails_the_run_before_any_work(prefect_api_url, tmp_path):
    """A deployment's run calls the flow with its stored parameters: Prefect builds the RetrainConfig as the run starts,
    and a broken rule fails it there, with the ConfigError's one line (field names: there are no flags)."""
    registry = tmp_path / "registry"
    state = retrain_flow(config={"registry": str(registry), "folds": 1}, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=r"^folds 1: one fold cannot cross-validate"):
        state.result()
    assert not registry.exists()


def test_prefect_yaml_and_deploy_name_distinct_deployments():
    import yaml

    from pipeline.cli.models import deploy

    (default,) = [p.default for p in deploy.params if p.name == "name"]
    declared = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())["deployments"]
    assert default not in [d["name"] for d in declared]


def test_deploy_refuses_the_name_of_a_deployment_on_a_work_pool(months_dir, prefect_api_url, tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate

    with SyncPrefectClient(prefect_api_url) as client:
        client.create_work_pool(WorkPoolCreate(name="refusal-pool", type="process"), overwrite=True)
        flow_id = client.create_flow_from_name("retrain-trip-duration")
        client.create_deployment(flow_id=flow_id, name="pooled", work_pool_name="refusal-pool", entrypoint="x.py:f")
    args = ["deploy", "--source", str(months_dir), "--registry", str(tmp_path / "registry"), "--cron", "0 6 3 * *", "--name", "pooled"]
    line = _one_error_line(_cli(*args, env={"PREFECT_API_URL": prefect_api_url}))
    assert "retrain-trip-duration/pooled is already deployed on work pool 'refusal-pool'" in line and "--name" in line


def test_the_scheduled_deployment_is_served_its_runs_report_in_its_terminal_and_sigterm_stops_it(months_dir, prefect_server, tmp_path):
    """A triggered run registers a version; a failed one prints its error line where the deployment is served (a
    scheduled run has no CLI of its own to print it); SIGTERM stops serving with exit code 0 and no warning."""
    import time

    from prefect.client.orchestration import SyncPrefectClient

    registry = tmp_path / "registry"
    env = {**prefect_server.env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    args = ["--source", str(months_dir), "--registry", str(registry), "--cron", "0 6 3 * *"]
    args += ["--folds", "0", "--alphas", "1", "--candidates", "base"]

    def run(client: SyncPrefectClient, deployment: Any, **params: Any) -> Any:
        """``prefect deployment run`` with ``params``; the flow run once it has ended."""
        prefect = str(Path(sys.executable).with_name("prefect"))
        command = [prefect, "deployment", "run", "retrain-trip-duration/monthly", "-p", 'cluster={"n_workers": 1}']
        # a run's parameters replace the deployment's whole: the config is given whole, with this run's changes
        command += ["-p", "config=" + json.dumps({**deployment.parameters["config"], "as_of": "2023-04-20", **params})]
        triggered = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert triggered.returncode == 0, triggered.stderr
        flow_run_id = triggered.stdout.split("/runs/flow-run/")[1].split()[0]
        deadline = time.monotonic() + 180
        while not (flow_run := client.read_flow_run(flow_run_id)).state.is_final():
            assert time.monotonic() < deadline and served.process.poll() is None, "the triggered run did not finish"
            time.sleep(1)
        assert flow_run.deployment_id == deployment.id
        return flow_run

    with served_deployment(tmp_path / "served", "monthly", args, env) as served, SyncPrefectClient(prefect_server.url) as client:
        deployment = client.read_deployment_by_name("retrain-trip-duration/monthly")
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "0 6 3 * *" and schedule.active
        assert deployment.parameters["config"]["registry"] == str(registry)
        failed = run(client, deployment, window=3)  # 2022-12 is not at the source
        assert failed.state.is_failed()
        done = run(client, deployment)
        assert done.state.is_completed(), done.state.message
        code = served.stop()
    output = served.output
    error = f"Flow run '{failed.name}' - error: month 2022-12: file not found: {months_dir / 'yellow_tripdata_2022-12.parquet'}"
    assert [line.split("| ")[-1] for line in output.splitlines() if "error:" in line] == [error], output
    assert code == 0, output
    assert "stopped by SIGTERM: retrain-trip-duration/monthly is no longer served" in output
    assert "never awaited" not in output and "Traceback" not in output, output
    store = Registry.open(registry)
    assert [v.name for v in store.versions()] == ["v0001"] and store.champion().name == "v0001"


def test_a_deployment_served_on_an_interval_completes_every_run_and_does_not_grow(recent_months, prefect_server, tmp_path):
    """Issue 22, case 7 in small (the 10-minute soak is ``benchmarks/test_soak.py``): runs back to back, each completed;
    from the second run on, the serving process's memory stays within a bound and its open files and temporary files
    do not grow."""
    from prefect.client.orchestration import SyncPrefectClient

    registry = tmp_path / "registry"
    env = {**prefect_server.env, "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_RUNNER_POLL_FREQUENCY": "3"}
    args = ["--source", str(recent_months), "--registry", str(registry), "--interval", "2", "--no-boosted", "--folds", "2"]
    args += ["--n-workers", "1"]  # each run still starts (and must stop) its own LocalCluster
    with served_deployment(tmp_path / "served", "soak", args, env) as served, SyncPrefectClient(prefect_server.url) as client:
        deployment = client.read_deployment_by_name("retrain-trip-duration/soak")
        (schedule,) = deployment.schedules
        assert schedule.schedule.interval.total_seconds() == 2
        assert deployment.parameters["cluster"] == {"n_workers": 1}
        samples = served.samples(client, runs=4, timeout=600)
        served.drain(client, timeout=300)
        code = served.stop()
        ended = [r for r in served.flow_runs(client) if r.state.is_final()]
    assert len(ended) >= 4 and all(r.state.is_completed() for r in ended), [r.state for r in ended]
    assert code == 0 and "Traceback" not in served.output, served.output
    assert len(Registry.open(registry).versions()) == len(ended)
    steady = [s.footprint for s in samples[1:]]  # the first run warms caches and imports
    assert len(steady) >= 2, samples
    assert steady[-1].rss_mb - steady[0].rss_mb < 40, steady
    assert steady[-1].open_files <= steady[0].open_files and steady[-1].temp_entries <= steady[0].temp_entries, steady
    assert steady[-1].processes == steady[0].processes, steady  # no run's subprocess or worker left behind


def test_prefect_yaml_deploys_onto_a_process_pool_whose_worker_runs_it(months_dir, prefect_server, tmp_path):
    import time

    root = Path(__file__).parents[2]
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {**prefect_server.env, "PREFECT_LOGGING_LEVEL": "WARNING"}

    def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([prefect, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    run("work-pool", "create", "taxi-pipeline", "--type", "process", "--overwrite")
    run("--no-prompt", "deploy", "--all")
    registry = tmp_path / "registry"
    config = {"source": str(months_dir), "registry": str(registry), "as_of": "2023-04-20", "folds": 0, "alphas": [1], "candidates": [[]]}
    params = ["-p", f"config={json.dumps(config)}", "-p", 'cluster={"n_workers": 1}']
    run("deployment", "run", "retrain-trip-duration/monthly-pool", *params)
    worker = run("worker", "start", "--pool", "taxi-pipeline", "--run-once", timeout=300)
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(prefect_server.url) as client:
        deployment = client.read_deployment_by_name("retrain-trip-duration/monthly-pool")

        def ours() -> list[Any]:  # the session's server may hold other runs of this deployment
            runs = client.read_flow_runs(limit=50)
            return [
                r for r in runs if r.deployment_id == deployment.id and (r.parameters.get("config") or {}).get("registry") == str(registry)
            ]

        deadline = time.monotonic() + 30
        while not [r for r in ours() if r.state.is_final()]:
            assert time.monotonic() < deadline, worker.stdout[-2000:]
            time.sleep(0.5)
        (finished,) = ours()
        assert finished.state.is_completed(), finished.state.message
        assert deployment.schedules[0].schedule.cron == "0 6 3 * *"
    assert [v.name for v in Registry.open(registry).versions()] == ["v0001"]
    assert month_filename("yellow", Month(2023, 3)) in os.listdir(months_dir)
