"""Where a TLC month file lives, and getting it onto local disk safely.

Training runs on Dask workers, often several processes on one machine, and needs
a local path pyarrow can open plus an identity string that changes when the
file's content does (for caching derived results). A *source* is a local folder
(plain path or ``file://`` URL), an ``http(s)://`` prefix, or any other fsspec URL
prefix. Remote files are copied into a local cache with a temp file + ``os.replace``
so no reader ever sees a torn file under the final name, whichever process wins.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from pipeline.core.config import DEFAULT_HTTP_TIMEOUT
from pipeline.core.months import Month
from pipeline.core.schema import TAXI_TYPES
from pipeline.edge import storage
from pipeline.edge.atomic import atomic_path
from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

#: Every parquet file starts and ends with these bytes; an HTML error page or a proxy's notice does not.
_PARQUET_MAGIC = b"PAR1"
_CHUNK = 1 << 20
_USER_AGENT = "taxi-pipeline/0.1 (+urllib)"
_T = TypeVar("_T")
#: ``fs.info`` keys (lower-cased) that change with content: s3/gcs/azure/local/memory.
_FSSPEC_STAMPS = ("etag", "md5", "md5hash", "content_md5", "mtime", "lastmodified", "last_modified", "updated", "created")


@dataclass(frozen=True)
class MonthFile:
    """One month's file on local disk, and the version of its content."""

    taxi: str
    month: Month
    location: str  # the original path or URL, for messages
    path: Path  # local file to open with pyarrow
    identity: str  # changes when the content changes


class _Truncated(Exception):
    """The body ended before the announced length: worth another attempt."""


class _NotParquet(Exception):
    """The body is not a parquet file: final, and never stored in the cache."""


class _HeadRefused(Exception):
    """The server does not do HEAD; the GET's headers give the identity instead."""


def month_filename(taxi: str, month: Month) -> str:
    """TLC's file name for one taxi type and month."""
    return f"{taxi}_tripdata_{month}.parquet"


def default_cache_dir() -> Path:
    """The XDG cache folder of the machine that downloads, for months of a run that names no ``cache_dir``.

    Read where the download runs (a remote worker's own home), as the XDG convention means it; the project's
    ``$TAXI_PIPELINE_CACHE`` is read once, as the config's ``cache_dir`` default (:mod:`pipeline.core.config`).
    """
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "taxi-pipeline"


def _scheme(source: str) -> str:
    return urlsplit(source).scheme.lower() if "://" in source else ""


def is_local(source: str) -> bool:
    """A folder on this machine (a plain path or a ``file://`` URL), read in place."""
    return _scheme(source) in ("", "file")


def resolve_month(
    source: str,
    taxi: str,
    month: Month,
    cache_dir: Path | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
) -> MonthFile:
    """Find one month's file in ``source`` and return a local path plus its identity.

    Local folders are used in place; http(s) and other fsspec sources are copied
    into ``cache_dir`` (default :func:`default_cache_dir`) and reused while their
    identity is unchanged; an HTTP socket operation silent for ``timeout`` seconds
    is retried. Every failure is one :class:`PipelineError` line.
    """
    if taxi not in TAXI_TYPES:
        raise PipelineError(f"unknown taxi type {taxi!r}: expected one of {', '.join(TAXI_TYPES)}")
    name = month_filename(taxi, month)
    if is_local(source):
        return _resolve_local(source, taxi, month, name)
    scheme = _scheme(source)

    location = f"{source.rstrip('/')}/{name}"
    dest = (cache_dir or default_cache_dir()) / _cache_folder(source) / name
    if scheme in ("http", "https"):
        attempt: Callable[[], str] = functools.partial(_fetch_http, location, month, dest, timeout)
        transient: tuple[type[BaseException], ...] = (
            urllib.error.URLError,
            http.client.HTTPException,
            ConnectionError,
            TimeoutError,
            _Truncated,
        )
    else:
        fs, remote_path = storage.filesystem(location)  # with --storage-options
        attempt = functools.partial(_fetch_fsspec, fs, remote_path, location, month, dest)
        transient = (ConnectionError, TimeoutError, _Truncated)  # backends retry the rest themselves
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        identity = _with_retries(attempt, transient, f"month {month}: could not fetch {location}", retries, backoff)
    except PipelineError:
        raise
    except _NotParquet as exc:
        raise PipelineError(f"month {month}: {location} is not a parquet file ({exc})") from None
    except OSError as exc:  # not transient: the cache disk, permissions, a refusing backend
        raise PipelineError(f"month {month}: cannot copy {location} into {dest.parent}: {exc}") from None
    return MonthFile(taxi, month, location, dest, identity)


