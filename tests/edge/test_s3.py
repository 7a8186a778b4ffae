"""Object storage against a real S3 API: a moto server on 127.0.0.1, with IAM auth on, holding generated months."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.months import Month, parse_months
from pipeline.edge import predictions, storage
from pipeline.edge.ports import free_port
from pipeline.edge.run_files import publish_run
from pipeline.edge.sources import month_filename
from pipeline.errors import PipelineError

BUCKET = "taxi"
MONTHS = f"s3://{BUCKET}/months"


class Moto:
    """``python -m moto.server`` on a free 127.0.0.1 port; after 3 requests (an IAM user and its key) every request needs the key."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        iam.create_user(UserName="ci")
        allow_all = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="ci", PolicyName="all", PolicyDocument=json.dumps(allow_all))
        key = iam.create_access_key(UserName="ci")["AccessKey"]
        self.env = {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="session")
def moto(months_dir: Path) -> Iterator[Moto]:
    """The S3 server, its credentials in the environment (as a user's shell has them), the months uploaded."""
    server = Moto()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.env.items():
            patch.setenv(name, value)
        try:
            fs, _ = storage.filesystem(MONTHS)
            fs.mkdir(BUCKET)
            for month in parse_months("2023-01:2023-03"):
                name = month_filename("yellow", month)
                storage.put(f"{MONTHS}/{name}", (months_dir / name).read_bytes())
            yield server
        finally:
            server.stop()


