"""The models' files: ``model.json`` (format tag, feature spec, metadata) beside ``model.npz``, ``model.skops`` or ``model.ubj``.

A linear model's weights are arrays in ``model.npz``, read with ``allow_pickle=False``.
A row-fitted HistGradientBoosting pipeline is a skops file, ``model.skops``:
loading it builds only the types skops trusts by default (NumPy, SciPy,
scikit-learn estimators) and the few of :data:`TRUSTED_TYPES`, and refuses a
file naming any other type before anything in it is imported or run. Either way
a model file can be loaded from an untrusted place without running its code.
``model.json`` is written last and names each data file's SHA-256 (``files``): a
reader that meets a data file of another run than the ``model.json`` it read
(a run replacing the folder meanwhile) is told so instead of mixing the two.
A folder is a local path or any location :mod:`pipeline.edge.storage` reads.
An XGBoost booster is XGBoost's own UBJSON, ``model.ubj`` (trees and numbers only).
skops (and through it scikit-learn), and xgboost, are imported only when a skops file is
written or read: both take seconds to import, and the flow process needs neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import numpy as np

from pipeline.core import boosted
from pipeline.core.boosted import BoostedModel, BoostedParams
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import EstimatorModel, Model
from pipeline.core.solve import Weights
from pipeline.edge import storage
from pipeline.edge.storage import Location, Where
from pipeline.errors import PipelineError

FORMAT = "taxi-pipeline/linear-pairs/v1"
SKOPS_FORMAT = "taxi-pipeline/sklearn-skops/v1"
WEIGHTS_FILE = "model.npz"
ESTIMATOR_FILE = "model.skops"
META_FILE = "model.json"
#: ``model.json``'s map of data file name to SHA-256 (absent in folders written before it existed: then not checked).
FILES_KEY = "files"

#: The types a ``model.skops`` may name beyond skops's defaults: exactly what
#: ``skops.io.get_untrusted_types`` reports for a fitted ``hist_gradient_boosting``
#: pipeline (scikit-learn 1.9; tests/test_estimator_files.py recomputes it, so a
#: scikit-learn that needs another list fails a test, not a user). ``partial`` and
#: ``check_array`` are HistGradientBoosting's own ``partial(check_array, ...)``;
#: a partial of any other function names that function, which is not trusted.
TRUSTED_TYPES: tuple[str, ...] = (
    "functools.partial",
    "pipeline.core.estimators._ZoneCategories",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
)


def model_objects(model: Model) -> dict[str, bytes]:
    """A linear model's objects in write order: ``model.npz``, then ``model.json`` naming its digest."""
    w = model.weights
    buffer = io.BytesIO()
    arrays = {"intercept": np.array([w.intercept]), "pu": w.pu, "do": w.do, "pair": w.pair, "numeric": w.numeric}
    if w.levels.size:  # a model without factors keeps the layout older readers know
        arrays["levels"] = w.levels
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    vocabulary = {
        "pickup_zones": np.flatnonzero(w.pu).tolist(),
        "dropoff_zones": np.flatnonzero(w.do).tolist(),
        "pairs": int(np.count_nonzero(w.pair)),
    }
    meta = {**model.metadata, "format": FORMAT, "features": model.spec.to_dict(), "vocabulary": vocabulary}
    return _with_meta({WEIGHTS_FILE: buffer.getvalue()}, meta)


def _with_meta(data: dict[str, bytes], meta: dict[str, Any]) -> dict[str, bytes]:
    """``data`` then ``model.json``: ``meta`` plus the SHA-256 of every data file."""
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}
    return {**data, META_FILE: json.dumps({**meta, FILES_KEY: digests}, indent=2, sort_keys=True).encode()}


def save_objects(objects: dict[str, bytes], directory: Where) -> None:
    """Write each object whole, in order (``model.json`` last)."""
    folder = storage.locate(directory)
    for name, data in objects.items():
        storage.put(folder.child(name), data)


