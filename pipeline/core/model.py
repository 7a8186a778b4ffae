"""The model artifact: weights in ``model.npz``, vocabulary and metadata in ``model.json``.

No pickle anywhere: loading reads arrays with ``allow_pickle=False`` and JSON, so a
model file can be loaded from an untrusted place without running its code.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.edge.atomic import write_bytes
from pipeline.errors import PipelineError
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec, numeric_matrix, zone_codes
from pipeline.core.schema import DO, PU
from pipeline.core.solve import Weights

FORMAT = "taxi-pipeline/linear-pairs/v1"
WEIGHTS_FILE = "model.npz"
META_FILE = "model.json"


@dataclass(frozen=True)
class Model:
    """A trained duration model; ``predict`` takes TLC-shaped rows."""

    weights: Weights
    spec: FeatureSpec
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame | pa.Table) -> np.ndarray:
        """Predicted minutes for each row; zones or pairs unseen in training add 0.

        Needs ``PULocationID``, ``DOLocationID`` and the model's numeric columns.
        """
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        missing = [c for c in (PU, DO, *self.spec.numeric) if c not in table.column_names]
        if missing:
            raise PipelineError(f"predict: missing column(s) {', '.join(missing)}")
        pu, do = zone_codes(table.column(PU)), zone_codes(table.column(DO))
        known = (pu >= 0) & (do >= 0)
        pu0, do0 = np.where(known, pu, 0), np.where(known, do, 0)
        w = self.weights
        pair = np.where(known, w.pair[pu0 * N_ZONES + do0], 0.0)
        out = w.intercept + np.where(pu >= 0, w.pu[pu0], 0.0) + np.where(do >= 0, w.do[do0], 0.0) + pair
        if self.spec.numeric:
            out = out + numeric_matrix(table, self.spec.numeric) @ w.numeric
        return out

    def save(self, directory: Path) -> None:
        """Write ``model.npz`` then ``model.json``, each atomically."""
        w = self.weights
        buffer = io.BytesIO()
        np.savez_compressed(buffer, intercept=np.array([w.intercept]), pu=w.pu, do=w.do, pair=w.pair, numeric=w.numeric)
        write_bytes(directory / WEIGHTS_FILE, lambda fh: fh.write(buffer.getvalue()))
        meta = {
            "format": FORMAT,
            "features": self.spec.to_dict(),
            "vocabulary": {
                "pickup_zones": np.flatnonzero(w.pu).tolist(),
                "dropoff_zones": np.flatnonzero(w.do).tolist(),
                "pairs": int(np.count_nonzero(w.pair)),
            },
            **self.metadata,
        }
        text = json.dumps(meta, indent=2, sort_keys=True).encode()
        write_bytes(directory / META_FILE, lambda fh: fh.write(text))

    @classmethod
    def load(cls, directory: Path) -> Model:
        """Read a saved model; refuses anything that is not this format."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
            with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
                data = {name: arrays[name] for name in ("intercept", "pu", "do", "pair", "numeric")}
        except (OSError, ValueError, KeyError) as exc:
            raise PipelineError(f"{directory}: not a readable model ({exc})") from None
        if meta.get("format") != FORMAT:
            raise PipelineError(f"{directory / META_FILE}: unknown model format {meta.get('format')!r}")
        spec = FeatureSpec.from_dict(meta["features"])
        shapes = {"pu": (N_ZONES,), "do": (N_ZONES,), "pair": (N_PAIRS,), "numeric": (len(spec.numeric),), "intercept": (1,)}
        for name, shape in shapes.items():
            if data[name].shape != shape or data[name].dtype != np.float64:
                raise PipelineError(f"{directory / WEIGHTS_FILE}: array {name!r} has shape {data[name].shape}, expected {shape}")
        weights = Weights(float(data["intercept"][0]), data["pu"], data["do"], data["pair"], data["numeric"])
        extra = {k: v for k, v in meta.items() if k not in ("format", "features", "vocabulary")}
        return cls(weights, spec, extra)