def latest_month(
    source: str, taxi: str, as_of: Month, max_back: int = 24, retries: int = 3, backoff: float = 1.0, timeout: float = DEFAULT_HTTP_TIMEOUT
) -> Month:
    """The newest month published at ``source`` on or before ``as_of``, probing newest first.

    The TLC publishes with a lag of about two months, and not always the same:
    so probe, do not assume. Local folders are listed; http(s) sources are asked
    with HEAD (404/403/410: not published); other fsspec sources with ``exists``.
    An unreachable source is one :class:`PipelineError` line, as is no month in
    the ``max_back`` months before ``as_of``.
    """
    month = as_of
    for _ in range(max_back):
        if month_published(source, taxi, month, retries, backoff, timeout):
            return month
        month = month.previous()
    raise PipelineError(f"no {taxi} month published at {source} from {month.next()} to {as_of} (probed {max_back} months back)")


def check_remote_months(source: str, taxi: str, months: Sequence[Month]) -> None:
    """On object storage (``s3://``, ``gs://``, ...), every month's object exists: one line if not, naming a missing bucket.

    Called before a run starts its API and cluster: else a missing bucket costs a minute of retries and worker
    warnings before its error. Local folders are checked by reading their footers, http(s) sources by the run's tasks.
    """
    if is_local(source) or _scheme(source) in ("http", "https"):
        return
    for month in months:
        location = f"{source.rstrip('/')}/{month_filename(taxi, month)}"
        if storage.exists(location):
            continue
        _, path = storage.filesystem(source)
        bucket = path.strip("/").split("/", 1)[0]
        if not storage.exists(f"{_scheme(source)}://{bucket}"):
            raise PipelineError(f"source {source}: bucket {bucket!r} does not exist (or is not visible with these credentials)")
        raise PipelineError(f"month {month}: file not found: {location}")


def month_published(
    source: str, taxi: str, month: Month, retries: int = 3, backoff: float = 1.0, timeout: float = DEFAULT_HTTP_TIMEOUT
) -> bool:
    """Whether ``source`` holds ``taxi``'s file for ``month`` (without fetching it)."""
    name = month_filename(taxi, month)
    if is_local(source):
        folder = _local_folder(source)
        if not folder.is_dir():
            raise PipelineError(f"source folder does not exist: {source}")
        return (folder / name).is_file()
    location = f"{source.rstrip('/')}/{name}"
    if _scheme(source) in ("http", "https"):
        transient: tuple[type[BaseException], ...] = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
        return _with_retries(
            functools.partial(_http_exists, location, timeout), transient, f"source {source} unreachable", retries, backoff
        )
    return storage.exists(location)


def _http_exists(url: str, timeout: float) -> bool:
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (403, 404, 410):  # CloudFront answers 403 for a key that does not exist (yet)
            return False
        if exc.code < 500 and exc.code != 429:
            raise PipelineError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise


def _local_folder(source: str) -> Path:
    if source.startswith("file://"):
        return Path(urllib.request.url2pathname(urlsplit(source).path))
    return Path(source).expanduser()


def _resolve_local(source: str, taxi: str, month: Month, name: str) -> MonthFile:
    """Local folders are read in place; identity is size + mtime, which a rewrite changes."""
    folder = _local_folder(source)
    if not folder.is_dir():
        raise PipelineError(f"month {month}: source folder does not exist: {source}")
    path = folder / name
    if not path.is_file():
        raise PipelineError(f"month {month}: file not found: {path}")
    stat = path.stat()
    return MonthFile(taxi, month, str(path), path, f"size={stat.st_size};mtime_ns={stat.st_mtime_ns}")


def _cache_folder(source: str) -> str:
    """One filesystem-safe folder per source prefix (scheme, host, path), so sources never collide.

    Credentials in the URL are left out; a short hash keeps lossy names apart.
    """
    parts = urlsplit(source.rstrip("/"))
    host = parts.hostname or ""
    if parts.port:
        host += f"_{parts.port}"
    key = f"{parts.scheme.lower()}://{host}{parts.path}"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{parts.scheme}_{host}{parts.path}").strip("._")[:80]
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _with_retries(
    attempt: Callable[[], _T],
    transient: tuple[type[BaseException], ...],
    what: str,
    retries: int,
    backoff: float,
) -> _T:
    """Run ``attempt`` up to ``1 + retries`` times, sleeping ``backoff * 2**n`` after transient errors."""
    last: BaseException | None = None
    retries = max(retries, 0)
    for n in range(retries + 1):
        try:
            return attempt()
        except PipelineError:
            raise
        except transient as exc:
            last = exc
            if n < retries:
                delay = backoff * 2**n
                logger.warning("%s (attempt %d of %d): %s; retrying in %.1fs", what, n + 1, retries + 1, exc, delay)
                time.sleep(delay)
    raise PipelineError(f"{what} after {retries + 1} attempts: {last}")


def _fetch_http(url: str, month: Month, dest: Path, timeout: float) -> str:
    """One attempt: HEAD for the identity, reuse the cache if it matches, else GET into it."""
    try:
        with _urlopen(url, "HEAD", month, timeout) as head:
            identity = _http_identity(head.headers)
        if identity and _cache_matches(dest, identity):
            return identity
    except _HeadRefused:
        pass  # the GET's own headers decide below
    with _urlopen(url, "GET", month, timeout) as response:
        identity = _http_identity(response.headers)  # describes exactly the body we read
        if identity and _cache_matches(dest, identity):
            return identity
        length = response.headers.get("Content-Length")
        return _cache_store(dest, response, int(length) if length and length.isdigit() else None, identity)


