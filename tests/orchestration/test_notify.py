"""Notifications through Prefect's blocks, delivered to a real HTTP receiver on 127.0.0.1 (no network)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.errors import PipelineError
from pipeline.orchestration.notify import NotifyTarget, block_for, save_url_block, send, target_from

#: What must never be written anywhere: the path and query of the webhook URL.
SECRETS = ("SECRET123", "token=abc", "/hooks/T000")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """A local webhook: records every request; answers ``status``."""

    port: int
    requests: list[Received] = field(default_factory=list)
    status: int = 200

    def url(self, path: str = "/hooks/T000/SECRET123?token=abc", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A ThreadingHTTPServer on 127.0.0.1:<free port>, stopped after the test."""
    state = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            state.requests.append(Received(self.command, self.path, dict(self.headers), body))
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_PUT = do_GET = _record

        def log_message(self, format: str, *args: Any) -> None:  # keep the receiver quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_nothing_leaked(caplog: pytest.LogCaptureFixture, *texts: str) -> None:
    for record in caplog.records:
        written = record.getMessage() + (record.exc_text or "")
        if record.exc_info:
            written += logging.Formatter().formatException(record.exc_info)
        for secret in SECRETS:
            assert secret not in written, (record.name, written)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, text


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.fixture
def logger() -> logging.Logger:
    return logging.getLogger("tests.notify")


# --- targets ------------------------------------------------------------------------------------------


def test_target_from_builds_targets_and_none() -> None:
    assert target_from(None, None) is None
    assert target_from("", "  ") is None
    target = target_from("slack-webhook/ops", None, on_completion=True)
    assert target == NotifyTarget(block="slack-webhook/ops", on_completion=True)
    assert target.describe() == "block slack-webhook/ops"


@pytest.mark.parametrize(
    ("notify", "notify_url", "flag"),
    [
        ("slack-webhook/ops", "http://127.0.0.1:1/hooks/T000/SECRET123?token=abc", "--notify-url"),
        ("ops", None, "--notify"),
        ("Slack-Webhook/Ops", None, "--notify"),
        ("slack-webhook/ops/extra", None, "--notify"),
        ("slack webhook/ops", None, "--notify"),
        (None, "127.0.0.1/hooks/T000/SECRET123?token=abc", "--notify-url"),
        (None, "hooks.slack.com/services/T000/SECRET123", "--notify-url"),
        (None, "http:///hooks/T000/SECRET123?token=abc", "--notify-url"),
        (None, "://hooks/T000/SECRET123", "--notify-url"),
    ],
)
def test_target_from_refuses_contradictions_and_malformed(notify: str | None, notify_url: str | None, flag: str) -> None:
    with pytest.raises(PipelineError) as caught:
        target_from(notify, notify_url)
    message = str(caught.value)
    assert flag in message
    assert "\n" not in message
    for secret in SECRETS:
        assert secret not in message


def test_repr_and_describe_hide_the_url(receiver: Receiver) -> None:
    target = target_from(None, receiver.url())
    assert target is not None
    assert target.describe() == "webhook http://127.0.0.1:***"
    for text in (repr(target), str(target), target.describe()):
        for secret in SECRETS:
            assert secret not in text
    assert str(receiver.port) not in repr(target)
    # Apprise URLs whose "host" is a token show the scheme only.
    telegram = NotifyTarget(url="tgram://123456789:SECRETBOTTOKEN/987654")
    assert telegram.describe() == "apprise tgram://***"
    assert "SECRETBOTTOKEN" not in repr(telegram)
    assert NotifyTarget(url=receiver.url(scheme="json")).describe() == "apprise json://127.0.0.1:***"


def test_block_for_a_url_is_an_unsaved_block_that_does_not_show_it(receiver: Receiver) -> None:
    from prefect.blocks.notifications import AppriseNotificationBlock, CustomWebhookNotificationBlock

    webhook = block_for(NotifyTarget(url=receiver.url()))
    assert isinstance(webhook, CustomWebhookNotificationBlock)
    assert webhook.json_data == {"text": "{{subject}}\n{{body}}"}
    assert webhook._block_document_id is None  # not saved
    apprise = block_for(NotifyTarget(url=receiver.url("/apprise/SECRET123", scheme="json")))
    assert type(apprise) is AppriseNotificationBlock
    for block in (webhook, apprise):
        for secret in SECRETS:
            assert secret not in repr(block)


