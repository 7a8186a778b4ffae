"""Where the served model comes from, and how a new champion replaces it without a restart.

A request reads :attr:`ModelSlot.current` once and keeps that :class:`Served`
to the end, so a swap never changes the model under a request in flight. Only
:meth:`ModelSlot.refresh` swaps it; the app calls it from a background task,
never from a request.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from pipeline.core.boosted import BoostedModel
from pipeline.core.features import FeatureSpec
from pipeline.core.model import EstimatorModel, Model
from pipeline.edge import model_files, storage
from pipeline.edge.registry import CHAMPION_FILE, Registry, Root
from pipeline.errors import PipelineError
from pipeline.service.payload import TripParser

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the service needs of a model: :class:`Model` (linear) and :class:`EstimatorModel` (scikit-learn) both have it."""

    @property
    def spec(self) -> FeatureSpec: ...

    @property
    def metadata(self) -> dict[str, Any]: ...

    def predict_codes(
        self, pu: np.ndarray, do: np.ndarray, x: np.ndarray, levels: np.ndarray | None = None, pickup: np.ndarray | None = None
    ) -> np.ndarray: ...


def load(directory: storage.Where) -> Predictor:
    """The one place a model folder is read: whichever model file format the edge knows (linear ``.npz``, skops)."""
    return model_files.load_any(directory)


def model_format(model: Predictor) -> str:
    """The format tag of a loaded model (the loaders take it out of the metadata they hand back)."""
    formats: dict[type, str] = {
        Model: model_files.FORMAT,
        EstimatorModel: model_files.SKOPS_FORMAT,
        BoostedModel: model_files.BOOSTED_FORMAT,
    }
    return formats.get(type(model), type(model).__name__)


@dataclass(frozen=True)
class ModelSource:
    """A model folder (served as it was at start) or a registry (its champion, followed as it changes)."""

    kind: Literal["folder", "registry"]
    location: str

    @classmethod
    def folder(cls, path: str | os.PathLike[str]) -> ModelSource:
        """A folder holding ``model.npz`` + ``model.json``, as ``train --output`` writes it."""
        return cls("folder", os.fspath(path))

    @classmethod
    def registry(cls, path: str | os.PathLike[str]) -> ModelSource:
        """A model registry folder (or ``file://`` path): its champion is served, and a new one picked up."""
        return cls("registry", os.fspath(path))

    def __str__(self) -> str:
        return f"{self.kind} {self.location}"


@dataclass(frozen=True)
class Served:
    """A loaded model with everything a request needs, built once per load so requests do no set-up."""

    model: Predictor
    version: str | None  # the registry's version name; None for a folder
    format: str
    parser: TripParser
    metrics: dict[str, Any]  # the run's metrics.json document ({} if unknown)

    @classmethod
    def build(cls, model: Predictor, version: str | None, metrics: dict[str, Any] | None, max_batch: int) -> Served:
        document = model.metadata.get("metrics")
        if not isinstance(document, dict):
            document = metrics or {}
        taxi = document.get("taxi", model.metadata.get("taxi"))
        pickup = bool(getattr(model, "needs_pickup", False))
        parser = TripParser(model.spec, max_batch, taxi if isinstance(taxi, str) else "yellow", pickup)
        return cls(model, version, model_format(model), parser, document)

    def describe(self) -> dict[str, Any]:
        """The ``GET /model`` document; a figure missing from the metrics, or of another type, is null."""
        figures = self.metrics
        months = figures.get("train_months")
        month = figures.get("val_month")
        rmse = figures.get("val_rmse")
        return {
            "version": self.version,
            "format": self.format,
            "train_months": months if isinstance(months, list) and all(isinstance(m, str) for m in months) else None,
            "val_month": month if isinstance(month, str) else None,
            "val_rmse": float(rmse) if isinstance(rmse, (int, float)) and not isinstance(rmse, bool) else None,
            "numeric": list(self.model.spec.numeric),
            "terms": list(self.model.spec.terms),
            "fields": list(self.parser.fields),
        }

    def __str__(self) -> str:
        return f"{self.version or 'the model'} ({self.format})"


#: How a file is told apart from its replacement: an atomic replace gives a new inode even within mtime's granularity;
#: an object on object storage, a new ETag.
Signature = tuple[int, int, int] | str | None


def _signature(path: Root) -> Signature:
    if not isinstance(path, Path):
        return storage.stamp(path)
    try:
        info = os.stat(path)
    except OSError:  # gone, or unreadable: then reading the champion says why, once
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class ModelSlot:
    """The model being served, and the source it comes from.

    ``current`` is one attribute read (atomic under the GIL); ``refresh`` builds
    the next :class:`Served` completely before swapping it in. With a registry it
    stats ``champion.json`` and loads only when that file changed: a promotion,
    a rollback or a first champion. A champion that fails to load is logged and
    the previous model stays; nothing is retried until the file changes again. With no
    model yet (a process starting), a damaged ``champion.json`` is read past: the
    champion the history records is served.
    """

    def __init__(self, source: ModelSource, max_batch: int) -> None:
        self.source = source
        self.max_batch = max_batch
        self.current: Served | None = None
        self.problem: str | None = None  # why there is no model, or why the newest champion is not served
        self._lock = threading.Lock()  # one refresh at a time (the watcher's, or a caller's)
        self._seen: Signature = None
        self._looked = False
        self._registry: Registry | None = None
        if source.kind == "folder":
            self.current = Served.build(load(source.location), None, None, max_batch)
        else:
            self._registry = Registry.open(source.location)
            self.problem = f"{self._registry.root}: no champion yet"
            self.refresh()

    def _recorded(self, registry: Registry) -> Served | None:
        """The champion the registry's history records, loaded, or None (no history, or that version damaged too)."""
        try:
            version = registry.recorded_champion()
            return None if version is None else Served.build(load(version.path), version.name, version.metrics, self.max_batch)
        except (PipelineError, OSError):
            return None

    @property
    def watches(self) -> bool:
        """Whether ``refresh`` can ever change anything (a folder is read once)."""
        return self._registry is not None

    def refresh(self) -> bool:
        """Serve the registry's champion if ``champion.json`` changed since the last look; True if the model changed."""
        registry = self._registry
        if registry is None:
            return False
        with self._lock:
            signature = _signature(registry.root / CHAMPION_FILE)  # before reading: a change after it is seen next time
            if self._looked and signature == self._seen:
                return False
            self._seen, self._looked = signature, True
            served = self.current
            try:
                version = registry.champion()
                if version is None:
                    return False
                if served is not None and served.version == version.name:  # back to the model being served
                    self.problem = None
                    return False
                fresh = Served.build(load(version.path), version.name, version.metrics, self.max_batch)
            except (PipelineError, OSError) as exc:
                self.problem = f"{registry.root}: champion not loaded ({exc})"
                recorded = self._recorded(registry) if served is None else None
                if recorded is None:
                    log.error("%s; still serving %s", self.problem, served.version if served else "nothing")
                    return False
                self.current = recorded  # a process starting on a damaged champion.json: the champion the history records
                log.error("%s; serving %s, the champion history.jsonl records", self.problem, recorded.version)
                return True
            self.current, self.problem = fresh, None
            log.info("serving %s from %s (was %s)", fresh.version, registry.root, served.version if served else "nothing")
            return True
