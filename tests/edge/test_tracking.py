"""MLflow tracking: real runs logged to a SQLite MLflow store in a temp folder, read back with ``MlflowClient``."""

from __future__ import annotations

import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import TrainConfig
from pipeline.edge import tracking
from pipeline.errors import PipelineError
from tests.conftest import DaskProcesses

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process (MLflow and Prefect are imported once per session): exit code, stdout, stderr."""
    from pipeline import cli

    monkeypatch.setattr(sys, "argv", ["taxi-pipeline", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _train_args(months_dir: Path, output: Path, *extra: str) -> list[str]:
    months = ["--train-months", "2023-01:2023-02", "--val-month", "2023-03"]
    return ["train", "--source", str(months_dir), *months, "--output", str(output), *extra]


class _Lines(logging.Handler):
    """Messages of flow run loggers while attached."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def retrain_run(
    months_dir: Path, prefect_api_url: str, one_worker: DaskProcesses, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """``taxi-pipeline retrain --mlflow`` (2 candidates × 2 alphas × 3 folds) into a fresh SQLite store, read back."""
    import prefect.main  # noqa: F401  (its first import configures Prefect's logging, replacing its loggers' handlers)
    from mlflow import MlflowClient

    from pipeline import cli

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # with a database store the default artifact root is ./mlruns of the current folder: keep it in the temp folder
    experiment = client.create_experiment("trips", artifact_location=(folder / "artifacts").as_uri())
    registry = folder / "registry"
    args = ["retrain", "--source", str(months_dir), "--registry", str(registry), "--as-of", "2023-04-20", "--folds", "3"]
    args += ["--alphas", "0.1,10", "--mlflow", "--mlflow-uri", uri, "--mlflow-experiment", "trips", "--no-boosted"]
    args += ["--scheduler", one_worker.address]  # the session's one worker: MLflow's record, not the cluster, is under test
    logged = _Lines()
    logging.getLogger("prefect.flow_runs").addHandler(logged)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(sys, "argv", ["taxi-pipeline", *args])
            cli.main()
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(logged)
    (run,) = client.search_runs([experiment])
    version = registry / "versions" / "v0001"
    return {
        "uri": uri,
        "client": client,
        "run": run,
        "metrics": json.loads((version / "metrics.json").read_text()),
        "version": version,
        "decision": json.loads((registry / "history.jsonl").read_text().splitlines()[0]),
        "log": logged.lines,
    }


def test_parameters_are_the_config_and_what_cv_chose(retrain_run, months_dir):
    run, metrics = retrain_run["run"], retrain_run["metrics"]
    assert run.data.params == {
        "source": str(months_dir.resolve()),
        "taxi": "yellow",
        "train_months": "2023-01,2023-02",
        "val_month": "2023-03",
        "alphas": "0.1,10.0",
        "folds": "3",
        "cv": "kfold",
        "seed": "0",
        "model": "linear",
        "features": "PULocationID,DOLocationID,PU_DO",
        "candidates": "base;trip_distance:log48+hour_of_week",
        "boosted_challenger": "False",
        "xgb_rounds": "100",
        "chunk_rows": "4000000",
        "cache": "True",
        "chosen_alpha": str(metrics["cv"]["chosen_alpha"]),
        "chosen_features": "zones + trip_distance:log48 + hour_of_week",
    }
    assert run.info.status == "FINISHED" and run.info.run_name == "linear: trained on 2023-01, 2023-02, validated on 2023-03"


def test_unset_lists_are_left_out_of_the_parameters():
    from types import SimpleNamespace
    from typing import cast

    from pipeline.core.results import RunResult

    config = TrainConfig.build(train_months="2023-01:2023-02", val_month="2023-03", output="out", source="data")
    result = cast(RunResult, SimpleNamespace(alpha=1.0, terms=config.model_terms()))
    logged = tracking.params(config, result)
    assert "numeric" not in logged and "candidates" not in logged
    assert logged["alphas"] and "" not in logged.values()


