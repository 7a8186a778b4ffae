"""A model registry in a local folder or on object storage: numbered versions, one champion, every decision.

A monthly retraining run trains a challenger, writes its files into a staging
folder, and commits it: the registry numbers it, and decides under a lock
whether it replaces the champion, so two runs committing at once cannot both
read the same champion or claim the same number. Layout::

    REGISTRY/
      registry.json     {"format": "taxi-pipeline/registry/v1", "created": ISO-8601 UTC}; marks the folder as a registry
      versions/v0001/   a run's files: model.npz + model.json (if the model has a file) and metrics.json, then version.json LAST
      champion.json     {"version": "v0003", "since": ISO time}, replaced atomically (absent until the first promotion)
      history.jsonl     append-only decisions, one JSON object per line
      .lock             fcntl.flock'ed for every change (claiming a version number, deciding, promoting, rolling back)
      .staging/         where a run writes its files before they become a version

A version is complete when its ``version.json`` exists: it is written last, so
readers need no lock, and a folder without one (a commit killed half-way) is
never listed; its number is not reused. A commit that fails in this process is
undone: no version, no champion change, no history line, and the staged folder
is back where it was. Files and folders get the usual modes (0666/0777 less the
umask), so a team can read what a run registered.

On object storage (``s3://bucket/registry``) the layout is the same. There is
no rename and no flock: a run stages its files in a local temporary folder, and
a commit puts them under ``versions/vNNNN/`` then ``version.json`` last, so a
reader still sees a version whole or not at all; ``champion.json`` is one
whole-object put; ``history.jsonl`` is rewritten whole (read, add a line, put).
A commit that fails there leaves the objects it put without a ``version.json``:
an incomplete version, never listed, whose number is not reused.
``.lock`` is an object created by a conditional put (``If-None-Match``), which
keeps runs that commit at once apart; a lock left by a crashed run goes stale
after ten minutes (:data:`pipeline.edge.storage.STALE_AFTER`). Object stores
give no lease, so a writer stalled past that could overlap another: run one
retraining schedule per registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.core.config import ScoreConfig
from pipeline.core.decisions import Decision, decide
from pipeline.core.months import Month
from pipeline.edge import storage
from pipeline.edge.metrics import METRICS_FILE
from pipeline.edge.model_files import META_FILE
from pipeline.edge.storage import Location
from pipeline.errors import PipelineError

FORMAT = "taxi-pipeline/registry/v1"
VERSION_FORMAT = "taxi-pipeline/registry-version/v1"
REGISTRY_FILE = "registry.json"
VERSIONS_DIR = "versions"


def model_title(folder: str) -> str:
    """How a model folder reads in a title: ``model v0001 of REGISTRY`` for a registry's version, else the folder."""
    parts = storage.locate(folder).url.rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == VERSIONS_DIR and storage.exists(storage.locate(parts[0]) / REGISTRY_FILE):
        return f"model {parts[2]} of {parts[0]}"
    return f"model {folder}"


def model_folder(config: ScoreConfig) -> str:
    """The model folder a run scores with: ``config.model``, or a registry's version (default: its champion)."""
    if config.model is not None:
        return config.model
    store = Registry.open(config.registry or "")
    if config.version is not None:
        return str(store.version(config.version).path)
    champion = store.champion()
    if champion is None:
        raise PipelineError(f"{store.root}: no champion yet; retrain first, or name a --version")
    return str(champion.path)


VERSION_FILE = "version.json"
CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
STAGING_DIR = ".staging"

#: Decisions that move the champion pointer (a "keep" does not).
MOVES = ("promote", "manual-promote", "rollback")

_NAME = re.compile(r"^v(\d{4,})$")
#: Seconds a change waits for another run's change on object storage (each takes a few requests).
LOCK_WAIT = 120.0
#: Where a remote registry's runs stage their files: local temporary folders named so.
_REMOTE_STAGING = "taxi-pipeline-staging-"

#: A registry's root: a local folder, or a location on object storage.
Root = Path | Location


