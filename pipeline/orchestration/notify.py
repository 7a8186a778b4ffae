"""Tell people a run failed (or finished) through Prefect's own notification blocks.

A retraining run that fails at night must say so somewhere people look. Prefect
already ships the senders (``prefect.blocks.notifications``: Slack, Teams,
custom webhooks, anything Apprise knows), so a target is either a block saved
in the Prefect UI (``--notify slack-webhook/ops``) or a URL (``--notify-url``),
turned into an unsaved block here. What this module adds is the part the blocks
leave to the caller:

* Delivery never breaks the run. :func:`send` turns every failure (no such
  block, unreachable host, a non-2xx answer, a timeout) into one warning line
  and ``False``; a notification about a failure must not replace it.
* A webhook URL is a credential. It is kept out of ``repr``, out of our log
  lines and exception text, and, for the duration of a delivery, out of the
  records ``httpx``, ``apprise`` and ``urllib3`` log (they print full URLs at
  INFO/DEBUG). :func:`save_url_block` moves it into a block's secret field so a
  deployment carries a block name, not the URL.
* The blocks' ``notify``/``load``/``save`` dispatch on the calling context
  (``async_dispatch``, prefect #15008): called from a sync function inside a
  running event loop or an async flow they return an un-awaited coroutine and
  send nothing. Their explicit async twins (``anotify``, ``aload``, ``asave``)
  are run to completion here instead, so :func:`send` works the same from a
  state hook, a flow, a Dask worker or plain Python.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from prefect.blocks.abstract import NotificationBlock

log = logging.getLogger(__name__)

#: A saved block reference: block type slug / block document name (Prefect allows only these characters in both).
_BLOCK_REFERENCE = re.compile(r"[a-z0-9-]+/[a-z0-9-]+")
_BLOCK_NAME = re.compile(r"[a-z0-9-]+")
#: Schemes whose host part is a real host, safe to show; in other Apprise URLs (tgram://TOKEN/..., discord://ID/TOKEN) it is a secret.
_HOST_SHOWN = frozenset({"http", "https", "json", "jsons", "form", "forms", "xml", "xmls"})
_WEBHOOK_SCHEMES = frozenset({"http", "https"})
_URL_TOKEN = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
#: Loggers that print a request's URL or path while a notification is sent (exact names: filters do not inherit).
_LIBRARY_LOGGERS = ("httpx", "apprise", "urllib3.connectionpool")
#: The secret key the webhook URL is stored under in a Custom Webhook block (its ``url`` field is plain text).
_URL_SECRET = "webhook_url"
#: Seconds a webhook may take (the Custom Webhook block's default; Apprise's are 4 s to connect and 4 s to read).
TIMEOUT = 10.0


@dataclass(frozen=True)
class NotifyTarget:
    """Where messages go: a saved block ("TYPE-SLUG/NAME", e.g. "slack-webhook/ops") or a URL (a secret: never in repr, logs or messages).

    Failure messages are always sent; completion messages only with ``on_completion``.
    """

    block: str | None = None
    url: str | None = field(default=None, repr=False)
    on_completion: bool = False

    def __post_init__(self) -> None:
        if (self.block is None) == (self.url is None):
            raise PipelineError("give one notification target: --notify TYPE/NAME or --notify-url URL")
        if self.block is not None and not _BLOCK_REFERENCE.fullmatch(self.block):
            raise PipelineError(
                f"--notify {self.block!r}: expected a saved block as TYPE/NAME, e.g. slack-webhook/ops "
                "(lowercase letters, digits and dashes)"
            )
        if self.url is not None and not _has_scheme(self.url):
            raise PipelineError(
                "--notify-url: not a URL with a scheme and a host (e.g. https://hooks.slack.com/services/... or tgram://...); "
                "the value is not shown as it may hold a secret"
            )

    def describe(self) -> str:
        """Safe for logs: ``block slack-webhook/ops`` or ``webhook http://127.0.0.1:***`` (never a path, query or credentials)."""
        if self.block is not None:
            return f"block {self.block}"
        assert self.url is not None
        kind = "webhook" if _scheme(self.url) in _WEBHOOK_SCHEMES else "apprise"
        return f"{kind} {_safe_url(self.url)}"


#: Where a secret notification URL travels to the state hooks of a run in the same process: an environment variable,
#: never a flow parameter (parameters are stored in the Prefect database and shown in the UI).
NOTIFY_URL_ENV = "TAXI_PIPELINE_NOTIFY_URL"


def target_from(notify: str | None, notify_url: str | None, on_completion: bool = False) -> NotifyTarget | None:
    """The target the ``--notify`` / ``--notify-url`` flags name, or None when neither is given (empty counts as not given)."""
    notify = (notify or "").strip() or None
    notify_url = (notify_url or "").strip() or None
    if notify is not None and notify_url is not None:
        raise PipelineError("--notify and --notify-url are alternatives: give one")
    if notify is None and notify_url is None:
        return None
    return NotifyTarget(block=notify, url=notify_url, on_completion=on_completion)


