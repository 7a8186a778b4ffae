"""Where outputs go: one place that turns a location (a folder, ``file://``, ``s3://`` or any fsspec URL) into reads and writes.

Locally a write is atomic (a temporary file renamed into place, flushed, with
the umask's mode, as :mod:`pipeline.edge.atomic` does); remotely it is one
whole-object put, which object stores make visible all at once. Callers write
data objects first and the object that marks them complete last, so a reader
never takes a half-written set for a whole one.

Options for the file system (``endpoint_url``, ``anon``, ``client_kwargs``...)
come from ``--storage-options``, carried to every process of a run (Dask
workers included) in ``$TAXI_PIPELINE_STORAGE_OPTIONS`` as inline JSON or
``@FILE``. Inline JSON may not hold secrets: those come from the environment,
the AWS config files or a file (botocore's usual chain), never from a command
line. No error message names an option's value.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from pipeline.edge.atomic import write_bytes
from pipeline.edge.processes import alive
from pipeline.errors import PipelineError

STORAGE_OPTIONS_ENV = "TAXI_PIPELINE_STORAGE_OPTIONS"
_T = TypeVar("_T")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Option names that hold credentials (``key``, ``secret``, ``token``, ``aws_secret_access_key``, ``session_token``...).
_SECRET = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?|sas)(_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Location:
    """A folder or object: ``path`` on this machine, or ``url`` on a remote file system (then ``path`` is None)."""

    url: str
    path: Path | None

    @property
    def remote(self) -> bool:
        return self.path is None

    def child(self, *names: str) -> Location:
        """The location ``names`` below this one."""
        if self.path is not None:
            return Location(str(self.path.joinpath(*names)), self.path.joinpath(*names))
        return Location("/".join([self.url.rstrip("/"), *names]), None)

    def __truediv__(self, name: str) -> Location:
        return self.child(name)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.url


#: What names a folder or object: a local path, a location string (``s3://bucket/prefix``) or a :class:`Location`.
Where = str | os.PathLike[str] | Location


def locate(where: Where) -> Location:
    """The :class:`Location` a folder, ``file://`` URL or fsspec URL names."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    scheme = _SCHEME.match(text)
    if scheme is None:
        path = Path(text).expanduser()
        return Location(str(path), path)
    if scheme[1].lower() == "file":
        url = urlsplit(text)
        if url.netloc not in ("", "localhost") or not url.path:
            raise PipelineError(f"{text}: a file:// location is on this machine: file:///absolute/path")
        path = Path(unquote(url.path))
        return Location(str(path), path)
    return Location(text.rstrip("/"), None)


def is_remote(where: Where) -> bool:
    """Whether ``where`` is on a remote file system (``s3://``...), not a folder here."""
    return locate(where).remote


# --- options -------------------------------------------------------------------------------------------------


def parse_options(text: str, flag: str = "--storage-options") -> dict[str, Any]:
    """``--storage-options``: a JSON object, or ``@FILE`` holding one; inline secrets are refused."""
    if text.startswith("@"):
        try:
            text_from_file = Path(text[1:]).expanduser().read_text()
        except OSError as exc:
            raise PipelineError(f"{flag} {text}: cannot read the file ({type(exc).__name__})") from None
        return _json_object(text_from_file, f"{flag} {text}")
    options = _json_object(text, flag)
    secrets = sorted(_secret_keys(options))
    if secrets:
        raise PipelineError(
            f"{flag}: {', '.join(secrets)} looks like a credential and would show in the shell history and process list; "
            "set it in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the AWS config files, or @FILE"
        )
    return options


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as exc:  # the message names a position, never the text
        raise PipelineError(f"{what}: not valid JSON ({str(exc).split(':')[0]})") from None
    if not isinstance(document, dict):
        raise PipelineError(f"{what}: expected a JSON object of file system options")
    return document


def _secret_keys(options: dict[str, Any]) -> Iterator[str]:
    for key, value in options.items():
        if _SECRET.search(str(key)):
            yield str(key)
        if isinstance(value, dict):
            yield from _secret_keys(value)