def test_metrics_are_those_of_metrics_json_and_cv_has_a_point_per_fold(retrain_run):
    client, run, metrics = retrain_run["client"], retrain_run["run"], retrain_run["metrics"]
    logged = run.data.metrics
    for key in ("train_rmse", "val_rmse", "train_rows", "val_rows", "seconds", "rows_per_second"):
        assert logged[key] == metrics[key], key
    assert "champion_val_rmse" not in logged  # the first version has no champion to beat
    for summary in metrics["cv"]["by_alpha"]:
        key = tracking.metric_key("cv_mean_rmse", tuple(summary["features"]), summary["alpha"])
        assert logged[key] == summary["mean_rmse"]
    histories = 0
    zones = ("PULocationID", "DOLocationID", "PU_DO")
    for features, alpha in itertools.product((zones, (*zones, "trip_distance:log48", "hour_of_week")), (0.1, 10.0)):
        history = client.get_metric_history(run.info.run_id, tracking.metric_key("cv_rmse", features, alpha))
        expected = [(s["fold"], s["rmse"]) for s in metrics["cv"]["scores"] if s["alpha"] == alpha and tuple(s["features"]) == features]
        assert sorted((m.step, m.value) for m in history) == expected
        assert [step for step, _ in expected] == [0, 1, 2]
        histories += 1
    assert histories * 3 == len(metrics["cv"]["scores"]) == 12


def test_the_month_files_are_the_runs_dataset_inputs_and_in_metrics_json(retrain_run, months_dir):
    """Lineage: each month file by location, size and identity, with its statistics cache keys, in metrics.json and MLflow."""
    inputs = retrain_run["metrics"]["inputs"]
    assert [(i["role"], i["month"]) for i in inputs] == [("train", "2023-01"), ("train", "2023-02"), ("validation", "2023-03")]
    for item in inputs:
        path = months_dir / f"yellow_tripdata_{item['month']}.parquet"
        assert item["location"] == str(path.resolve()) and item["size"] == path.stat().st_size
        assert item["identity"] and len(item["stats_keys"]) >= 1 and all(len(k) == 64 for k in item["stats_keys"])
    logged = retrain_run["client"].get_run(retrain_run["run"].info.run_id).inputs.dataset_inputs
    by_name = {d.dataset.name: d for d in logged}
    assert sorted(by_name) == ["yellow 2023-01", "yellow 2023-02", "yellow 2023-03"]
    assert [t.value for t in by_name["yellow 2023-03"].tags if t.key == "mlflow.data.context"] == ["validation"]
    assert json.loads(by_name["yellow 2023-01"].dataset.source)["identity"] == inputs[0]["identity"]


def test_model_files_and_metrics_are_artifacts_and_tags_link_the_flow_run(retrain_run, prefect_api_url):
    client, run, metrics = retrain_run["client"], retrain_run["run"], retrain_run["metrics"]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"model.json", "model.npz", "metrics.json", "train_counts.npz"}
    downloaded = Path(client.download_artifacts(run.info.run_id, "metrics.json"))
    assert downloaded.read_bytes() == (retrain_run["version"] / "metrics.json").read_bytes()
    flow_run_id = metrics["flow_run_id"]
    assert run.data.tags[tracking.FLOW_RUN_TAG] == flow_run_id
    assert run.data.tags[tracking.FLOW_RUN_URL_TAG] == f"{prefect_api_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}"
    assert f"MLflow run {run.info.run_id} in experiment 'trips' at {retrain_run['uri']}" in retrain_run["log"]