def block_for(target: NotifyTarget) -> NotificationBlock:
    """The Prefect notification block for ``target``: the saved one it names, or an unsaved one for its URL.

    An http(s) URL becomes a Custom Webhook posting ``{"text": "<subject>\\n<body>"}``
    (what Slack, Mattermost and most chat incoming webhooks accept); any other
    scheme goes to Apprise (``json://``, ``mailto://``, ``tgram://``, ``msteams://``...).
    """
    secrets = _secrets_of_url(target.url) if target.url else []
    with _scrubbed_library_logs(secrets):
        if target.url is not None:
            return _url_block(target.url)
        assert target.block is not None
        block = _load(target.block)
        secrets += _secrets_of_block(block)  # the filter holds this list: later records are scrubbed of these too
        return block


def send(
    target: NotifyTarget,
    subject: str,
    body: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> bool:
    """Deliver one message; return whether it was delivered. Never raises.

    On any failure, log one warning naming ``target.describe()`` and the error
    type or HTTP status, never the URL, and return False. Blocks for at most
    about :data:`TIMEOUT` seconds per attempt (loading a saved block adds the
    Prefect API's round trip).
    """
    logger = logger or log
    where = "a notification target"
    secrets: list[str] = []
    try:
        where = target.describe()
        secrets += _secrets_of_url(target.url) if target.url else []
        with _scrubbed_library_logs(secrets):
            block = block_for(target)
            secrets += _secrets_of_block(block)
            with block.raise_on_failure():
                _call_sync(block, "notify", body, subject)
        return True
    except Exception as exc:
        logger.warning("notification to %s failed: %s", where, _explain(exc, secrets))
        return False


def save_url_block(url: str, name: str) -> str:
    """Save a block sending to ``url`` as ``name`` (overwriting) on the current Prefect API; return its ``TYPE/NAME``.

    For a deployment made with ``--notify-url``: the URL then lives in the
    block's secret field and the deployment's parameters carry only the name.
    An http(s) URL is saved as a ``custom-webhook`` (the URL in its ``secrets``,
    its ``url`` field the template ``{{webhook_url}}``); any other scheme as a
    ``slack-webhook``, Prefect's only saveable block that takes an arbitrary
    Apprise URL (it hands URLs not shaped like hooks.slack.com to Apprise).
    """
    if not _BLOCK_NAME.fullmatch(name):
        raise PipelineError(f"block name {name!r}: use lowercase letters, digits and dashes")
    target = NotifyTarget(url=url)
    with _scrubbed_library_logs(_secrets_of_url(url)):
        if _scheme(url) in _WEBHOOK_SCHEMES:
            block: NotificationBlock = _url_block(url)
        else:
            from prefect.blocks.notifications import SlackWebhook
            from pydantic import SecretStr

            _check_apprise_url(url)
            block = SlackWebhook(url=SecretStr(url))
        _call_sync(block, "save", name, overwrite=True)
    log.info("saved notification block %s/%s for %s", block.get_block_type_slug(), name, target.describe())
    return f"{block.get_block_type_slug()}/{name}"


# --- blocks -------------------------------------------------------------------------------------------


def _url_block(url: str) -> NotificationBlock:
    """An unsaved block sending to ``url``; its ``repr`` does not show the URL."""
    from pydantic import SecretStr

    if _scheme(url) in _WEBHOOK_SCHEMES:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        return CustomWebhookNotificationBlock(
            name="taxi-pipeline",
            url="{{" + _URL_SECRET + "}}",
            json_data={"text": "{{subject}}\n{{body}}"},
            headers=None,
            cookies=None,
            timeout=TIMEOUT,
            secrets={_URL_SECRET: url},  # type: ignore[arg-type]  # pydantic validates the dict into a SecretDict
        )
    from prefect.blocks.notifications import AppriseNotificationBlock

    _check_apprise_url(url)
    return AppriseNotificationBlock(url=SecretStr(url))


def _check_apprise_url(url: str) -> None:
    """Refuse a URL no Apprise plugin takes (Apprise would otherwise drop it silently and report "nothing to notify")."""
    import apprise

    if apprise.Apprise.instantiate(url, suppress_exceptions=True) is None:
        raise PipelineError(f"--notify-url: Apprise has no plugin for {_safe_url(url)} (see the Apprise wiki for URL forms)")


def _load(reference: str) -> NotificationBlock:
    """The saved block ``TYPE/NAME``, or a PipelineError saying it is missing or not a notification block."""
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block

    try:
        block = _call_sync(Block, "load", reference)
    except ValueError as exc:
        if not str(exc).startswith("Unable to find block document"):
            raise
        raise PipelineError(
            f"--notify {reference}: no such block on the Prefect API (create it in the Prefect UI or with Python)"
        ) from None
    if not isinstance(block, NotificationBlock):
        raise PipelineError(f"--notify {reference}: a {type(block).__name__} block, not a notification block")
    return block


def _call_sync(block: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call a block's method ``name`` to completion whatever the context: its async twin ``a<name>`` when it has one."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    method = getattr(block, f"a{name}", None) or getattr(block, name)
    result = method(*args, **kwargs)
    if inspect.iscoroutine(result):  # the twin, or a third-party block with a plain ``async def notify``
        return run_coro_as_sync(result)
    return result


# --- keeping the URL out of text ----------------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _has_scheme(url: str) -> bool:
    """Whether ``url`` is ``scheme://something`` (with a host, for http and https)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", url):
        return False
    try:
        return _scheme(url) not in _WEBHOOK_SCHEMES or bool(urlsplit(url).hostname)
    except ValueError:
        return False


def _safe_url(url: str) -> str:
    """``scheme://host:***`` for URLs whose host is a host, ``scheme://***`` for the rest."""
    scheme = _scheme(url) or "?"
    try:
        host = urlsplit(url).hostname if scheme in _HOST_SHOWN else None
    except ValueError:
        host = None
    if host and ":" in host:
        host = f"[{host}]"  # IPv6
    return f"{scheme}://{host}:***" if host else f"{scheme}://***"


def _secrets_of_url(url: str) -> list[str]:
    """The parts of ``url`` that must not appear in text: itself, path, query, credentials (and a host that is a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    path_query = parts.path + (f"?{parts.query}" if parts.query else "")
    pieces = [url, path_query, parts.path, parts.query, parts.fragment, parts.username or "", parts.password or ""]
    if _scheme(url) not in _HOST_SHOWN:
        pieces.append(parts.netloc)
    pieces += [unquote(piece) for piece in pieces]
    return sorted({piece for piece in pieces if len(piece) > 3}, key=len, reverse=True)


def _secrets_of_block(block: NotificationBlock) -> list[str]:
    """What a loaded block may leak: its secret fields and any URL it holds."""
    from prefect.types import SecretDict
    from pydantic import SecretStr

    values: list[str] = []
    for name in type(block).model_fields:
        value = getattr(block, name, None)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, SecretDict):
            values += [str(v) for v in value.get_secret_value().values()]
        elif isinstance(value, str) and "://" in value:
            values.append(value)
    secrets: list[str] = []
    for value in values:
        secrets += _secrets_of_url(value) if "://" in value else [value] if len(value) > 3 else []
    return sorted(set(secrets), key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every URL cut to ``scheme://host:***`` and every secret replaced by ``***``."""
    text = _URL_TOKEN.sub(lambda match: _safe_url(match.group(0)), text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class _LibraryLogScrubber(logging.Filter):
    """Rewrites library log records during one delivery; holds back Apprise's warnings (send's own line reports them)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = _scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        if record.name == "apprise" and record.levelno >= logging.WARNING:
            self.held.append(clean)
            return False
        return True


@contextmanager
def _scrubbed_library_logs(secrets: list[str]) -> Iterator[None]:
    """Scrub the HTTP libraries' records of ``secrets`` meanwhile (the list is shared: extend it when a block is loaded).

    An exception leaving the block gets Apprise's held-back warnings as a (scrubbed) note.
    """
    scrubber = _LibraryLogScrubber(secrets)
    loggers = [logging.getLogger(name) for name in _LIBRARY_LOGGERS]
    for library in loggers:
        library.addFilter(scrubber)
    try:
        yield
    except Exception as exc:
        if scrubber.held:
            exc.add_note(_scrub(" ".join(scrubber.held), scrubber.secrets))
        raise
    finally:
        for library in loggers:
            library.removeFilter(scrubber)


def _explain(exc: BaseException, secrets: list[str]) -> str:
    """One line for a failed delivery: the error type and HTTP status or cause, with no URL or secret in it."""
    import httpx
    from prefect.blocks.abstract import NotificationError

    if isinstance(exc, PipelineError):
        detail = str(exc)
    elif isinstance(exc, httpx.HTTPStatusError):
        detail = f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".rstrip()
    elif isinstance(exc, httpx.TimeoutException):
        detail = f"{type(exc).__name__} (no answer within {TIMEOUT:g} s)"
    elif isinstance(exc, NotificationError):
        notes = getattr(exc, "__notes__", None)
        detail = f"Apprise: {notes[-1]}" if notes else "Apprise: not delivered"
    else:
        message = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    return " ".join(_scrub(detail, secrets).split())[:300]
