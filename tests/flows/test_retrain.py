"""Retraining: months probed at the source, candidates from one read, the champion scored exactly, the registry's decisions."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cli.common import flag_names
from pipeline.cluster import ClusterSpec
from pipeline.core.config import ConfigError, RetrainConfig
from pipeline.core.months import Month, parse_months
from pipeline.edge import seed
from pipeline.edge.model_files import load_model
from pipeline.edge.registry import Registry
from pipeline.edge.sources import latest_month, month_filename
from pipeline.errors import PipelineError
from pipeline.flows.retrain import retrain_flow
from pipeline.runtime.testing import served_deployment
from tests.conftest import read_task_runs

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

#: The session's months are 2023-01..03: as of any day in April or later, March is the newest published.
AS_OF = date(2023, 4, 20)


def _retrain(months_dir: Path, registry: Path, cluster: ClusterSpec | None = None, **fields: Any) -> Any:
    fields.setdefault("as_of", AS_OF)
    fields.setdefault("boosted", False)  # the linear path's decisions; the boosted challenger: tests/flows/test_real_months_end_to_end.py
    config = RetrainConfig(source=str(months_dir), registry=str(registry), **fields)
    return retrain_flow(config, cluster or ClusterSpec(n_workers=2, dashboard_address=":0"))


def _rmse_from_rows(model_dir: Path, months_dir: Path, month: Month, clipped: bool = True) -> float:
    """The independent reference: the seed's pandas reading of the month, and the saved model's predict on it (``clipped``
    False: the exact linear model's, which statistics score, before predictions are clipped to the training window)."""
    model = load_model(model_dir)
    if not clipped:
        model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, min_minutes=-np.inf, max_minutes=np.inf))
    frame = seed.read_dataframe(months_dir / month_filename("yellow", month)).astype({"PULocationID": int, "DOLocationID": int})
    return float(np.sqrt(np.mean((model.predict(frame) - frame["duration"].to_numpy()) ** 2)))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


def test_newest_published_month_is_probed_not_assumed(months_dir):
    assert latest_month(str(months_dir), "yellow", Month(2023, 6)) == Month(2023, 3)
    assert latest_month(str(months_dir), "yellow", Month(2023, 2)) == Month(2023, 2)
    with pytest.raises(PipelineError, match=r"no yellow month published at .* from 2020-11 to 2022-10"):
        latest_month(str(months_dir), "yellow", Month(2022, 10))


def test_champion_and_challenger_are_compared_exactly_on_the_new_month(months_dir, prefect_api_url, tmp_path):
    registry = tmp_path / "registry"
    first = _retrain(months_dir, registry)
    assert (first.version, first.decision.action, first.decision.reason) == ("v0001", "promote", "first version")
    assert [str(m) for m in first.run.train_months] == ["2023-01", "2023-02"] and str(first.run.val_month) == "2023-03"

    # candidates x alphas x folds from one read: every candidate is in the CV, each chunk was read once
    report = first.run.cv
    zones = ("PULocationID", "DOLocationID", "PU_DO")
    binned = (*zones, "trip_distance:log48", "hour_of_week")
    assert {s.features for s in report.scores} == {zones, binned} and len(report.scores) == 2 * 5 * 5
    assert first.run.features == report.chosen_features == binned  # it beats the zones alone here
    read = [
        month
        for r in read_task_runs(first.run.flow_run_id, expected=0, timeout=0)
        if r.name.startswith("chunk-stats ")
        for month in parse_months(r.name.split(" ")[1])
    ]
    assert len(read) == len(set(read))  # each month read at most once (not at all if cached) for every candidate, alpha and fold

    # a deliberately worse challenger (a huge penalty, zones only) is kept out; the champion is scored exactly
    worse = _retrain(months_dir, registry, alphas=(1e5,), candidates=((),))
    decision = worse.decision
    assert (worse.version, decision.action, decision.champion_after) == ("v0002", "keep", "v0001")
    assert decision.challenger_rmse == worse.run.val_rmse > decision.champion_rmse
    reference = _rmse_from_rows(registry / "versions" / "v0001", months_dir, Month(2023, 3), clipped=False)
    assert decision.champion_rmse == pytest.approx(reference, rel=1e-9)  # from statistics, no second read
    assert _rmse_from_rows(registry / "versions" / "v0001", months_dir, Month(2023, 3)) <= reference  # clipping only helps
    assert decision.champion_rmse == pytest.approx(first.run.val_rmse, rel=1e-9)
    store = Registry.open(registry)
    assert store.champion().name == "v0001" and [v.name for v in store.versions()] == ["v0001", "v0002"]

    # the CLI reads the registry: list (the champion marked), show; then a manual promotion and a rollback
    listed = _cli("models", "list", "--registry", str(registry), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["version"], r["champion"], r["val_month"]) for r in rows] == [("v0001", True, "2023-03"), ("v0002", False, "2023-03")]
    assert [r["val_rmse"] for r in rows] == [first.run.val_rmse, worse.run.val_rmse]
    assert "champion v0001" in _cli("models", "list", "--registry", str(registry)).stdout
    shown = _cli("models", "show", "v0002", "--registry", str(registry))
    assert "keep v0002" in shown.stdout and f"{worse.run.val_rmse:.4f}" in shown.stdout
    promoted = _cli("models", "promote", "v0002", "--registry", str(registry))
    assert promoted.returncode == 0 and "manual-promote v0002" in promoted.stdout and store.champion().name == "v0002"
    rolled = _cli("models", "rollback", "--registry", str(registry))
    assert rolled.returncode == 0 and "champion now v0001" in rolled.stdout and store.champion().name == "v0001"
    assert [d.action for d in store.history()] == ["promote", "keep", "manual-promote", "rollback"]


