"""The model's files: weights in ``model.npz``, vocabulary and metadata in ``model.json``.

No pickle anywhere: loading reads arrays with ``allow_pickle=False`` and JSON, so a
model file can be loaded from an untrusted place without running its code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import Model
from pipeline.core.solve import Weights
from pipeline.edge.atomic import write_bytes
from pipeline.errors import PipelineError

FORMAT = "taxi-pipeline/linear-pairs/v1"
WEIGHTS_FILE = "model.npz"
META_FILE = "model.json"


def save_model(model: Model, directory: Path) -> None:
    """Write ``model.npz`` then ``model.json``, each atomically."""
    w = model.weights
    buffer = io.BytesIO()
    np.savez_compressed(buffer, intercept=np.array([w.intercept]), pu=w.pu, do=w.do, pair=w.pair, numeric=w.numeric)
    write_bytes(directory / WEIGHTS_FILE, lambda fh: fh.write(buffer.getvalue()))
    meta = {
        **model.metadata,
        "format": FORMAT,
        "features": model.spec.to_dict(),
        "vocabulary": {
            "pickup_zones": np.flatnonzero(w.pu).tolist(),
            "dropoff_zones": np.flatnonzero(w.do).tolist(),
            "pairs": int(np.count_nonzero(w.pair)),
        },
    }
    text = json.dumps(meta, indent=2, sort_keys=True).encode()
    write_bytes(directory / META_FILE, lambda fh: fh.write(text))


def load_model(directory: Path) -> Model:
    """Read a saved model; refuses anything that is not this format, or arrays of the wrong shape."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        arrays = np.load(directory / WEIGHTS_FILE, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError(f"{WEIGHTS_FILE} is not an .npz archive")
        with arrays:
            data = {name: arrays[name] for name in ("intercept", "pu", "do", "pair", "numeric")}
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{directory}: not a readable model ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PipelineError(f"{directory / META_FILE}: unknown model format {meta.get('format') if isinstance(meta, dict) else None!r}")
    try:
        spec = FeatureSpec.from_dict(meta["features"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{directory / META_FILE}: unreadable feature description ({type(exc).__name__}: {exc})") from None
    shapes = {"pu": (N_ZONES,), "do": (N_ZONES,), "pair": (N_PAIRS,), "numeric": (len(spec.numeric),), "intercept": (1,)}
    for name, shape in shapes.items():
        if data[name].shape != shape or data[name].dtype != np.float64:
            raise PipelineError(f"{directory / WEIGHTS_FILE}: array {name!r} has shape {data[name].shape}, expected {shape}")
    weights = Weights(float(data["intercept"][0]), data["pu"], data["do"], data["pair"], data["numeric"])
    extra = {k: v for k, v in meta.items() if k not in ("format", "features", "vocabulary")}
    return Model(weights, spec, extra)