def options() -> dict[str, Any]:
    """This run's file system options: ``$TAXI_PIPELINE_STORAGE_OPTIONS`` (JSON or ``@FILE``), else none."""
    text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    if text.startswith("@"):
        return parse_options(text)
    return _json_object(text, f"${STORAGE_OPTIONS_ENV}")


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system and path for a remote ``url``, with this run's options."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **options())
    except (ImportError, ValueError, TypeError) as exc:
        raise PipelineError(f"{url}: cannot open this location ({_one_line(exc)})") from None
    return fs, str(path)


# --- reading and writing -------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


@contextmanager
def failures(what: Location | str, action: str, keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn a storage failure into one line naming the object; a missing (or, creating, existing) object stays as it is.

    Covers what s3fs raises (``OSError``, ``PermissionError``) and what botocore
    and aiobotocore raise past it (connection refused, bad credentials). The
    message is the backend's, which names the endpoint and the object but never
    a credential. Exceptions of ``keep`` pass unchanged (a caller that retries them).
    """
    passing: tuple[type[BaseException], ...] = (FileNotFoundError, FileExistsError, PipelineError, *keep)
    try:
        yield
    except passing:
        raise
    except Exception as exc:
        if not isinstance(exc, OSError) and not type(exc).__module__.startswith(("botocore", "aiobotocore", "aiohttp", "fsspec", "s3fs")):
            raise
        hint = "; access denied: check the credentials (environment, AWS config files) and the bucket's policy"
        raise PipelineError(f"{what}: cannot {action} ({_one_line(exc)}){hint if isinstance(exc, PermissionError) else ''}") from None


def _apply(where: Where, action: str, local: Callable[[Path], _T], remote: Callable[[Any, str], _T]) -> _T:
    """``local(path)`` for a local location, else ``remote(fs, path)``; failures as one line naming the object."""
    loc = locate(where)
    with failures(loc, action):
        if loc.path is not None:
            return local(loc.path)
        fs, path = filesystem(loc.url)
        return remote(fs, path)


def read_bytes(where: Where) -> bytes:
    """The object's bytes; ``FileNotFoundError`` if there is none, else one PipelineError line."""
    return _apply(where, "read", Path.read_bytes, lambda fs, path: bytes(fs.cat_file(path)))


def put(where: Where, data: bytes | memoryview, *, create: bool = False, parents: bool = True) -> None:
    """Write the whole object: locally atomically (temp + rename), remotely one put.

    ``data`` may be a view (of an Arrow buffer, say): a local write takes it as it is.

    ``create`` puts only if nothing is there (a conditional put remotely,
    ``If-None-Match: *`` on S3); else ``FileExistsError``. Locally, missing folders
    are made unless ``parents`` is false (then ``FileNotFoundError``).
    """

    def local(path: Path) -> None:
        if create:
            _create_local(path, data)
        else:
            write_bytes(path, lambda fh: fh.write(data), parents=parents)

    # s3fs: mode "create" is a put with If-None-Match, refused as FileExistsError
    _apply(where, "write", local, lambda fs, path: fs.pipe_file(path, bytes(data), mode="create" if create else "overwrite"))


def _create_local(path: Path, data: bytes | memoryview) -> None:
    """Create ``path`` with ``data`` only if it does not exist (``O_EXCL``: one of two racing creators wins)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def exists(where: Where) -> bool:
    return _apply(where, "look up", Path.exists, lambda fs, path: bool(fs.exists(path)))


def listdir(where: Where) -> list[str]:
    """Names directly under a folder or prefix, sorted; none if it does not exist."""

    def remote(fs: Any, path: str) -> list[str]:
        try:
            entries = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted({entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry.rstrip("/") != path.rstrip("/")})

    return _apply(where, "list", lambda path: sorted(os.listdir(path)) if path.is_dir() else [], remote)


def delete(where: Where) -> None:
    """Remove one object (or local file); nothing there is fine."""

    def remote(fs: Any, path: str) -> None:
        with suppress(FileNotFoundError):
            fs.rm_file(path)

    _apply(where, "delete", lambda path: path.unlink(missing_ok=True), remote)


def delete_tree(where: Where) -> None:
    """Remove a folder or prefix and everything under it; nothing there is fine."""

    def remote(fs: Any, path: str) -> None:
        with suppress(FileNotFoundError):
            fs.rm(path, recursive=True)

    _apply(where, "delete", lambda path: shutil.rmtree(path, ignore_errors=True), remote)


def copy(source: Where, target: Where) -> None:
    """Copy one object whole: server side when both ends are on object storage."""
    src, dst = locate(source), locate(target)
    if not (src.remote and dst.remote):
        put(dst, read_bytes(src))
        return
    with failures(dst, "write"):
        fs, path = filesystem(src.url)
        fs.copy(path, filesystem(dst.url)[1])


def stamp(where: Where) -> str | None:
    """What changes when a remote object is replaced (its ETag, time and size), or None if it is not there."""
    loc = locate(where)
    fs, path = filesystem(loc.url)
    try:
        info = fs.info(path, refresh=True)  # s3fs caches listings; a stamp must be fresh
    except (OSError, ValueError):
        return None
    return json.dumps({k: str(v) for k, v in sorted(info.items()) if k.lower() in ("etag", "lastmodified", "size", "mtime")})


def probe(where: Where) -> None:
    """Fail now, in one line, if a remote location cannot be reached or read (wrong credentials, no server)."""
    loc = locate(where)
    if loc.remote:
        listdir(loc)


# --- a lock that works on object storage too -------------------------------------------------------------------

#: A lock older than this is a crashed holder's, whatever host it names.
STALE_AFTER = 600.0


@contextmanager
def exclusive(lock: Where, owner: str, wait: float, busy: str) -> Iterator[None]:
    """Hold the object ``lock`` for ``owner``: created only if absent (``O_EXCL`` here, a conditional put remotely).

    Waits up to ``wait`` seconds for a live holder, then raises ``busy`` (``{holder}``
    filled in) as a PipelineError. A lock whose process is gone (same host, local)
    or older than :data:`STALE_AFTER` is taken over. Object stores have no lease:
    this keeps well-behaved writers apart, and a crashed one's lock goes stale.
    """
    import time

    where = locate(lock)
    document = owner_document(owner)
    deadline = time.monotonic() + wait
    while True:
        try:
            put(where, document, create=True)
            break
        except FileExistsError:
            holder = _holder(where)
            if holder is None:
                delete(where)
                continue
            if time.monotonic() >= deadline:
                raise PipelineError(busy.replace("{holder}", holder)) from None
            time.sleep(0.2)
    try:
        yield
    finally:
        with suppress(PipelineError):  # the store gone mid-write: the error being raised says so
            delete(where)


def owner_document(owner: str) -> bytes:
    """What a lock or a run's mark holds: who wrote it, where and when, for :func:`owner_gone` and staleness."""
    import socket
    import time

    return json.dumps({"run": owner, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()


def owner_gone(where: Location, document: dict[str, Any]) -> bool:
    """The process that wrote ``document`` into the local ``where`` has ended (it names this host and a dead pid).

    On object storage nothing is concluded: its writers may be other machines, whatever name they give.
    """
    import socket

    return not where.remote and document.get("host") == socket.gethostname() and not alive(int(document.get("pid", 0)))


def _holder(lock: Location) -> str | None:
    """Who holds ``lock``, or None if nobody does or it is stale."""
    import time

    try:
        document = json.loads(read_bytes(lock))
    except FileNotFoundError:
        return None
    except ValueError:
        return "(being written)"  # created, its content not in yet: a live holder
    if time.time() - float(document.get("since", 0)) > STALE_AFTER:
        return None
    if owner_gone(lock, document):
        return None
    return str(document.get("run"))