def save_model(model: Model, directory: Where) -> None:
    """Write ``model.npz`` then ``model.json``, each atomically (a whole-object put remotely)."""
    save_objects(model_objects(model), directory)


def _check_digest(folder: Location, name: str, meta: dict[str, Any], data: bytes) -> None:
    """Refuse a data file other than the one ``model.json`` names (checked after the content's own checks)."""
    files = meta.get(FILES_KEY)
    expected = files.get(name) if isinstance(files, dict) else None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise PipelineError(f"{folder.child(name)}: not the file {META_FILE} describes (another run replaced the folder meanwhile?)")


def load_model(directory: Where) -> Model:
    """Read a saved model; refuses anything that is not this format, or arrays of the wrong shape."""
    directory = storage.locate(directory)
    try:
        meta = json.loads(storage.read_bytes(directory.child(META_FILE)))
        blob = storage.read_bytes(directory.child(WEIGHTS_FILE))
        arrays = np.load(io.BytesIO(blob), allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError(f"{WEIGHTS_FILE} is not an .npz archive")
        with arrays:
            data = {name: arrays[name] for name in ("intercept", "pu", "do", "pair", "numeric")}
            data["levels"] = arrays["levels"] if "levels" in arrays.files else np.zeros(0)
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{directory}: not a readable model ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        named = meta.get("format") if isinstance(meta, dict) else None
        raise PipelineError(f"{directory.child(META_FILE)}: unknown model format {named!r}")
    try:
        spec = FeatureSpec.from_dict(meta["features"])
    except (KeyError, TypeError, ValueError, PipelineError) as exc:
        raise PipelineError(f"{directory.child(META_FILE)}: unreadable feature description ({type(exc).__name__}: {exc})") from None
    shapes = {
        "pu": (N_ZONES,),
        "do": (N_ZONES,),
        "pair": (N_PAIRS,),
        "numeric": (len(spec.numeric),),
        "intercept": (1,),
        "levels": (spec.levels,),
    }
    for name, shape in shapes.items():
        if data[name].shape != shape or data[name].dtype != np.float64:
            raise PipelineError(f"{directory.child(WEIGHTS_FILE)}: array {name!r} has shape {data[name].shape}, expected {shape}")
    _check_digest(directory, WEIGHTS_FILE, meta, blob)
    weights = Weights(float(data["intercept"][0]), data["pu"], data["do"], data["pair"], data["numeric"], data["levels"])
    extra = {k: v for k, v in meta.items() if k not in ("format", "features", "vocabulary", FILES_KEY)}
    return Model(weights, spec, extra)


def dump_estimator(fitted: Any) -> bytes:
    """A fitted estimator pipeline as the bytes of a ``model.skops`` (deflated: a quarter of the size, same speed)."""
    import skops.io

    return bytes(skops.io.dumps(fitted, compression=zipfile.ZIP_DEFLATED))


def _read_data(path: Location, format_: str) -> bytes:
    """A model's data file, or one line saying it is missing (though ``model.json`` names ``format_``) or unreadable."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing, though {META_FILE} says {format_}") from None
    except OSError as exc:
        raise PipelineError(f"{path}: not readable ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _untrusted(data: bytes, path: Location) -> list[str]:
    """Types the skops bytes name that neither skops nor :data:`TRUSTED_TYPES` trust; reads the schema, builds nothing."""
    import skops.io

    if not data:  # skops would say "Exactly one of data or file should be passed"
        raise PipelineError(f"{path}: not a readable skops model file (empty)")
    try:
        named = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # a damaged zip or schema fails in many ways; each is one line naming the file
        raise PipelineError(f"{path}: not a readable skops model file ({_one_line(exc)})") from None
    return sorted(set(named) - set(TRUSTED_TYPES))


def estimator_objects(data: bytes, spec: FeatureSpec, metadata: dict[str, Any], directory: Where) -> dict[str, bytes]:
    """An estimator's objects in write order: ``model.skops`` (``data``, from :func:`dump_estimator`), then ``model.json``.

    Refuses bytes that :func:`load_estimator` would refuse, so no run writes a model it cannot read back.
    """
    path = storage.locate(directory).child(ESTIMATOR_FILE)
    untrusted = _untrusted(data, path)
    if untrusted:
        raise PipelineError(f"{path}: not saved: the model names untrusted types: {', '.join(untrusted)}")
    return _with_meta({ESTIMATOR_FILE: data}, {**metadata, "format": SKOPS_FORMAT, "features": spec.to_dict()})


def save_estimator_bytes(data: bytes, spec: FeatureSpec, metadata: dict[str, Any], directory: Where) -> None:
    """Write ``model.skops`` (``data``, maybe made on a Dask worker) then ``model.json``, each whole."""
    save_objects(estimator_objects(data, spec, metadata, directory), directory)


def save_estimator(model: EstimatorModel, directory: Where) -> None:
    """Write ``model.skops`` then ``model.json``, each atomically."""
    save_estimator_bytes(dump_estimator(model.fitted), model.spec, model.metadata, directory)


def _read_meta(directory: Location) -> dict[str, Any]:
    """``model.json`` as a dict, or one line saying why this folder holds no model."""
    path = directory.child(META_FILE)
    try:
        text = storage.read_bytes(path).decode()
    except FileNotFoundError:
        raise PipelineError(f"{directory}: not a model folder (no {META_FILE})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not readable ({_one_line(exc)})") from None
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise PipelineError(f"{path}: not a model description ({_one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise PipelineError(f"{path}: not a model description (a JSON {type(meta).__name__}, not an object)")
    return meta


def _spec(meta: dict[str, Any], directory: Location) -> FeatureSpec:
    try:
        return FeatureSpec.from_dict(meta["features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{directory.child(META_FILE)}: unreadable feature description ({type(exc).__name__}: {exc})") from None


def load_estimator(directory: Where) -> EstimatorModel:
    """Read a saved estimator model, trusting exactly skops's defaults and :data:`TRUSTED_TYPES`.

    The types are checked on the file's schema first: a file naming any other
    type is refused before any of its objects is built or its modules imported.
    """
    directory = storage.locate(directory)
    meta = _read_meta(directory)
    if meta.get("format") != SKOPS_FORMAT:
        raise PipelineError(f"{directory.child(META_FILE)}: format {meta.get('format')!r}, expected {SKOPS_FORMAT!r}")
    spec = _spec(meta, directory)
    path = directory.child(ESTIMATOR_FILE)
    data = _read_data(path, SKOPS_FORMAT)
    untrusted = _untrusted(data, path)
    if untrusted:
        raise PipelineError(f"{path}: untrusted types in the model file: {', '.join(untrusted)}")
    import skops.io
    from sklearn.pipeline import Pipeline

    try:
        fitted = skops.io.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # only trusted types get here; a damaged array or state still fails in many ways
        raise PipelineError(f"{path}: not a readable skops model file ({_one_line(exc)})") from None
    if not isinstance(fitted, Pipeline):
        raise PipelineError(f"{path}: holds a {type(fitted).__name__}, not a fitted scikit-learn pipeline")
    columns = getattr(fitted[-1], "n_features_in_", None)
    if columns != 2 + len(spec.numeric):
        described = 2 + len(spec.numeric)
        raise PipelineError(f"{path}: the model takes {columns} columns; {META_FILE} describes {described} (zones, {spec.numeric})")
    _check_digest(directory, ESTIMATOR_FILE, meta, data)
    return EstimatorModel(fitted, spec, {k: v for k, v in meta.items() if k not in ("format", "features", FILES_KEY)})


def load_any(directory: Where) -> Model | EstimatorModel | BoostedModel:
    """Read whichever model a folder holds, by the format ``model.json`` names; ``.kind`` tells them apart."""
    directory = storage.locate(directory)
    fmt = _read_meta(directory).get("format")
    if fmt == FORMAT:
        return load_model(directory)
    if fmt == SKOPS_FORMAT:
        return load_estimator(directory)
    if fmt == BOOSTED_FORMAT:
        return load_boosted(directory)
    known = f"{FORMAT!r}, {SKOPS_FORMAT!r} or {BOOSTED_FORMAT!r}"
    raise PipelineError(f"{directory.child(META_FILE)}: unknown model format {fmt!r}, expected {known}")


# --- XGBoost models: the booster in XGBoost's own UBJSON format, never pickled ---------------------------------------

BOOSTED_FORMAT = "taxi-pipeline/xgboost-ubj/v1"
BOOSTER_FILE = "model.ubj"


def booster_bytes(booster: Any) -> bytes:
    """A booster as ``model.ubj`` bytes (``Booster.save_raw("ubj")``: trees and parameters, no Python objects)."""
    return bytes(booster.save_raw(raw_format="ubj"))


def _booster(data: bytes, path: Location) -> Any:
    """A booster read from UBJSON bytes; one line naming the file if XGBoost refuses them."""
    import xgboost

    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgboost.core.XGBoostError as exc:
        raise PipelineError(f"{path}: not a readable XGBoost model ({_one_line(exc).splitlines()[0][:300]})") from None
    return booster


def boosted_objects(data: bytes, params: BoostedParams, metadata: dict[str, Any], directory: Where) -> dict[str, bytes]:
    """A boosted model's objects in write order: ``model.ubj`` (``data``, from :func:`booster_bytes`), then ``model.json``.

    ``model.json`` names the format, the features the booster takes, their derivation and its parameters; the bytes
    are checked to load first, so no run writes a model it cannot read back.
    """
    _booster(data, storage.locate(directory).child(BOOSTER_FILE))
    described = {
        "format": BOOSTED_FORMAT,
        "features": boosted.SPEC.to_dict(),
        "design": list(boosted.FEATURES),
        "xgboost": params.to_dict(),
        "clip_minutes": [boosted.SPEC.min_minutes, boosted.SPEC.max_minutes],
    }
    return _with_meta({BOOSTER_FILE: data}, {**metadata, **described})


def save_boosted(model: BoostedModel, directory: Where) -> None:
    """Write ``model.ubj`` then ``model.json``, each whole."""
    save_objects(boosted_objects(booster_bytes(model.booster), model.params, model.metadata, directory), directory)


def load_boosted(directory: Where) -> BoostedModel:
    """Read a saved boosted model: ``model.json`` must name :data:`BOOSTED_FORMAT` and the design this code builds."""
    directory = storage.locate(directory)
    meta = _read_meta(directory)
    if meta.get("format") != BOOSTED_FORMAT:
        raise PipelineError(f"{directory.child(META_FILE)}: format {meta.get('format')!r}, expected {BOOSTED_FORMAT!r}")
    spec = _spec(meta, directory)
    if meta.get("design") != list(boosted.FEATURES):
        raise PipelineError(f"{directory.child(META_FILE)}: design {meta.get('design')!r}; this version builds {list(boosted.FEATURES)}")
    try:
        params = BoostedParams.from_dict(meta.get("xgboost") or {})
    except (TypeError, PipelineError) as exc:
        raise PipelineError(f"{directory.child(META_FILE)}: unreadable xgboost parameters ({_one_line(exc)})") from None
    path = directory.child(BOOSTER_FILE)
    data = _read_data(path, BOOSTED_FORMAT)
    _check_digest(directory, BOOSTER_FILE, meta, data)
    booster = _booster(data, path)
    if booster.num_features() != len(boosted.FEATURES):
        raise PipelineError(f"{path}: the booster takes {booster.num_features()} features; {META_FILE} describes {len(boosted.FEATURES)}")
    keep = {k: v for k, v in meta.items() if k not in ("format", "features", "design", "xgboost", "clip_minutes", FILES_KEY)}
    return BoostedModel(booster, spec, params, keep)