def _cli(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    """``taxi-pipeline ARGS`` in a subprocess; ``env`` values of None unset a variable."""
    merged = {**os.environ, **(env or {})}
    environ = {name: value for name, value in merged.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=environ, timeout=300)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- the storage module on S3 ---------------------------------------------------------------------------------


def test_objects_are_put_read_listed_and_deleted_whole(moto: Moto) -> None:
    root = storage.locate(f"s3://{BUCKET}/unit")
    storage.put(root.child("a.json"), b"{}")
    storage.put(root.child("sub", "b.bin"), b"\x00" * 10)
    assert storage.read_bytes(root.child("a.json")) == b"{}"
    assert storage.listdir(root) == ["a.json", "sub"]
    assert storage.exists(root.child("sub", "b.bin")) and not storage.exists(root.child("nope"))
    with pytest.raises(FileExistsError):  # a conditional put: If-None-Match
        storage.put(root.child("a.json"), b"[]", create=True)
    assert storage.read_bytes(root.child("a.json")) == b"{}"
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(root.child("nope"))
    storage.delete_tree(root)
    assert storage.listdir(root) == []


def test_a_staging_without_its_mark_is_removed_and_a_marked_one_kept_whoever_wrote_it(moto: Moto) -> None:
    """On object storage a mark's host and pid prove nothing (writers may be other machines): only unmarked stagings go."""
    output = storage.locate(f"s3://{BUCKET}/leftovers")
    storage.put(output.child("month=2023-01", "part-00000.parquet"), b"published")
    storage.put(output.child(".staging-discarded", "month=2023-01", "part-00003.parquet"), b"late")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    mark = {"run": "killed", "host": socket.gethostname(), "pid": ended.pid, "since": time.time()}
    storage.put(output.child(".staging-marked", ".open"), json.dumps(mark).encode())
    storage.put(output.child(".staging-marked", "month=2023-01", "part-00000.parquet"), b"staged")

    assert predictions.remove_leftovers(output) == ["removed .staging-discarded"]
    assert storage.listdir(output) == [".staging-marked", "month=2023-01"]
    storage.delete_tree(output)


def test_inline_credentials_are_refused_and_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        storage.parse_options('{"endpoint_url": "http://127.0.0.1:1", "client_kwargs": {"aws_secret_access_key": "s3cr3t"}}')
    assert "aws_secret_access_key" in str(caught.value) and "s3cr3t" not in str(caught.value) and "@FILE" in str(caught.value)
    options = tmp_path / "s3.json"
    options.write_text('{"key": "AKIA", "secret": "s3cr3t"}')
    assert storage.parse_options(f"@{options}") == {"key": "AKIA", "secret": "s3cr3t"}  # a file is fine
    assert storage.parse_options('{"endpoint_url": "http://127.0.0.1:1", "anon": false}') == {
        "endpoint_url": "http://127.0.0.1:1",
        "anon": False,
    }


def test_wrong_credentials_are_one_line_naming_the_output(moto: Moto, months_dir: Path) -> None:
    env: dict[str, str | None] = {"AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    started = time.monotonic()
    result = _cli("train", "--source", str(months_dir), "--train-months", "2023-01", "--val-month", "2023-02",
                  "--output", f"s3://{BUCKET}/runs/denied", env=env)  # fmt: skip
    line = _one_error_line(result)
    assert f"s3://{BUCKET}/runs/denied: cannot list" in line and "access denied" in line
    assert "not-the-secret" not in result.stderr + result.stdout
    assert time.monotonic() - started < 20  # refused before any server or cluster starts


def test_a_stopped_server_and_an_inline_secret_are_one_line_each_before_anything_runs(months_dir: Path) -> None:
    stopped = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ("train", "--source", str(months_dir), "--train-months", "2023-01", "--val-month", "2023-02", "--output", "s3://taxi/runs/x")
    options = {"endpoint_url": stopped, "config_kwargs": {"retries": {"max_attempts": 1}}}
    env: dict[str, str | None] = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    line = _one_error_line(_cli(*args, "--storage-options", json.dumps(options), env=env))
    assert line.startswith("error: s3://taxi/runs/x: cannot list (EndpointConnectionError: Could not connect to the endpoint URL")
    line = _one_error_line(_cli(*args, "--storage-options", '{"endpoint_url": "http://127.0.0.1:1", "secret": "hunter2"}'))
    assert "--storage-options: secret looks like a credential" in line and "hunter2" not in line


def test_a_missing_bucket_or_month_is_one_line_before_any_server_starts(moto: Moto, tmp_path: Path) -> None:
    months = ("--train-months", "2023-01:2023-02", "--val-month", "2023-03")
    started = time.monotonic()
    result = _cli("train", "--source", "s3://nobucket/months", *months, "--output", str(tmp_path / "out"))
    assert "error: source s3://nobucket/months: bucket 'nobucket' does not exist" in _one_error_line(result)
    assert time.monotonic() - started < 20 and not (tmp_path / "out").exists()  # _one_error_line: no API or cluster line
    late = ("--train-months", "2023-02:2023-03", "--val-month", "2023-04")
    missing = _one_error_line(_cli("train", "--source", MONTHS, *late, "--output", str(tmp_path / "out")))
    assert missing == f"error: month 2023-04: file not found: {MONTHS}/yellow_tripdata_2023-04.parquet"
    from pipeline.edge.registry import Registry
    from pipeline.service.testing import commit_constant_version

    registry = Registry.open(tmp_path / "registry", create=True)  # a model to score with
    commit_constant_version(registry, 10.0, 5.0)
    scored = _cli("predict", "--registry", str(registry.root), "--months", "2023-03", "--source", "s3://nobucket/months",
                  "--output", str(tmp_path / "scored"))  # fmt: skip
    assert "bucket 'nobucket' does not exist" in _one_error_line(scored)


class _Proxy:
    """A TCP relay to the moto server that can be cut: the object store gone mid-write, its objects still there to inspect."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.target_port = target_port
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                s.close()

    def cut(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread: no connection gets through after this
        for s in self.sockets:
            s.close()


def test_the_store_gone_mid_write_is_one_line_and_leaves_no_model_without_its_data(moto: Moto, monkeypatch: Any) -> None:
    folder = f"s3://{BUCKET}/runs/cut"
    publish_run(folder, "old-run", {"model.npz": b"old weights", "model.json": b'{"run_id": "old-run"}'}, b'{"flow_run_id": "old-run"}')
    proxy = _Proxy(moto.port)
    monkeypatch.setenv(
        storage.STORAGE_OPTIONS_ENV,
        json.dumps({"endpoint_url": proxy.url, "config_kwargs": {"retries": {"max_attempts": 1}}}),
    )
    put = storage.put

    def put_then_cut(where: Any, data: bytes, **kwargs: Any) -> None:
        put(where, data, **kwargs)
        if str(where).endswith("model.npz"):
            proxy.cut()  # the new weights are in; model.json and metrics.json never arrive

    monkeypatch.setattr(storage, "put", put_then_cut)
    with pytest.raises(PipelineError) as caught:
        publish_run(folder, "new-run", {"model.npz": b"new weights", "model.json": b'{"run_id": "new-run"}'}, b"{}")
    assert str(caught.value).startswith(f"{folder}/model.json: cannot write (") and "\n" not in str(caught.value)
    monkeypatch.undo()
    # seen directly on the server: neither the old set nor a mix is complete; nothing claims the new weights
    assert storage.listdir(folder) == [".run.lock", "model.npz"]
    assert storage.read_bytes(f"{folder}/model.npz") == b"new weights"
    with pytest.raises(PipelineError, match=r"no model\.json"):
        from pipeline.edge.model_files import load_any

        load_any(folder)


# --- whole runs through the CLI -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_train_from_s3_to_s3_gives_the_local_runs_metrics_to_the_bit_and_a_second_run_reads_the_shared_cache(
    moto: Moto, prefect_api_url: str
) -> None:
    from tests.flows.test_flow import PINNED

    env: dict[str, str | None] = {
        "PREFECT_API_URL": prefect_api_url,
        "AWS_ENDPOINT_URL": None,
    }  # the endpoint from --storage-options instead
    runs = []
    for name in ("first", "second"):
        output = f"s3://{BUCKET}/runs/{name}"
        result = _cli("train", "--source", MONTHS, "--train-months", "2023-01:2023-02", "--val-month", "2023-03", "--output", output,
                      "--storage-options", json.dumps({"endpoint_url": moto.url}), "--folds", "0", "--numeric", "trip_distance",
                      "--alphas", "0.5", "--stats-cache", f"s3://{BUCKET}/stats", "--n-workers", "1", env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert moto.env["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
        assert storage.listdir(output) == ["metrics.json", "model.json", "model.npz", "train_counts.npz"]
        meta = json.loads(storage.read_bytes(f"{output}/model.json"))
        metrics = json.loads(storage.read_bytes(f"{output}/metrics.json"))
        assert meta["run_id"] == metrics["flow_run_id"]
        for timing in ("seconds", "rows_per_second", "flow_run_id", "schema_version", "numeric", "months", "features"):
            metrics.pop(timing)
        assert [i["location"] for i in metrics.pop("inputs")] == [f"s3://taxi/months/yellow_tripdata_2023-0{m}.parquet" for m in (1, 2, 3)]
        assert metrics == PINNED["nocv_numeric"]["metrics"]  # the local run's figures (tests/flows/test_flow.py pins them)
        runs.append(result.stdout + result.stderr)
    chunks = len(storage.listdir(f"s3://{BUCKET}/stats"))
    assert chunks >= 3  # at least one chunk a month, each one object on the shared cache
    assert f"0 of {chunks} chunks read from it" in runs[0]
    assert f"{chunks} of {chunks} chunks read from it" in runs[1]  # the second run computed nothing


@pytest.mark.slow
@pytest.mark.cluster
def test_a_registry_on_s3_retrains_promotes_serves_and_scores_to_s3(moto: Moto, prefect_api_url: str, months_dir: Path) -> None:
    from datetime import date

    import pyarrow.parquet as pq

    from pipeline.cluster import ClusterSpec
    from pipeline.core.config import RetrainConfig
    from pipeline.edge.registry import Registry
    from pipeline.flows.retrain import retrain_flow
    from pipeline.service.source import ModelSlot, ModelSource

    registry = f"s3://{BUCKET}/registry"
    options: dict[str, Any] = {"source": MONTHS, "registry": registry, "as_of": date(2023, 4, 20), "folds": 0, "alphas": (1e-3,)}
    first = retrain_flow(RetrainConfig(**options), ClusterSpec(n_workers=1, dashboard_address=":0"))
    worse = retrain_flow(RetrainConfig(**{**options, "alphas": (1e5,)}), ClusterSpec(n_workers=1, dashboard_address=":0"))
    assert (first.version, first.decision.action, worse.version, worse.decision.action) == ("v0001", "promote", "v0002", "keep")
    assert worse.decision.champion_rmse == pytest.approx(first.run.val_rmse, rel=1e-9)  # the champion read back from S3, scored
    store = Registry.open(registry)
    assert storage.listdir(f"{registry}/versions/v0002") == ["metrics.json", "model.json", "model.npz", "train_counts.npz", "version.json"]
    slot = ModelSlot(ModelSource.registry(registry), max_batch=10)
    assert slot.current is not None and slot.current.version == "v0001"

    promoted = _cli("models", "promote", "v0002", "--registry", registry)
    assert promoted.returncode == 0 and "manual-promote v0002" in promoted.stdout, promoted.stderr
    assert store.champion().name == "v0002" and [d.action for d in store.history()] == ["promote", "keep", "manual-promote"]
    assert slot.refresh() and slot.current.version == "v0002"  # the service follows a champion on S3

    output = f"s3://{BUCKET}/scored"
    scored = _cli("predict", "--registry", registry, "--source", MONTHS, "--months", "2023-02:2023-03", "--output", output,
                  "--n-workers", "1", env={"PREFECT_API_URL": prefect_api_url})  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    assert storage.listdir(output) == ["month=2023-02", "month=2023-03", "report.json", "report.md", "report.png"]
    fs, _ = storage.filesystem(output)
    for month in ("2023-02", "2023-03"):
        table = pq.read_table(f"{BUCKET}/scored/month={month}", filesystem=fs)
        assert table.num_rows == pq.read_metadata(months_dir / month_filename("yellow", Month.parse(month))).num_rows
    report = json.loads(storage.read_bytes(f"{output}/report.json"))
    assert report["model"] == f"{registry}/versions/v0002"
