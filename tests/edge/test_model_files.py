"""Model files: save/load keeps predictions to the bit, loading refuses foreign or unsafe files, predict ignores unseen zones."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.core import solve, stats
from pipeline.core.features import N_PAIRS, N_ZONES, Encoded, FeatureSpec
from pipeline.core.model import Model
from pipeline.edge.model_files import (
    FORMAT,
    META_FILE,
    WEIGHTS_FILE,
    load_model,
    save_model,
)
from pipeline.errors import PipelineError

#: Zones 1..39 only, so 40..265 are valid ids the model never saw.
SEEN = 40


def _model(numeric: tuple[str, ...] = (), rows: int = 6_000, seed: int = 0, alpha: float = 1.0) -> Model:
    """A model solved from random trips over zones 1..39 (plus ``numeric`` columns)."""
    rng = np.random.default_rng(seed)
    pu, do = rng.integers(1, SEEN, rows), rng.integers(1, SEEN, rows)
    x = rng.uniform(0.0, 10.0, (rows, len(numeric)))
    minutes = 5 + 0.2 * pu - 0.1 * do + ((pu * 7 + do) % 5) + x.sum(axis=1) * 0.8 + rng.normal(size=rows)
    encoded = Encoded(pair=pu * N_ZONES + do, micros=np.round(minutes * 60e6).astype(np.int64), x=x, position=np.arange(rows))
    weights = solve.solve(stats.compute(encoded), alpha)
    return Model(weights, FeatureSpec(numeric=numeric), {"alpha": alpha, "train_months": ["2023-01"]})


def _frame(rows: int, seed: int, numeric: tuple[str, ...] = ()) -> pd.DataFrame:
    """TLC-shaped rows over all valid zones, seen and unseen, with extra columns predict must ignore."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {
        "PULocationID": rng.integers(1, N_ZONES, rows).astype(np.int32),
        "DOLocationID": rng.integers(1, N_ZONES, rows).astype(np.int32),
        "fare_amount": rng.uniform(3, 50, rows),
    }
    for name in numeric:
        data[name] = rng.uniform(0, 10, rows)
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def model() -> Model:
    return _model(numeric=("trip_distance",))


