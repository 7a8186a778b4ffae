"""Retraining's decisions: candidates from one read, the champion scored exactly, the registry's versions, bad input.

Beside tests/flows/test_retrain.py (months probed, deployments served on a schedule): ``--dist loadfile`` runs the two
files side by side. Runs here start a LocalCluster of one worker: what is under test is what a run decides, which does
not depend on the workers' number (tests/flows/test_flow.py shows a run's results are the same on any). They run on the
session's scheduler of one worker (``one_worker``), not a LocalCluster each: the cluster is not under test here either.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
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
from pipeline.edge.sources import month_filename
from pipeline.flows.retrain import retrain_flow
from tests.conftest import DaskProcesses, cli_here, read_task_runs
from tests.flows.test_retrain import AS_OF, _cli, _one_error_line

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _retrain(months_dir: Path, registry: Path, cluster: DaskProcesses, **fields: Any) -> Any:
    fields.setdefault("as_of", AS_OF)
    fields.setdefault("boosted", False)  # the linear path's decisions; the boosted challenger: tests/flows/test_real_months_end_to_end.py
    config = RetrainConfig(source=str(months_dir), registry=str(registry), **fields)
    return retrain_flow(config, ClusterSpec(address=cluster.address))


def _rmse_from_rows(model_dir: Path, months_dir: Path, month: Month, clipped: bool = True) -> float:
    """The independent reference: the seed's pandas reading of the month, and the saved model's predict on it (``clipped``
    False: the exact linear model's, which statistics score, before predictions are clipped to the training window)."""
    model = load_model(model_dir)
    if not clipped:
        model = dataclasses.replace(model, spec=dataclasses.replace(model.spec, min_minutes=-np.inf, max_minutes=np.inf))
    frame = seed.read_dataframe(months_dir / month_filename("yellow", month)).astype({"PULocationID": int, "DOLocationID": int})
    return float(np.sqrt(np.mean((model.predict(frame) - frame["duration"].to_numpy()) ** 2)))


def test_champion_and_challenger_are_compared_exactly_on_the_new_month(months_dir, prefect_api_url, one_worker, tmp_path):
    registry = tmp_path / "registry"
    first = _retrain(months_dir, registry, one_worker)
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
    worse = _retrain(months_dir, registry, one_worker, alphas=(1e5,), candidates=((),))
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


def test_two_retrains_at_once_give_two_whole_versions_and_one_champion(months_dir, prefect_api_url, one_worker, tmp_path):
    registry = tmp_path / "registry"
    args = [
        "retrain",
        "--source",
        str(months_dir),
        "--registry",
        str(registry),
        "--as-of",
        "2023-04-20",
        "--scheduler",
        one_worker.address,
        "--folds",
        "2",
        "--alphas",
        "1",
        "--no-boosted",  # what is under test is the registry's writes; the boosted challenger: test_real_months_end_to_end.py
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


def test_an_identical_retrain_ties_and_keeps_the_champion(months_dir, prefect_api_url, one_worker, tmp_path):
    registry = tmp_path / "registry"
    same = {"folds": 0, "alphas": (1.0,), "candidates": ((),)}
    first, again = _retrain(months_dir, registry, one_worker, **same), _retrain(months_dir, registry, one_worker, **same)
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
    assert "not a model registry" in _one_error_line(cli_here(*retrain, "--registry", str(not_a_registry), "--as-of", "2023-04-01"))
    line = _one_error_line(cli_here(*retrain, "--registry", str(registry), "--as-of", "2022-06-01"))
    assert "no yellow month published" in line and "2022-06" in line
    assert "--as-of" in _one_error_line(cli_here(*retrain, "--registry", str(registry), "--as-of", "April"))
    missing = _one_error_line(
        cli_here(*retrain, "--registry", str(tmp_path / "elsewhere"), "--as-of", "2023-04-01", "--source", str(tmp_path / "nothing-here"))
    )
    assert "source folder does not exist" in missing
    assert "no version v0042" in _one_error_line(cli_here("models", "show", "v0042", "--registry", str(registry)))
    assert "nothing to roll back to" in _one_error_line(cli_here("models", "rollback", "--registry", str(registry)))
    cron = _one_error_line(cli_here("deploy", "--source", str(months_dir), "--registry", str(registry), "--cron", "61 * * * *"))
    assert "--cron '61 * * * *'" in cron and "invalid cron string" in cron.lower() and "pydantic.dev" not in cron
    deploy = ["deploy", "--source", str(months_dir), "--registry", str(registry)]
    for schedule in ([], ["--cron", "0 6 3 * *", "--interval", "60"]):
        line = _one_error_line(cli_here(*deploy, *schedule))
        assert line == "error: deploy needs exactly one schedule: --cron STRING or --interval SECONDS", line
    assert "--interval" in cli_here(*deploy, "--interval", "0").stderr  # click's range check: at least 1 s
    both = _one_error_line(cli_here(*deploy, "--interval", "60", "--scheduler", "tcp://127.0.0.1:9", "--n-workers", "2"))
    assert "--scheduler and --n-workers contradict" in both, both  # the cluster flags are checked before serving
    assert sorted(p.name for p in registry.rglob("*")) == before


def test_a_failed_run_posts_its_error_line_to_the_webhook_and_never_logs_the_url(months_dir, prefect_api_url, one_worker, tmp_path):
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
            "--scheduler",
            one_worker.address,
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


def test_a_gradient_boosting_challenger_is_registered_with_skops_and_compared_on_rows(months_dir, prefect_api_url, one_worker, tmp_path):
    registry = tmp_path / "registry"
    _retrain(months_dir, registry, one_worker, folds=0, alphas=(1.0,), candidates=((),))
    trees = _retrain(months_dir, registry, one_worker, model="hist_gradient_boosting", folds=0, candidates=((),), max_rows=20_000)
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