def test_two_retrains_at_once_give_two_whole_versions_and_one_champion(months_dir, prefect_api_url, tmp_path):
    registry = tmp_path / "registry"
    args = [
        "retrain",
        "--source",
        str(months_dir),
        "--registry",
        str(registry),
        "--as-of",
        "2023-04-20",
        "--n-workers",
        "1",
        "--folds",
        "2",
        "--alphas",
        "1",
    ]
    runs = [
        subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    store = Registry.open(registry)
    versions = store.versions()
    assert [v.name for v in versions] == ["v0001", "v0002"]
    for version in versions:
        assert sorted(p.name for p in version.path.iterdir()) == [
            "metrics.json",
            "model.json",
            "model.npz",
            "train_counts.npz",
            "version.json",
        ]
        assert json.loads((version.path / "metrics.json").read_text())["val_month"] == "2023-03"
        load_model(version.path)
    history = store.history()
    assert [d.version for d in history] == ["v0001", "v0002"] and history[0].action == "promote"
    assert history[1].champion_before == "v0001" and store.champion().name == history[1].champion_after
    assert not list((registry / ".staging").iterdir())


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_an_identical_retrain_ties_and_keeps_the_champion(months_dir, prefect_api_url, tmp_path):
    registry = tmp_path / "registry"
    same = {"folds": 0, "alphas": (1.0,), "candidates": ((),), "cluster": ClusterSpec(n_workers=1, dashboard_address=":0")}
    first, again = _retrain(months_dir, registry, **same), _retrain(months_dir, registry, **same)
    assert (again.version, again.decision.action, again.decision.champion_after) == ("v0002", "keep", "v0001")
    assert again.decision.reason.startswith("kept the champion v0001: the challenger ties it on 2023-03")
    assert again.run.val_rmse == pytest.approx(first.run.val_rmse, rel=1e-12)
    assert Registry.open(registry).champion().name == "v0001"  # type: ignore[union-attr]


def test_bad_input_is_one_line_and_leaves_the_registry_unchanged(months_dir, tmp_path):
    registry = tmp_path / "registry"
    Registry.open(registry, create=True)
    before = sorted(p.name for p in registry.rglob("*"))
    not_a_registry = tmp_path / "plain"
    not_a_registry.mkdir()
    (not_a_registry / "notes.txt").write_text("hello")
    retrain = ["retrain", "--source", str(months_dir), "--n-workers", "1"]
    assert "not a model registry" in _one_error_line(_cli(*retrain, "--registry", str(not_a_registry), "--as-of", "2023-04-01"))
    line = _one_error_line(_cli(*retrain, "--registry", str(registry), "--as-of", "2022-06-01"))
    assert "no yellow month published" in line and "2022-06" in line
    assert "--as-of" in _one_error_line(_cli(*retrain, "--registry", str(registry), "--as-of", "April"))
    missing = _one_error_line(
        _cli(*retrain, "--registry", str(tmp_path / "elsewhere"), "--as-of", "2023-04-01", "--source", str(tmp_path / "nothing-here"))
    )
    assert "source folder does not exist" in missing
    assert "no version v0042" in _one_error_line(_cli("models", "show", "v0042", "--registry", str(registry)))
    assert "nothing to roll back to" in _one_error_line(_cli("models", "rollback", "--registry", str(registry)))
    cron = _one_error_line(_cli("deploy", "--source", str(months_dir), "--registry", str(registry), "--cron", "61 * * * *"))
    assert "--cron '61 * * * *'" in cron and "invalid cron string" in cron.lower() and "pydantic.dev" not in cron
    deploy = ["deploy", "--source", str(months_dir), "--registry", str(registry)]
    for schedule in ([], ["--cron", "0 6 3 * *", "--interval", "60"]):
        line = _one_error_line(_cli(*deploy, *schedule))
        assert line == "error: deploy needs exactly one schedule: --cron STRING or --interval SECONDS", line
    assert "--interval" in _cli(*deploy, "--interval", "0").stderr  # click's range check: at least 1 s
    assert sorted(p.name for p in registry.rglob("*")) == before


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


def test_a_failed_run_posts_its_error_line_to_the_webhook_and_never_logs_the_url(months_dir, prefect_api_url, tmp_path):
    import http.server
    import threading

    received: list[dict[str, Any]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/T000/SECRET-PART"
    try:
        # a window of 3 months before 2023-03 needs 2022-12, which the source does not have: the run fails
        failed = _cli(
            "retrain",
            "--source",
            str(months_dir),
            "--registry",
            str(tmp_path / "registry"),
            "--as-of",
            "2023-04-20",
            "--window",
            "3",
            "--n-workers",
            "1",
            "--folds",
            "0",
            "--alphas",
            "1",
            "--candidates",
            "base",
            "--notify-url",
            url,
        )
    finally:
        server.shutdown()
        server.server_close()
    line = _one_error_line(failed)
    assert "month 2022-12" in line and "file not found" in line
    assert len(received) == 1
    text = received[0]["text"]
    assert "failed" in text and "month 2022-12" in text and "/runs/flow-run/" in text
    assert "SECRET-PART" not in failed.stderr + failed.stdout
    assert Registry.open(tmp_path / "registry").versions() == []  # nothing registered


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
    with served_deployment(tmp_path / "served", "soak", args, env) as served, SyncPrefectClient(prefect_server.url) as client:
        (schedule,) = client.read_deployment_by_name("retrain-trip-duration/soak").schedules
        assert schedule.schedule.interval.total_seconds() == 2
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


def test_a_gradient_boosting_challenger_is_registered_with_skops_and_compared_on_rows(months_dir, prefect_api_url, tmp_path):
    registry = tmp_path / "registry"
    _retrain(months_dir, registry, folds=0, alphas=(1.0,), candidates=((),))
    trees = _retrain(months_dir, registry, model="hist_gradient_boosting", folds=0, candidates=((),), max_rows=20_000)
    assert trees.version == "v0002" and (registry / "versions" / "v0002" / "model.skops").exists()
    reference = _rmse_from_rows(registry / "versions" / "v0001", months_dir, Month(2023, 3))
    assert trees.decision.champion_rmse == pytest.approx(reference, rel=1e-9)  # the linear champion, on the same month
    assert trees.decision.action == ("promote" if trees.run.val_rmse < reference else "keep")


@pytest.mark.parametrize(("model", "folds"), [("sgd", 5), ("linear", 0)])
def test_the_default_candidates_fall_back_to_the_seeds_features_where_they_cannot_be_compared(model, folds, tmp_path):
    settings = {"source": "s", "alphas": (0.1, 1.0) if folds else (0.1,), "folds": folds, "model": model, "chunk_rows": 1000}
    config = RetrainConfig(**settings).train_config([Month(2023, 1)], Month(2023, 2), tmp_path)
    assert config.candidates == () and config.numeric == ()
    assert config.alphas == (0.1,)  # a row-fitted model has no alpha grid; without CV one alpha is given
    with pytest.raises(ConfigError) as caught:
        RetrainConfig.build(**settings, candidates=((), ("trip_distance",), ("fare_amount",)))
    assert caught.value.render(flag_names(RetrainConfig)).startswith("--candidates: comparing feature sets needs --model linear")