def test_save_then_load_keeps_weights_and_predictions_to_the_bit(model: Model, tmp_path: Path) -> None:
    save_model(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == [META_FILE, WEIGHTS_FILE]
    loaded = load_model(tmp_path)

    w, v = model.weights, loaded.weights
    assert v.intercept == w.intercept
    for name in ("pu", "do", "pair", "numeric"):
        assert np.array_equal(getattr(v, name), getattr(w, name)), name
        assert getattr(v, name).dtype == np.float64
    assert loaded.spec == model.spec
    assert loaded.metadata == {"alpha": 1.0, "train_months": ["2023-01"]}

    frame = _frame(5_000, seed=1, numeric=("trip_distance",))
    before, after = model.predict(frame), loaded.predict(frame)
    assert before.dtype == after.dtype == np.float64
    assert before.tobytes() == after.tobytes()
    # The Arrow path gives the same numbers as the pandas one.
    assert loaded.predict(pa.Table.from_pandas(frame)).tobytes() == before.tobytes()


def test_model_json_describes_the_vocabulary(model: Model, tmp_path: Path) -> None:
    save_model(model, tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["format"] == FORMAT
    assert meta["features"] == {"numeric": ["trip_distance"], "min_minutes": 1.0, "max_minutes": 60.0}
    assert meta["vocabulary"]["pickup_zones"] == list(range(1, SEEN))
    assert meta["vocabulary"]["dropoff_zones"] == list(range(1, SEEN))
    assert meta["vocabulary"]["pairs"] == int(np.count_nonzero(model.weights.pair))


def test_a_model_without_numeric_columns_round_trips(tmp_path: Path) -> None:
    plain = _model(seed=3, alpha=0.01)
    save_model(plain, tmp_path / "deep" / "folder")
    loaded = load_model(tmp_path / "deep" / "folder")
    assert loaded.spec.numeric == () and loaded.weights.numeric.shape == (0,)
    frame = _frame(2_000, seed=4)
    assert loaded.predict(frame).tobytes() == plain.predict(frame).tobytes()


def test_predict_on_seen_pairs_is_the_pair_prediction(model: Model) -> None:
    """intercept + pickup + dropoff + pair, summed in that order: the solver's own per-pair prediction."""
    w = model.weights
    pu = np.array([1, 5, 39, 12], dtype=np.int64)
    do = np.array([1, 17, 2, 39], dtype=np.int64)
    distance = np.array([0.0, 1.5, 9.0, 3.25])
    got = model.predict(pd.DataFrame({"PULocationID": pu, "DOLocationID": do, "trip_distance": distance}))
    expected = w.pair_prediction()[pu * N_ZONES + do] + distance * w.numeric[0]
    assert got.tobytes() == expected.tobytes()


def test_unseen_zones_add_zero_like_dictvectorizer(model: Model) -> None:
    """Ids outside 1..265 and nulls add nothing; valid zones and pairs absent from training carry exactly zero weight."""
    w = model.weights
    table = pa.table(
        {
            "PULocationID": pa.array([0, 300, None, None, 0, 5, 100, 100], pa.int64()),
            "DOLocationID": pa.array([0, 300, None, 301, None, 100, 7, 100], pa.int64()),
            "trip_distance": pa.array([0.0] * 8),
        }
    )
    got = model.predict(table)
    # Zone 100 is a valid id never seen in training: its weights and its pairs' are exactly zero.
    assert w.pu[100] == 0.0 and w.do[100] == 0.0
    assert w.pair[100 * N_ZONES + 7] == 0.0 and w.pair[5 * N_ZONES + 100] == 0.0 and w.pair[100 * N_ZONES + 100] == 0.0
    expected = [
        w.intercept,  # 0 is not a zone
        w.intercept,  # 300 is not a zone
        w.intercept,  # nulls
        w.intercept,
        w.intercept,
        w.intercept + w.pu[5],  # known pickup, dropoff never seen
        w.intercept + w.do[7],  # pickup never seen, known dropoff
        w.intercept,
    ]
    assert got.tolist() == expected
    # The figures compared are not all the intercept: the known parts are real weights.
    assert w.pu[5] != 0.0 and w.do[7] != 0.0 and w.pair[5 * N_ZONES + 7] != 0.0


def test_unseen_zones_from_pandas_nullable_ints(model: Model) -> None:
    w = model.weights
    frame = pd.DataFrame(
        {
            "PULocationID": pd.array([None, 3, 266], dtype="Int64"),
            "DOLocationID": pd.array([None, 4, 0], dtype="Int64"),
            "trip_distance": [2.0, 2.0, 2.0],
        }
    )
    got = model.predict(frame)
    part = 2.0 * w.numeric[0]
    assert got.tolist() == [w.intercept + part, w.pair_prediction()[3 * N_ZONES + 4] + part, w.intercept + part]


def test_predict_needs_its_columns(model: Model) -> None:
    with pytest.raises(PipelineError, match="trip_distance"):
        model.predict(pd.DataFrame({"PULocationID": [1], "DOLocationID": [2]}))
    with pytest.raises(PipelineError, match="DOLocationID"):
        model.predict(pd.DataFrame({"PULocationID": [1], "trip_distance": [2.0]}))


# --- refusals -------------------------------------------------------------------------------------


def _saved(model: Model, folder: Path) -> Path:
    save_model(model, folder)
    return folder


def _arrays(model: Model) -> dict[str, Any]:
    w = model.weights
    return {"intercept": np.array([w.intercept]), "pu": w.pu, "do": w.do, "pair": w.pair, "numeric": w.numeric}


def test_a_folder_without_model_files_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    with pytest.raises(PipelineError) as caught:
        load_model(empty)
    assert str(empty) in str(caught.value)
    with pytest.raises(PipelineError) as caught:
        load_model(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(caught.value)


def test_weights_without_metadata_are_refused(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path)
    (folder / META_FILE).unlink()
    with pytest.raises(PipelineError, match="not a readable model"):
        load_model(folder)


def test_another_format_is_refused(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path)
    meta = json.loads((folder / META_FILE).read_text())
    meta["format"] = "taxi-pipeline/linear-pairs/v2"
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PipelineError) as caught:
        load_model(folder)
    assert str(folder / META_FILE) in str(caught.value)
    assert "linear-pairs/v2" in str(caught.value)


@pytest.mark.parametrize("text", ["not json {", "[1, 2]", '{"features": {}}'])
def test_metadata_that_is_not_a_model_is_refused(model: Model, tmp_path: Path, text: str) -> None:
    folder = _saved(model, tmp_path)
    (folder / META_FILE).write_text(text)
    with pytest.raises(PipelineError) as caught:
        load_model(folder)
    assert str(folder) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("pair", np.zeros(N_PAIRS - 1)),
        ("pair", np.zeros((N_ZONES, N_ZONES))),
        ("pu", np.zeros(N_ZONES + 1)),
        ("numeric", np.zeros(2)),  # the spec has one numeric column
        ("intercept", np.zeros(2)),
    ],
)
def test_an_array_of_the_wrong_shape_is_refused(model: Model, tmp_path: Path, name: str, bad: np.ndarray) -> None:
    folder = _saved(model, tmp_path)
    np.savez(folder / WEIGHTS_FILE, **{**_arrays(model), name: bad})
    with pytest.raises(PipelineError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert str(folder / WEIGHTS_FILE) in message and repr(name) in message and str(bad.shape) in message


def test_an_array_of_the_wrong_dtype_is_refused(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path)
    np.savez(folder / WEIGHTS_FILE, **{**_arrays(model), "pair": model.weights.pair.astype(np.float32)})
    with pytest.raises(PipelineError, match="'pair'"):
        load_model(folder)


def test_a_missing_array_is_refused(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path)
    arrays = _arrays(model)
    del arrays["numeric"]
    np.savez(folder / WEIGHTS_FILE, **arrays)
    with pytest.raises(PipelineError, match="not a readable model"):
        load_model(folder)


class _Payload:
    """Unpickling this creates ``marker``: proof that loading ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_a_pickled_object_array_is_refused_without_unpickling(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path / "model")
    marker = tmp_path / "pwned"
    evil = np.empty(N_PAIRS, dtype=object)
    evil[:] = 0.0
    evil[0] = _Payload(marker)
    np.savez(folder / WEIGHTS_FILE, **{**_arrays(model), "pair": evil})
    with zipfile.ZipFile(folder / WEIGHTS_FILE) as archive:
        assert "pair.npy" in archive.namelist()

    with pytest.raises(PipelineError) as caught:
        load_model(folder)
    assert str(folder) in str(caught.value)
    assert not marker.exists()

    # The file really is armed: numpy with pickles allowed runs the payload.
    with np.load(folder / WEIGHTS_FILE, allow_pickle=True) as arrays:
        arrays["pair"]
    assert marker.is_dir()


def test_a_known_zone_counts_when_the_other_end_is_unknown(model: Model) -> None:
    """DictVectorizer ignores only the unseen feature: the known end's weight still counts."""
    w = model.weights
    table = pa.table(
        {
            "PULocationID": pa.array([0, 300, None, 5], pa.int64()),
            "DOLocationID": pa.array([7, 7, 7, None], pa.int64()),
            "trip_distance": pa.array([0.0] * 4),
        }
    )
    assert model.predict(table).tolist() == [w.intercept + w.do[7]] * 3 + [w.intercept + w.pu[5]]


def test_a_single_npy_array_named_model_npz_is_refused(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path / "m")
    np.save(folder / "x.npy", np.zeros(3))
    (folder / "x.npy").replace(folder / WEIGHTS_FILE)
    with pytest.raises(PipelineError, match="not a readable model"):
        load_model(folder)


def test_metadata_without_features_is_refused(model: Model, tmp_path: Path) -> None:
    folder = _saved(model, tmp_path / "m")
    meta = json.loads((folder / META_FILE).read_text())
    del meta["features"]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PipelineError, match=r"model\.json: unreadable feature description"):
        load_model(folder)


def test_metadata_cannot_overwrite_the_format(model: Model, tmp_path: Path) -> None:
    save_model(Model(model.weights, model.spec, {"format": "mine", "source": "s"}), tmp_path)
    assert load_model(tmp_path).metadata == {"source": "s"}