def test_a_retraining_run_adds_its_decision(retrain_run):
    run, recorded = retrain_run["run"], retrain_run["decision"]
    decision = {k.removeprefix("decision."): v for k, v in run.data.tags.items() if k.startswith("decision.")}
    assert decision == {k: str(v) for k, v in recorded.items() if v is not None}
    assert (decision["action"], decision["version"], decision["reason"]) == ("promote", "v0001", "first version")
    assert decision["challenger_rmse"] == str(retrain_run["metrics"]["val_rmse"])
    assert f"decision added to MLflow run {run.info.run_id} at {retrain_run['uri']}" in retrain_run["log"]


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_missing_extra_is_one_line_before_anything_starts(command, monkeypatch, capsys, months_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets without the extra
    if command == "train":
        args = _train_args(months_dir, tmp_path / "run")
    else:
        args = ["retrain", "--source", str(months_dir), "--registry", str(tmp_path / "registry"), "--as-of", "2023-04-20"]
    code, _, err = _main(monkeypatch, capsys, *args, "--mlflow", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db")
    assert (code, err) == (2, "error: --mlflow needs MLflow: pip install 'taxi-pipeline[mlflow]'\n")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--mlflow"], {}, "--mlflow: no tracking URI: give --mlflow-uri or set MLFLOW_TRACKING_URI (e.g. sqlite:///mlflow.db)"),
        (
            ["--mlflow-uri", "sqlite:///m.db"],
            {"MLFLOW_TRACKING_URI": "sqlite:///n.db"},
            "--mlflow-uri given without --mlflow: add --mlflow to track the run",
        ),
        (
            ["--mlflow", "--mlflow-uri", "https://ann:s3cret@mlflow.example.com"],
            {},
            "--mlflow-uri: holds a password, and run parameters are stored and shown by Prefect; "
            "set MLFLOW_TRACKING_URI, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, instead",
        ),
    ],
)
def test_bad_tracking_flags_are_one_line(flags, env, message, monkeypatch, capsys, months_dir, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = _main(monkeypatch, capsys, *_train_args(months_dir, tmp_path / "run"), *flags)
    assert (code, err) == (2, f"error: {message}\n")
    assert "s3cret" not in err and sorted(tmp_path.iterdir()) == []


def test_importing_tracking_loads_no_mlflow_and_no_orchestration():
    from tests.test_layers import _ORCHESTRATION, _loaded_after

    assert _loaded_after("pipeline.edge.tracking").isdisjoint({"mlflow", *_ORCHESTRATION})  # MLflow loads when a run asks for it


def test_the_uri_from_the_environment_is_used_and_printed_without_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:s3cret@mlflow.example.com:5000/x")
    assert tracking.check(None) == "https://ann:s3cret@mlflow.example.com:5000/x"
    assert tracking.check("sqlite:///given.db") == "sqlite:///given.db"
    assert tracking.redact("https://ann:s3cret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert tracking.redact("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    with pytest.raises(PipelineError, match="holds a password"):
        TrainConfig(train_months="2023-01", val_month="2023-02", output=Path("o"), mlflow=True, mlflow_uri="http://a:b@h")


def test_an_unreachable_store_is_one_line_without_the_password(monkeypatch, tmp_path):
    import socket

    from pipeline.core.months import Month
    from pipeline.core.results import RunResult

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = RunResult("linear", "yellow", (Month(2023, 1),), Month(2023, 2), 0.1, (), 10, 5, 6.0, 6.5, 1.0, "flow-run")
    config = TrainConfig(train_months="2023-01", val_month="2023-02", output=tmp_path, mlflow=True)
    with pytest.raises(PipelineError) as raised:
        tracking.log_training(f"http://ann:s3cret@127.0.0.1:{port}", "trips", config, result, {}, {})
    message = str(raised.value)
    assert message.startswith(f"MLflow at http://127.0.0.1:{port}: ") and "\n" not in message
    assert "s3cret" not in message and "ann" not in message


def test_a_tracked_run_prints_no_dask_shutdown_warnings(months_dir, prefect_api_url, tmp_path):
    """``train --mlflow`` in its own process, as a user runs it: its terminal carries the run's lines, no ``distributed.``
    warnings of workers or nannies closing (MLflow loads and logs in the flow process while the cluster is up)."""
    import subprocess

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = _train_args(
        months_dir, tmp_path / "run", "--folds", "3", "--alphas", "0.1,10", "--n-workers", "2", "--mlflow", "--mlflow-uri", uri
    )
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "MLflow run " in output and "model and metrics in" in output
    assert [line for line in output.splitlines() if "distributed." in line or "Traceback" in line] == []