@dataclass(frozen=True)
class Version:
    """A complete registered version: its folder and the figures of the run that made it."""

    name: str
    path: Root
    created: str
    model: str
    train_months: tuple[str, ...]
    val_month: str
    val_rmse: float
    metrics: dict[str, Any]


@dataclass(frozen=True)
class _Figures:
    """What a commit needs from the staged ``metrics.json``."""

    model: str
    train_months: tuple[str, ...]
    val_month: str
    val_rmse: float


@dataclass(frozen=True)
class Survey:
    """What :meth:`Registry.survey` found: the versions that are whole, and one line per damaged part."""

    versions: list[Version]
    champion: str | None  # the champion's name if champion.json names one, whole or not
    problems: list[str]  # one line each, naming the file at fault
    damaged: dict[str, str]  # version name -> its problem


@dataclass(frozen=True)
class Registry:
    """A registry folder; get one with :meth:`Registry.open`. Holds no state but its path: every call reads the files."""

    root: Root

    @classmethod
    def open(cls, location: str | Path, create: bool = False) -> Registry:
        """The registry at ``location`` (a folder, ``file://`` path or ``s3://`` URL); ``create`` makes one at a missing or empty one.

        A non-empty folder without a valid ``registry.json`` is refused even with
        ``create``: a typo must not turn someone's folder into a registry.
        """
        where = storage.locate(location)
        if where.path is None:
            return cls._open_remote(where, create)
        root = Path(os.path.abspath(where.path))
        marker = root / REGISTRY_FILE
        if root.exists() and not root.is_dir():
            raise PipelineError(f"{root}: not a folder, so not a model registry")
        if not marker.exists():
            # Another run may be creating it right now: it takes the lock, writes registry.json (atomically) and only
            # then anything else. So a folder found non-empty is judged after looking for the marker again (it may
            # have appeared between the two looks), and one holding only a lock waits for that lock before judging.
            if root.exists() and not _empty(root) and not marker.exists():
                raise PipelineError(f"{root}: not a model registry (no {REGISTRY_FILE})")
            if not create:
                if (root / LOCK_FILE).exists():
                    with cls(root)._locked(shared=True):  # a creator holds it until registry.json is in place
                        pass
                if not marker.exists():
                    raise PipelineError(f"{root}: no model registry there")
                return cls._checked(root, _read_json(marker))
            root.mkdir(parents=True, exist_ok=True)
            registry = cls(root)
            with registry._locked():  # two runs creating the same registry at once: one writes, the other sees it
                if not marker.exists():
                    if not _empty(root):
                        raise PipelineError(f"{root}: not a model registry (no {REGISTRY_FILE})")
                    _write_json(marker, {"format": FORMAT, "created": _now()})
        return cls._checked(root, _read_json(marker))

    @classmethod
    def _open_remote(cls, root: Location, create: bool) -> Registry:
        marker = root / REGISTRY_FILE
        if not storage.exists(marker):
            if [name for name in storage.listdir(root) if name != LOCK_FILE]:
                raise PipelineError(f"{root}: not a model registry (no {REGISTRY_FILE})")
            if not create:
                raise PipelineError(f"{root}: no model registry there")
            document = (json.dumps({"format": FORMAT, "created": _now()}, indent=2, sort_keys=True) + "\n").encode()
            with contextlib.suppress(FileExistsError):  # two runs creating it at once: one put wins, the other reads it
                storage.put(marker, document, create=True)
        return cls._checked(root, _read_json(marker))

    @classmethod
    def _checked(cls, root: Root, document: dict[str, Any]) -> Registry:
        if document.get("format") != FORMAT:
            raise PipelineError(
                f"{root}: not a model registry ({REGISTRY_FILE} has format {document.get('format')!r}, expected {FORMAT!r})"
            )
        return cls(root)

    # --- reading: no lock (every file a reader looks at is replaced atomically or appended whole) ----------

    def versions(self) -> list[Version]:
        """Complete versions (with ``version.json``), oldest first."""
        return [self._load(self._versions / name) for name in self._names(complete=True)]

    def version(self, name: str) -> Version:
        """The version called ``name`` (``v0001``); a PipelineError naming the registry and what it holds if there is none."""
        folder = self._versions / name
        if not _NAME.match(name) or name != _name(int(name[1:])) or not _is_file(folder / VERSION_FILE):
            shown = name if name.isprintable() else repr(name)
            names = self._names(complete=True)
            held = "no versions yet" if not names else f"versions: {names[0]}" + (f"..{names[-1]}" if len(names) > 1 else "")
            raise PipelineError(f"{self.root}: no version {shown} ({held})")
        return self._load(folder)

    def champion(self) -> Version | None:
        """The current champion, checked whole (:meth:`verify`), or None before the first promotion."""
        name = self._champion_name()
        if name is None:
            return None
        version = self.version(name)
        self.verify(version)
        return version

    def recorded_champion(self) -> Version | None:
        """The champion the last decision in the history names, checked whole; None if there is none.

        ``champion.json`` moves first and the decision is appended after it, so this is what a damaged
        ``champion.json`` said (a crash between the two aside): a service starting on such a registry serves it.
        """
        decisions = self.history()
        name = decisions[-1].champion_after if decisions else None
        if name is None:
            return None
        version = self.version(name)
        self.verify(version)
        return version

    def verify(self, version: Version) -> None:
        """Refuse, in one line naming the file, a version whose files are not those it was registered with.

        Every file ``version.json`` lists must be there, with the SHA-256 recorded at commit (versions committed
        before digests were recorded: the model's own ``model.json`` must name the run ``metrics.json`` names).
        """
        folder = version.path
        record = _read_json(folder / VERSION_FILE)
        files = record.get("files")
        digests = record.get("digests")
        for name in files if isinstance(files, list) else []:
            path = folder / name
            try:
                data = storage.read_bytes(path)
            except FileNotFoundError:
                raise PipelineError(f"{path}: missing from version {version.name}; the version is damaged") from None
            expected = digests.get(name) if isinstance(digests, dict) else None
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                raise PipelineError(f"{path}: not the file {version.name} was registered with (replaced since); the version is damaged")
        run = version.metrics.get("flow_run_id")
        try:
            meta = json.loads(storage.read_bytes(folder / META_FILE))
        except FileNotFoundError:
            return  # a model without a model.json (none today) has nothing more to compare
        except ValueError as exc:
            raise PipelineError(f"{folder / META_FILE}: unreadable ({type(exc).__name__}: {exc}); the version is damaged") from None
        model_run = meta.get("run_id") if isinstance(meta, dict) else None
        if run is not None and model_run is not None and model_run != run:
            problem = f"model of run {model_run}, but {version.name} is run {run}'s: the version is damaged"
            raise PipelineError(f"{folder / META_FILE}: {problem}")

    def survey(self) -> Survey:
        """Everything readable, and one line per damaged part: for ``models list``, which shows what it can."""
        problems: list[str] = []
        versions: list[Version] = []
        damaged: dict[str, str] = {}
        for name in self._names(complete=True):
            try:
                version = self._load(self._versions / name)
                self.verify(version)
                versions.append(version)
            except PipelineError as exc:
                damaged[name] = str(exc)
                problems.append(str(exc))
        champion = None
        try:
            champion = self._champion_name()
            if champion is not None and champion not in damaged and champion not in {v.name for v in versions}:
                problems.append(f"{self.root / CHAMPION_FILE}: names {champion}, which is not a complete version")
                damaged[champion] = problems[-1]
        except PipelineError as exc:
            problems.append(str(exc))
        try:
            self.history()
        except PipelineError as exc:
            problems.append(str(exc))
        return Survey(versions, champion, problems, damaged)

    def history(self, *, held: bool = False) -> list[Decision]:
        """Every decision, oldest first; a torn last line (no newline) is refused in one line.

        A line is appended in one write under the lock, so a last line without its newline seen without the lock
        may be one being written: it is read again once the lock is free (``held``: the caller has it), and
        only then called torn: a run was killed while writing it.
        """
        path = self.root / HISTORY_FILE
        try:
            text = storage.read_bytes(path).decode()
            if text and not text.endswith("\n") and not held and isinstance(self.root, Path):
                with self._locked(shared=True):
                    text = storage.read_bytes(path).decode()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise PipelineError(f"{path}: unreadable ({exc})") from None
        if text and not text.endswith("\n"):
            torn = len(text) - (text.rfind("\n") + 1)
            raise PipelineError(
                f"{path}: last line torn ({torn} bytes with no end: a run killed while writing it); "
                "`taxi-pipeline retrain --repair` cuts it off"
            )
        decisions = []
        for number, line in enumerate(text.split("\n")[:-1], start=1):
            try:
                decisions.append(Decision.from_dict(json.loads(line)))
            except (ValueError, TypeError, KeyError) as exc:
                raise PipelineError(f"{path}: line {number} is not a decision ({type(exc).__name__}: {exc})") from None
        return decisions

    # --- changing: under the lock ---------------------------------------------------------------------------

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder under ``.staging/`` for a run's files; removed if the block raises.

        Staged beside the versions so that a commit is one rename on the same file
        system. A plain ``mkdir`` (not ``mkdtemp``, which makes 0700) keeps the umask's mode.
        A registry on object storage stages in a local temporary folder instead.
        """
        if isinstance(self.root, Location):
            remote = Path(tempfile.mkdtemp(prefix=_REMOTE_STAGING))
            try:
                yield remote
            finally:  # committed (uploaded) or not, the local copy goes
                shutil.rmtree(remote, ignore_errors=True)
            return
        folder = self.root / STAGING_DIR / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def commit(self, staged: Path, score_champion: Callable[[Version], float | None], repair: bool = False) -> tuple[Version, Decision]:
        """Register ``staged`` as the next version and decide, under the lock, whether it becomes champion.

        ``score_champion(champion)`` gives the champion's RMSE on the challenger's
        validation month (None: it cannot be scored, so the champion is kept). It is
        called under the lock, before anything changes: if it raises, nothing has.
        The first version is promoted; later ones iff better than the champion (a tie keeps it).
        A damaged champion (:meth:`verify`) or history is refused in one line, unless ``repair``:
        then the challenger replaces the champion, and a torn history line is cut off.
        """
        staged = Path(staged)
        if not self._stages(staged):
            raise PipelineError(f"{staged}: not a staging folder of {self.root} (write a run into Registry.staging())")
        if not staged.is_dir():
            raise PipelineError(f"{staged}: no such staging folder (already committed?)")
        if not (staged / METRICS_FILE).is_file():
            raise PipelineError(f"{staged}: no {METRICS_FILE}, so the run did not complete; not committed")
        if (staged / VERSION_FILE).exists():
            raise PipelineError(f"{staged}: has a {VERSION_FILE} of its own; the registry writes that file")
        figures = _figures(staged / METRICS_FILE)
        digests = {p.relative_to(staged).as_posix(): _sha256(p) for p in sorted(staged.rglob("*")) if p.is_file()}
        with self._locked():
            if not staged.is_dir():  # another process committed the same folder while this one waited
                raise PipelineError(f"{staged}: no such staging folder (already committed?)")
            self._check_history(repair)
            before, damage = self._champion_name_or_damage(repair)
            champion = None if before is None or damage else self.version(before)
            if champion is not None and not repair:
                self.verify(champion)
            champion_rmse = None if champion is None else score_champion(champion)
            action, reason, champion_rmse = decide(figures.val_month, figures.val_rmse, champion.name if champion else None, champion_rmse)
            if damage:
                reason = f"replaces a damaged champion ({damage})"
            name = self._next_name()
            folder = self._versions / name
            files = self._install(staged, name)
            try:
                record = {
                    "format": VERSION_FORMAT,
                    "name": name,
                    "created": _now(),
                    "model": figures.model,
                    "train_months": list(figures.train_months),
                    "val_month": figures.val_month,
                    "val_rmse": figures.val_rmse,
                    "files": files,
                    "digests": digests,
                }
                _write_json(folder / VERSION_FILE, record)
                if isinstance(folder, Path):
                    _fsync_dir(folder)
                    _fsync_dir(folder.parent)
                version = self._load(folder)
                decision = Decision(
                    action=action,
                    version=name,
                    champion_before=before,
                    champion_after=name if action == "promote" else before,
                    challenger_rmse=figures.val_rmse,
                    champion_rmse=champion_rmse,
                    val_month=figures.val_month,
                    reason=reason,
                    time=_now(),
                )
                self._record(decision)
            except BaseException:
                storage.delete(folder / VERSION_FILE)
                if isinstance(folder, Path):
                    os.rename(folder, staged)
                raise
        return version, decision

    def promote(self, name: str, reason: str = "manual") -> Decision:
        """Make ``name`` the champion whatever its figures (a manual override), recorded as "manual-promote"."""
        with self._locked():
            self._check_history(repair=False)
            self.verify(self.version(name))
            before, _ = self._champion_name_or_damage(repair=True)  # promoting by hand is one way to mend champion.json
            decision = Decision("manual-promote", name, before, name, None, None, None, reason, _now())
            self._record(decision)
        return decision

    def rollback(self) -> Decision:
        """Make the champion before the current one champion again, as the history says; recorded as "rollback".

        The history is read as a stack: a promotion pushes, a rollback pops back to
        its target, so rolling back twice walks back two champions. Versions since
        deleted are skipped.
        """
        with self._locked():
            current = self._champion_name()
            stack: list[str] = []
            for decision in self.history(held=True):
                if decision.action not in MOVES or decision.champion_after is None:
                    continue
                if decision.action == "rollback":
                    while stack and stack[-1] != decision.champion_after:
                        stack.pop()
                    stack = stack or [decision.champion_after]
                else:
                    stack.append(decision.champion_after)
            if current in stack:  # champion.json may be ahead of the history after a crash: then it is not in it
                stack = stack[: len(stack) - 1 - stack[::-1].index(current)]
            present = set(self._names(complete=True))
            target = next((name for name in reversed(stack) if name != current and name in present), None)
            if target is None:
                raise PipelineError(f"{self.root}: nothing to roll back to")
            reason = f"back to {target}, the champion before {current}" if current else f"back to {target}"
            decision = Decision("rollback", target, current, target, None, None, None, reason, _now())
            self._record(decision)
        return decision

    # --- the parts ---------------------------------------------------------------------------------------------

    @property
    def _versions(self) -> Root:
        return self.root / VERSIONS_DIR

    def _stages(self, staged: Path) -> bool:
        """Whether ``staged`` is one of this registry's staging folders (:meth:`staging`)."""
        if isinstance(self.root, Location):
            return staged.name.startswith(_REMOTE_STAGING) and staged.resolve().parent == Path(tempfile.gettempdir()).resolve()
        return staged.resolve().parent == (self.root / STAGING_DIR).resolve()

    def _install(self, staged: Path, name: str) -> list[str]:
        """Make the staged files version ``name``'s (its ``version.json`` still to come); their relative names.

        Locally one rename; on object storage one put per file.
        """
        files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        folder = self._versions / name
        if isinstance(folder, Path):
            folder.parent.mkdir(exist_ok=True)
            os.rename(staged, folder)
        else:
            for relative in files:
                storage.put(folder.child(*relative.split("/")), (staged / relative).read_bytes())
        return files

    @contextmanager
    def _locked(self, shared: bool = False) -> Iterator[None]:
        """Hold ``.lock`` exclusively, or ``shared`` to wait out a change in progress (not re-entrant: a second
        ``_locked`` in the same process waits for the first, then fails).

        Opened for writing as well: on NFS, flock is emulated with fcntl locks, which need that for an exclusive lock.
        A lock is never stale here: flock belongs to the open file, and the kernel drops it when its process dies
        (SIGKILL included), so a dead run's ``.lock`` is taken over at once, with no pid or age to guess from; the file
        itself stays and holds nothing. A live holder is waited for up to :data:`LOCK_WAIT` seconds, then refused in
        one line naming its pid. On object storage, ``.lock`` is an object put only if absent
        (:func:`pipeline.edge.storage.exclusive`), taken over once stale.
        """
        if isinstance(self.root, Location):
            lock = self.root / LOCK_FILE
            busy = f"{self.root}: {{holder}} holds {lock}; try again, or delete it if that run is gone"
            with storage.exclusive(lock, f"pid {os.getpid()}", LOCK_WAIT, busy):
                yield
            return
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise PipelineError(
                            f"{path}: held by {_lock_holder(path)} for over {LOCK_WAIT:g} s (a change still running?); "
                            "try again once it ends, or stop that process: its lock goes with it"
                        ) from None
                    time.sleep(0.05)
            if not shared:  # who holds it, for the message above; emptied again before it is let go
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # a killed holder's words may still be in it
                    os.pwrite(fd, storage.owner_document("registry change"), 0)
            try:
                yield
            finally:
                if not shared:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock

    def _names(self, complete: bool) -> list[str]:
        """Version folder names by number; with ``complete``, only those with a ``version.json``."""
        entries = storage.listdir(self._versions)
        numbers = sorted(int(m[1]) for m in map(_NAME.match, entries) if m)
        names = [_name(n) for n in numbers]
        return [n for n in names if _is_file(self._versions / n / VERSION_FILE)] if complete else names

    def _next_name(self) -> str:
        """One past every folder in ``versions/``, complete or not: a number is never given twice."""
        names = self._names(complete=False)
        return _name(int(names[-1][1:]) + 1 if names else 1)

    def _load(self, folder: Root) -> Version:
        record, path = _read_json(folder / VERSION_FILE), folder / VERSION_FILE
        if record.get("name") != folder.name:
            raise PipelineError(f"{path}: names version {record.get('name')!r}, but its folder is {folder.name}")
        try:
            return Version(
                name=folder.name,
                path=folder,
                created=str(record["created"]),
                model=str(record["model"]),
                train_months=tuple(str(m) for m in record["train_months"]),
                val_month=str(record["val_month"]),
                val_rmse=float(record["val_rmse"]),
                metrics=_read_json(folder / METRICS_FILE),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: malformed ({type(exc).__name__}: {exc})") from None

    def _champion_name(self) -> str | None:
        path = self.root / CHAMPION_FILE
        try:
            name = _read_json(path, missing_ok=True).get("version")
        except FileNotFoundError:
            return None
        if not isinstance(name, str):
            raise PipelineError(f"{path}: no version named in it")
        return name

    def _champion_name_or_damage(self, repair: bool) -> tuple[str | None, str | None]:
        """The champion's name and, with ``repair``, what is wrong with it (None if whole); without, damage raises."""
        try:
            name = self._champion_name()
            if name is not None:
                self.verify(self.version(name))
            return name, None
        except PipelineError as exc:
            if not repair:
                raise PipelineError(f"{exc}; the champion is damaged: `taxi-pipeline retrain --repair` replaces it") from None
            with contextlib.suppress(PipelineError):
                return self._champion_name(), str(exc)
            return None, str(exc)

    def _check_history(self, repair: bool) -> None:
        """Under the lock: a torn last line of ``history.jsonl`` refused, or with ``repair`` cut off (kept aside)."""
        try:
            self.history(held=True)
        except PipelineError:
            path = self.root / HISTORY_FILE
            text = _read_or_none(path) or b""
            if not repair or text.endswith(b"\n"):
                raise
            end = text.rfind(b"\n") + 1
            storage.put(self.root / f"{HISTORY_FILE}.torn-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}", text[end:])
            storage.put(path, text[:end])

    def check_for_commit(self, repair: bool = False) -> None:
        """Refuse now, in one line, a registry a commit would refuse (a damaged champion or history), unless ``repair``."""
        if repair:
            return
        self.history()
        self._champion_name_or_damage(repair=False)

    def _record(self, decision: Decision) -> None:
        """Move the champion pointer if the decision does, then append the decision; undo the pointer if the append fails."""
        champion = self.root / CHAMPION_FILE
        moves = decision.champion_after is not None and decision.champion_after != decision.champion_before
        previous = _read_or_none(champion)
        if moves:
            _write_json(champion, {"version": decision.champion_after, "since": decision.time})
            if isinstance(self.root, Path):
                _fsync_dir(self.root)
        try:
            _append_line(self.root / HISTORY_FILE, json.dumps(decision.to_dict(), sort_keys=True))
        except BaseException:
            if moves:
                if previous is None:
                    storage.delete(champion)
                else:
                    storage.put(champion, previous)
            raise


def _figures(path: Root) -> _Figures:
    """The challenger's figures from a ``metrics.json`` (only the fields a decision needs, so added fields do not matter)."""
    document = _read_json(path)
    try:
        rmse = document["val_rmse"]
        if isinstance(rmse, bool) or not isinstance(rmse, (int, float)) or not math.isfinite(rmse):
            raise ValueError(f"val_rmse {rmse!r} is not a finite number")
        months = document["train_months"]
        if not isinstance(months, list) or not all(isinstance(m, str) for m in months):
            raise ValueError(f"train_months {months!r} is not a list of months")
        if not isinstance(document["model"], str) or not isinstance(document["val_month"], str):
            raise ValueError("model and val_month must be strings")
        return _Figures(
            model=document["model"],
            train_months=tuple(str(Month.parse(m)) for m in months),
            val_month=str(Month.parse(document["val_month"])),
            val_rmse=float(rmse),
        )
    except (KeyError, ValueError, PipelineError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise PipelineError(f"{path}: not a run's metrics ({detail})") from None


def _lock_holder(path: Path) -> str:
    """Who holds a local ``.lock``, as its holder wrote it (pid, host, since when)."""
    try:
        document = json.loads(path.read_bytes())
        since = datetime.fromtimestamp(float(document["since"]), timezone.utc).isoformat(timespec="seconds")
        return f"pid {int(document['pid'])} on {document['host']} since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _empty(root: Path) -> bool:
    """Nothing in the folder but a lock, or a ``registry.json`` being written by a concurrent ``open(create=True)``."""
    return all(entry == LOCK_FILE or (entry.startswith(f".{REGISTRY_FILE}.") and entry.endswith(".tmp")) for entry in os.listdir(root))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _name(number: int) -> str:
    return f"v{number:04d}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _is_file(path: Root) -> bool:
    return path.is_file() if isinstance(path, Path) else storage.exists(path)


def _read_or_none(path: Root) -> bytes | None:
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        return None


def _read_json(path: Root, missing_ok: bool = False) -> dict[str, Any]:
    """The JSON object at ``path``; with ``missing_ok`` a missing file is ``FileNotFoundError``, else one line."""
    try:
        document = json.loads(storage.read_bytes(path))
    except FileNotFoundError:
        if missing_ok:
            raise
        raise PipelineError(f"{path}: unreadable (FileNotFoundError: no such file)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(document, dict):
        raise PipelineError(f"{path}: not a JSON object")
    return document


def _write_json(path: Root, document: dict[str, Any]) -> None:
    storage.put(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def _append_line(path: Root, line: str) -> None:
    """Append one line in one write, flushed to disk; a short write is cut back off, so the file holds whole lines only.

    On object storage the object is rewritten whole with the line added (callers hold the registry's lock).
    """
    data = (line + "\n").encode()
    if not isinstance(path, Path):
        storage.put(path, (_read_or_none(path) or b"") + data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"{path}: short write")
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make renames and new names in ``folder`` durable (a crash must not lose a registered version)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
