"""MLflow tracking: real runs logged to a SQLite MLflow store in a temp folder, read back with ``MlflowClient``."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cluster import ClusterSpec
from pipeline.core.config import TrainConfig
from pipeline.edge import tracking
from pipeline.errors import PipelineError
from pipeline.flows.retrain import retrain_flow

pytestmark = pytest.mark.slow


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
    return [
        "train",
        "--source",
        str(months_dir),
        "--train-months",
        "2023-01:2023-02",
        "--val-month",
        "2023-03",
        "--output",
        str(output),
        *extra,
    ]


@pytest.fixture(scope="module")
def cli_run(months_dir: Path, prefect_api_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict[str, Any], Path]:
    """``taxi-pipeline train --mlflow`` (3 folds × 2 alphas) into a fresh SQLite store: its client, MLflow run, metrics.json, output."""
    from mlflow import MlflowClient

    from pipeline import cli

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    # with a database store the default artifact root is ./mlruns of the current folder: keep it in the temp folder
    experiment = client.create_experiment("trips", artifact_location=(folder / "artifacts").as_uri())
    output = folder / "run"
    args = _train_args(months_dir, output, "--folds", "3", "--alphas", "0.1,10", "--chunk-rows", "20000", "--n-workers", "2")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sys, "argv", ["taxi-pipeline", *args, "--mlflow", "--mlflow-uri", uri, "--mlflow-experiment", "trips"])
        cli.main()
    (run,) = client.search_runs([experiment])
    return client, run, json.loads((output / "metrics.json").read_text()), output


def test_parameters_are_the_config_and_what_cv_chose(cli_run, months_dir):
    _, run, metrics, _ = cli_run
    assert run.data.params == {
        "source": str(months_dir),
        "taxi": "yellow",
        "train_months": "2023-01,2023-02",
        "val_month": "2023-03",
        "alphas": "0.1,10.0",
        "folds": "3",
        "cv": "kfold",
        "seed": "0",
        "model": "linear",
        "numeric": "",
        "candidates": "",
        "chunk_rows": "20000",
        "cache": "True",
        "chosen_alpha": str(metrics["cv"]["chosen_alpha"]),
        "chosen_features": "base",
    }
    assert run.info.status == "FINISHED" and run.info.run_name == "linear: trained on 2023-01, 2023-02, validated on 2023-03"


def test_metrics_are_those_of_metrics_json_and_cv_has_a_point_per_fold(cli_run):
    client, run, metrics, _ = cli_run
    logged = run.data.metrics
    for key in ("train_rmse", "val_rmse", "train_rows", "val_rows", "seconds", "rows_per_second"):
        assert logged[key] == metrics[key], key
    assert "champion_val_rmse" not in logged
    for summary in metrics["cv"]["by_alpha"]:
        assert logged[f"cv_mean_rmse_alpha_{summary['alpha']:g}"] == summary["mean_rmse"]
    for alpha in (0.1, 10.0):
        history = client.get_metric_history(run.info.run_id, f"cv_rmse_alpha_{alpha:g}")
        expected = [(s["fold"], s["rmse"]) for s in metrics["cv"]["scores"] if s["alpha"] == alpha]
        assert sorted((m.step, m.value) for m in history) == expected
        assert [step for step, _ in expected] == [0, 1, 2]


def test_model_files_and_metrics_are_artifacts_and_tags_link_the_flow_run(cli_run, prefect_api_url):
    client, run, metrics, output = cli_run
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"model.json", "model.npz", "metrics.json", "train_counts.npz"}
    downloaded = Path(client.download_artifacts(run.info.run_id, "metrics.json"))
    assert downloaded.read_bytes() == (output / "metrics.json").read_bytes()
    flow_run_id = metrics["flow_run_id"]
    assert run.data.tags[tracking.FLOW_RUN_TAG] == flow_run_id
    assert run.data.tags[tracking.FLOW_RUN_URL_TAG] == f"{prefect_api_url.removesuffix('/api')}/runs/flow-run/{flow_run_id}"


def test_a_retraining_run_logs_its_decision(months_dir, prefect_api_url, tmp_path, caplog):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("retrain", artifact_location=(tmp_path / "artifacts").as_uri())
    result = retrain_flow(
        source=str(months_dir),
        registry=str(tmp_path / "registry"),
        as_of=date(2023, 4, 20),
        alphas=(0.1,),
        folds=2,
        cluster=ClusterSpec(n_workers=2, dashboard_address=":0"),
        mlflow=True,
        mlflow_uri=uri,
        mlflow_experiment="retrain",
    )
    (run,) = client.search_runs([experiment])
    decision = {k.removeprefix("decision."): v for k, v in run.data.tags.items() if k.startswith("decision.")}
    assert decision == {
        "action": "promote",
        "version": result.version,
        "champion_after": result.version,
        "challenger_rmse": str(result.run.val_rmse),
        "val_month": "2023-03",
        "reason": "first version",
        "time": result.decision.time,
    }
    assert run.data.tags[tracking.FLOW_RUN_TAG] == result.run.flow_run_id
    # candidates compared: one CV history per feature set, named so MLflow takes them
    assert run.data.metrics["cv_rmse_features_base_alpha_0.1"] > run.data.metrics["cv_rmse_features_trip_distance_alpha_0.1"]
    assert run.data.params["candidates"] == "base;trip_distance"
    assert f"decision added to MLflow run {run.info.run_id} at {uri}" in caplog.text


def test_missing_extra_is_one_line_before_anything_starts(monkeypatch, capsys, months_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets without the extra
    output = tmp_path / "run"
    code, _, err = _main(monkeypatch, capsys, *_train_args(months_dir, output), "--mlflow", "--mlflow-uri", f"sqlite:///{tmp_path}/m.db")
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


def test_the_uri_from_the_environment_is_used_and_printed_without_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:s3cret@mlflow.example.com:5000/x")
    assert tracking.check(None) == "https://ann:s3cret@mlflow.example.com:5000/x"
    assert tracking.check("sqlite:///given.db") == "sqlite:///given.db"
    assert tracking.redact("https://ann:s3cret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert tracking.redact("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
    with pytest.raises(PipelineError, match="holds a password"):
        TrainConfig(train_months="2023-01", val_month="2023-02", output=Path("o"), mlflow=True, mlflow_uri="http://a:b@h")