def _urlopen(url: str, method: str, month: Month, timeout: float) -> http.client.HTTPResponse:
    """Open ``url``; 404/403 and other client errors are final, 5xx/429 stay transient."""
    request = urllib.request.Request(url, method=method, headers={"User-Agent": _USER_AGENT})
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
        return response
    except urllib.error.HTTPError as exc:
        exc.close()
        if method == "HEAD" and exc.code in (405, 501):
            raise _HeadRefused from None
        if exc.code in (403, 404, 410):
            raise PipelineError(f"month {month}: not found (HTTP {exc.code}) at {url}") from None
        if exc.code < 500 and exc.code != 429:
            raise PipelineError(f"month {month}: {url} refused: HTTP {exc.code} {exc.reason}") from None
        raise


def _http_identity(headers: http.client.HTTPMessage) -> str | None:
    """ETag, else Content-Length + Last-Modified; None when nothing would reveal a change."""
    if headers.get("ETag"):
        return f"etag={headers['ETag']}"
    if headers.get("Last-Modified"):
        return f"size={headers.get('Content-Length', '?')};last_modified={headers['Last-Modified']}"
    return None


def _fetch_fsspec(fs: Any, remote_path: str, url: str, month: Month, dest: Path) -> str:
    """One attempt: identity from ``fs.info``, reuse the cache if it matches, else copy.

    A refusing or unreachable object store (s3fs has retried already) is one line naming the object.
    """
    with storage.failures(f"month {month}: {url}", "read", keep=(ConnectionError, TimeoutError, _Truncated)):
        try:
            info = fs.info(remote_path)
        except FileNotFoundError:
            info = {"type": "missing"}
        if info.get("type", "file") != "file":
            raise PipelineError(f"month {month}: file not found: {url}")
        identity = _fsspec_identity(info)
        if identity and _cache_matches(dest, identity):
            return identity
        with fs.open(remote_path, "rb") as remote:
            return _cache_store(dest, remote, info.get("size"), identity)


def _fsspec_identity(info: dict[str, Any]) -> str | None:
    """Size plus whatever version stamps the backend reports; None if it reports none."""
    lowered = {key.lower(): value for key, value in info.items() if value is not None}
    stamps = [f"{key}={lowered[key]}" for key in _FSSPEC_STAMPS if key in lowered]
    return ";".join([f"size={info.get('size')}", *stamps]) if stamps else None


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".json")


def _cache_matches(dest: Path, identity: str) -> bool:
    """True if ``dest`` is the file the sidecar describes and that file has ``identity``.

    Size and mtime_ns of the cached file are recorded too, so a sidecar that lost a
    race with another process's rename (file from one writer, sidecar from the
    other) never matches and the month is fetched again.
    """
    try:
        recorded = json.loads(_sidecar(dest).read_text())
        stat = dest.stat()
    except (OSError, ValueError):
        return False
    hit: bool = recorded == {"identity": identity, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if hit:
        logger.debug("cache hit %s (%s)", dest, identity)
    return hit


def _cache_store(dest: Path, body: IO[bytes], expected_size: int | None, identity: str | None) -> str:
    """Write ``body`` to ``dest`` and then its sidecar; returns the identity recorded.

    Without a server identity the content hash is used, so it still changes with content.
    """
    logger.info("downloading %s", dest.name)
    stat, digest = _atomic_write(dest, body, expected_size, _PARQUET_MAGIC)
    identity = identity or f"sha256={digest}"
    record = {"identity": identity, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _atomic_write(_sidecar(dest), io.BytesIO(json.dumps(record).encode()), None)
    return identity


def _atomic_write(dest: Path, body: IO[bytes], expected_size: int | None, magic: bytes = b"") -> tuple[os.stat_result, str]:
    """Stream ``body`` into ``dest`` atomically (:func:`pipeline.edge.atomic.atomic_path`), checking its length
    and, with ``magic``, that the content starts and ends with it.

    Returns the final file's stat and sha256. On any failure ``dest`` is untouched:
    readers see the old complete file or the new one.
    """
    digest = hashlib.sha256()
    head, tail = b"", b""
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while chunk := body.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            head = head or chunk[:16]  # enough to tell an HTML page in the message
            tail = (tail + chunk)[-len(magic) :] if magic else b""
        out.flush()
        os.fsync(out.fileno())
        stat = os.fstat(out.fileno())
        if expected_size is not None and stat.st_size != expected_size:
            raise _Truncated(f"got {stat.st_size} of {expected_size} bytes")
        if magic and (not head.startswith(magic) or tail != magic or stat.st_size < 2 * len(magic)):
            raise _NotParquet(f"{stat.st_size:,} bytes starting {head!r}")
    return stat, digest.hexdigest()