def test_block_for_refuses_an_unknown_apprise_scheme(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    target = NotifyTarget(url="nosuchscheme://SECRET123/token=abc")
    with pytest.raises(PipelineError, match="--notify-url: Apprise has no plugin for nosuchscheme://"):
        block_for(target)
    caplog.clear()
    assert send(target, "subject", "body", logger) is False
    assert len(warnings_of(caplog)) == 1
    assert_nothing_leaked(caplog)


# --- delivery to a URL --------------------------------------------------------------------------------


def test_url_target_posts_slack_style_json(receiver: Receiver, caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs the full request URL at INFO: it must come out scrubbed
    target = target_from(None, receiver.url())
    assert target is not None
    assert send(target, "taxi-pipeline: run failed", "month 2023-02\nValueError: boom", logger) is True
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.method == "POST"
    assert request.path == "/hooks/T000/SECRET123?token=abc"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {"text": "taxi-pipeline: run failed\nmonth 2023-02\nValueError: boom"}
    assert warnings_of(caplog) == []
    assert any(record.name == "httpx" for record in caplog.records)  # the scrubbed line is still there
    assert_nothing_leaked(caplog)


def test_http_error_answer_is_false_with_one_clean_warning(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, logger: logging.Logger
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status = 500
    target = NotifyTarget(url=receiver.url())
    assert send(target, "subject", "body", logger) is False
    assert len(receiver.requests) == 1
    [warning] = warnings_of(caplog)
    assert warning.name == "tests.notify"
    message = warning.getMessage()
    assert message == "notification to webhook http://127.0.0.1:*** failed: HTTP 500 Internal Server Error"
    assert warning.exc_info is None
    assert_nothing_leaked(caplog, repr(target), target.describe())


def test_unreachable_url_is_false_with_one_clean_warning(caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.DEBUG)
    target = NotifyTarget(url=f"http://127.0.0.1:{closed_port()}/hooks/T000/SECRET123?token=abc")
    assert send(target, "subject", "body", logger) is False
    [warning] = warnings_of(caplog)
    assert "webhook http://127.0.0.1:***" in warning.getMessage()
    assert "ConnectError" in warning.getMessage()
    assert warning.exc_info is None
    assert_nothing_leaked(caplog, repr(target), target.describe())


def test_send_is_synchronous_inside_a_running_event_loop(receiver: Receiver) -> None:
    """A sync hook called on an event loop's thread: Prefect's async_dispatch would hand back an un-awaited coroutine."""

    async def main() -> bool:
        return send(NotifyTarget(url=receiver.url()), "from a loop", "body")

    assert asyncio.run(main()) is True
    assert [request.body for request in receiver.requests] == [{"text": "from a loop\nbody"}]


# --- delivery through Apprise -------------------------------------------------------------------------


def test_apprise_json_url_delivers(receiver: Receiver, caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    caplog.set_level(logging.DEBUG)  # apprise logs the URL it loaded and posts to, urllib3 the path
    target = target_from(None, receiver.url("/apprise/SECRET123", scheme="json"))
    assert target is not None
    assert send(target, "taxi-pipeline: run failed", "month 2023-02", logger) is True
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/apprise/SECRET123"
    assert request.headers["Content-Type"] == "application/json"
    assert request.body == {
        "version": "1.0",
        "title": "taxi-pipeline: run failed",
        "message": "month 2023-02",
        "attachments": [],
        "type": "info",
    }
    assert warnings_of(caplog) == []
    assert_nothing_leaked(caplog)


def test_apprise_error_answer_is_false_with_one_clean_warning(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, logger: logging.Logger
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.status = 500
    target = NotifyTarget(url=receiver.url("/apprise/SECRET123", scheme="json"))
    assert send(target, "subject", "body", logger) is False
    assert len(receiver.requests) == 1
    [warning] = warnings_of(caplog)  # Apprise's own warning is folded into ours
    assert warning.name == "tests.notify"
    assert warning.getMessage().startswith("notification to apprise json://127.0.0.1:*** failed: Apprise: ")
    assert "500" in warning.getMessage()
    assert_nothing_leaked(caplog)


# --- saved blocks (a real Prefect API) ----------------------------------------------------------------


@pytest.mark.slow
def test_saved_block_round_trip(prefect_api_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    from prefect.client.orchestration import get_client

    caplog.set_level(logging.DEBUG, logger="tests.notify")
    reference = save_url_block(receiver.url(), "ops")
    assert reference == "custom-webhook/ops"
    target = target_from(reference, None)
    assert target is not None
    assert send(target, "saved", "block body", logger) is True
    assert [(r.method, r.path, r.body) for r in receiver.requests] == [
        ("POST", "/hooks/T000/SECRET123?token=abc", {"text": "saved\nblock body"})
    ]
    # The URL is stored as a secret: the API does not return it unless asked for secrets.
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name("ops", "custom-webhook", include_secrets=False)
    for secret in SECRETS:
        assert secret not in json.dumps(document.data)

    # Saved again (overwrite) and failing: the block's URL is scrubbed though the target only names the block.
    save_url_block(receiver.url(), "ops")
    receiver.status = 500
    caplog.clear()
    assert send(target, "saved", "block body", logger) is False
    [warning] = warnings_of(caplog)
    assert warning.getMessage() == "notification to block custom-webhook/ops failed: HTTP 500 Internal Server Error"
    assert_nothing_leaked(caplog)


@pytest.mark.slow
def test_saved_apprise_url_round_trip(prefect_api_url: str, receiver: Receiver) -> None:
    reference = save_url_block(receiver.url("/apprise/SECRET123", scheme="json"), "ops-json")
    assert reference == "slack-webhook/ops-json"
    assert send(NotifyTarget(block=reference), "saved", "apprise body", None) is True
    [request] = receiver.requests
    assert request.path == "/apprise/SECRET123"
    assert request.body["title"] == "saved"
    assert request.body["message"] == "apprise body"


@pytest.mark.slow
def test_missing_block(prefect_api_url: str, caplog: pytest.LogCaptureFixture, logger: logging.Logger) -> None:
    target = NotifyTarget(block="custom-webhook/no-such-block")
    assert send(target, "subject", "body", logger) is False
    [warning] = warnings_of(caplog)
    assert warning.getMessage() == (
        "notification to block custom-webhook/no-such-block failed: --notify custom-webhook/no-such-block: "
        "no such block on the Prefect API (create it in the Prefect UI or with Python)"
    )
    with pytest.raises(PipelineError, match=r"^--notify custom-webhook/no-such-block: no such block"):
        block_for(target)
    with pytest.raises(PipelineError, match=r"^--notify no-such-type/ops: no such block"):
        block_for(NotifyTarget(block="no-such-type/ops"))


def test_save_url_block_refuses_bad_names_and_urls_before_any_api_call() -> None:
    with pytest.raises(PipelineError, match="block name 'Ops!'"):
        save_url_block("http://127.0.0.1:1/hooks/T000/SECRET123", "Ops!")
    with pytest.raises(PipelineError, match="--notify-url") as caught:
        save_url_block("hooks/T000/SECRET123", "ops")
    assert "SECRET123" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("is_async", [False, True])
def test_send_from_a_flow_failure_hook(prefect_api_url: str, receiver: Receiver, is_async: bool) -> None:
    """The intended use: a synchronous on_failure hook of a sync or an async flow."""
    from prefect import flow

    target = NotifyTarget(url=receiver.url())
    results: list[bool] = []

    def on_failure(flow_: Any, flow_run: Any, state: Any) -> None:
        results.append(send(target, f"{flow_run.name}: {state.name}", str(state.message)))

    if is_async:

        @flow(on_failure=[on_failure], retries=0)
        async def failing_async() -> None:
            raise ValueError("boom")

        state = asyncio.run(failing_async(return_state=True))
    else:

        @flow(on_failure=[on_failure], retries=0)
        def failing() -> None:
            raise ValueError("boom")

        state = failing(return_state=True)
    assert state.is_failed()
    assert results == [True]
    [request] = receiver.requests
    assert ": Failed\n" in request.body["text"]
    assert "boom" in request.body["text"]
