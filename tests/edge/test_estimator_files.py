"""Estimator model files: HistGradientBoosting through skops keeps predictions to the bit, loading trusts a fixed list of types."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skops.io
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from pipeline.core import estimators
from pipeline.core.features import N_PAIRS, N_ZONES, FeatureSpec
from pipeline.core.model import EstimatorModel, Model
from pipeline.core.months import parse_months
from pipeline.core.rows import Rows
from pipeline.core.schema import DO, PU
from pipeline.core.solve import Weights
from pipeline.edge import chunks, reader, row_fits
from pipeline.edge.model_files import (
    ESTIMATOR_FILE,
    FORMAT,
    META_FILE,
    SKOPS_FORMAT,
    TRUSTED_TYPES,
    WEIGHTS_FILE,
    dump_estimator,
    load_any,
    load_estimator,
    load_model,
    save_estimator,
    save_estimator_bytes,
    save_model,
)
from pipeline.edge.synth import write_months
from pipeline.errors import PipelineError

SPEC = FeatureSpec(numeric=("trip_distance",))
#: The "other" category of ``_ZoneCategories``: 255 categories at most, the last shared.
OTHER = 254


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Fit single-threaded, as on Dask workers: OpenMP threads spin-waiting on a shared machine slow HGB tenfold."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> list[reader.MonthPlan]:
    """Two generated months of 5,000 trips (about 4,900 kept each)."""
    folder = tmp_path_factory.mktemp("estimator-file-months")
    months = parse_months("2023-01:2023-02")
    write_months(folder, months, 5_000, seed=0)
    return [reader.locate(str(folder), "yellow", m, SPEC.columns()) for m in months]


@pytest.fixture(scope="module")
def rows(plans: list[reader.MonthPlan]) -> Rows:
    return chunks.load_rows(plans[:1], SPEC, 1, 0, None)


@pytest.fixture(scope="module")
def fitted(rows: Rows) -> Pipeline:
    with threadpool_limits(limits=1):
        return estimators.fit("hist_gradient_boosting", rows, 0)


@pytest.fixture(scope="module")
def val_table(plans: list[reader.MonthPlan]) -> pa.Table:
    """The second month as a TLC file holds it, with columns predict must ignore."""
    return pq.read_table(plans[1].file.path)


@pytest.fixture
def saved(fitted: Pipeline, tmp_path: Path) -> Path:
    folder = tmp_path / "hgb"
    save_estimator(EstimatorModel(fitted, SPEC, {"source": "synth"}), folder)
    return folder


def _refusal(directory: Path) -> str:
    """The one line ``load_any`` refuses ``directory`` with."""
    with pytest.raises(PipelineError) as caught:
        load_any(directory)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _zone_in_other(fitted: Pipeline, column: int) -> int:
    """A valid zone id that training put in the "other" category (265 ids, 254 categories of their own)."""
    return int(np.flatnonzero(fitted.named_steps["zones"].lookup_[column][1:] == OTHER)[0] + 1)


def test_trusted_types_are_exactly_what_a_freshly_fitted_model_names(fitted: Pipeline) -> None:
    assert sorted(skops.io.get_untrusted_types(data=dump_estimator(fitted))) == sorted(TRUSTED_TYPES)


def test_save_then_load_keeps_predictions_to_the_bit(fitted: Pipeline, rows: Rows, val_table: pa.Table, saved: Path) -> None:
    assert sorted(os.listdir(saved)) == [META_FILE, ESTIMATOR_FILE]
    meta = json.loads((saved / META_FILE).read_text())
    digest = hashlib.sha256((saved / ESTIMATOR_FILE).read_bytes()).hexdigest()
    assert meta == {"format": SKOPS_FORMAT, "features": SPEC.to_dict(), "source": "synth", "files": {ESTIMATOR_FILE: digest}}

    loaded = load_any(saved)
    assert isinstance(loaded, EstimatorModel) and loaded.kind == "estimator" != Model.kind
    assert loaded.spec == SPEC and loaded.metadata == {"source": "synth"}
    assert loaded.fitted is not fitted

    original = EstimatorModel(fitted, SPEC)
    before, after = original.predict(val_table), loaded.predict(val_table)
    assert before.dtype == after.dtype == np.float64 and before.shape == (val_table.num_rows,)
    assert before.tobytes() == after.tobytes()
    assert loaded.predict(val_table.to_pandas()).tobytes() == before.tobytes()
    by_codes = loaded.predict_codes(rows.pu, rows.do, rows.x)
    assert by_codes.tobytes() == original.predict_codes(rows.pu, rows.do, rows.x).tobytes()
    assert by_codes.tobytes() == estimators.predict(fitted, rows).tobytes()  # what the run scored
    assert load_estimator(saved).predict(val_table).tobytes() == before.tobytes()


def test_metadata_cannot_overwrite_the_format_or_the_features(fitted: Pipeline, tmp_path: Path) -> None:
    save_estimator(EstimatorModel(fitted, SPEC, {"format": "mine", "features": {"numeric": []}, "source": "s"}), tmp_path)
    loaded = load_any(tmp_path)
    assert loaded.spec == SPEC and loaded.metadata == {"source": "s"}


def test_unknown_zones_predict_as_the_other_category(fitted: Pipeline, saved: Path) -> None:
    model = load_any(saved)
    pu_other, do_other = _zone_in_other(fitted, 0), _zone_in_other(fitted, 1)
    table = pa.table(
        {
            PU: pa.array([0, 300, None, -5, pu_other, 132, 132, 132, 132], pa.int64()),
            DO: pa.array([236, 236, 236, 236, 236, 0, 300, None, do_other], pa.int64()),
            "trip_distance": pa.array([2.0] * 9),
        }
    )
    predicted = model.predict(table)
    assert np.all(np.isfinite(predicted))
    assert predicted[:4].tolist() == [predicted[4]] * 4
    assert predicted[5:8].tolist() == [predicted[8]] * 3
    # Codes straight in: -1 (and NaN) are unknown too, not zone 265 by wrap-around.
    codes = model.predict_codes(np.array([-1, np.nan, pu_other]), np.array([236, 236, 236]), np.full((3, 1), 2.0))
    assert codes.tolist() == [predicted[4]] * 3


def test_sgd_as_an_estimator_model_adds_nothing_for_unknown_zones_as_the_linear_model_does(rows: Rows) -> None:
    fitted = estimators.fit("sgd", rows, 0)
    pu, do = np.array([-1, 5, -1, 0, 300, 132]), np.array([7, -1, -1, 7, 7, 236])
    x = np.full((6, 1), 3.0)
    linear = Model(estimators.sgd_weights(fitted), SPEC).predict_codes(np.where((pu >= 1) & (pu < N_ZONES), pu, -1), do, x)
    np.testing.assert_allclose(EstimatorModel(fitted, SPEC).predict_codes(pu, do, x), linear, rtol=1e-10, atol=1e-9)


def test_load_any_reads_a_linear_model_folder(tmp_path: Path) -> None:
    weights = Weights(7.5, np.zeros(N_ZONES), np.zeros(N_ZONES), np.zeros(N_PAIRS), np.zeros(1))
    save_model(Model(weights, SPEC, {"source": "s"}), tmp_path)
    loaded = load_any(tmp_path)
    assert isinstance(loaded, Model) and loaded.kind == "linear"
    assert loaded.metadata == {"source": "s"}
    assert loaded.predict_codes(np.array([1]), np.array([2]), np.zeros((1, 1))).tolist() == [7.5]


class _Armed:
    """Building this from a file creates ``marker``: proof that loading ran code the file chose."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict[str, Any]) -> None:
        os.mkdir(state["marker"])
        self.__dict__.update(state)


def _armed_bytes(fitted: Pipeline, marker: Path) -> bytes:
    return skops.io.dumps(Pipeline([("zones", fitted.named_steps["zones"]), ("model", _Armed(str(marker)))]))


def _rename_module(data: bytes, old: str, new: str) -> bytes:
    """The skops archive with ``old`` module names in its schema replaced by ``new``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            content = source.read(name)
            if name == "schema.json":
                content = content.replace(f'"{old}"'.encode(), f'"{new}"'.encode())
            target.writestr(name, content)
    return out.getvalue()


def test_a_file_naming_an_untrusted_type_is_refused_without_building_it(fitted: Pipeline, saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = _armed_bytes(fitted, marker)
    armed = f"{_Armed.__module__}._Armed"
    (saved / ESTIMATOR_FILE).write_bytes(data)

    message = _refusal(saved)
    assert message == f"{saved / ESTIMATOR_FILE}: untrusted types in the model file: {armed}"
    assert not marker.exists()
    with pytest.raises(PipelineError, match="not saved"):  # nor would a run write it
        save_estimator_bytes(data, SPEC, {}, tmp_path / "never")
    assert not (tmp_path / "never").exists()

    # The file really is armed: skops told to trust what the file names runs the payload.
    skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    assert marker.is_dir()


def test_a_type_from_a_module_never_imported_is_refused_without_importing_it(fitted: Pipeline, saved: Path, tmp_path: Path) -> None:
    data = _rename_module(_armed_bytes(fitted, tmp_path / "pwned"), _Armed.__module__, "evil_module_never_imported")
    (saved / ESTIMATOR_FILE).write_bytes(data)
    assert "evil_module_never_imported._Armed" in _refusal(saved)
    assert "evil_module_never_imported" not in sys.modules
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:100], id="first-100-bytes"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"not a zip at all", id="garbage"),
        pytest.param(lambda data: data[:4000] + bytes(b ^ 0xFF for b in data[4000:4400]) + data[4400:], id="flipped-bytes"),
    ],
)
def test_a_damaged_skops_file_is_one_line_naming_it(saved: Path, damage: Any) -> None:
    path = saved / ESTIMATOR_FILE
    path.write_bytes(damage(path.read_bytes()))
    assert _refusal(saved).startswith(f"{path}: not a readable skops model file (")


def test_a_skops_folder_without_its_model_file_is_refused(saved: Path) -> None:
    (saved / ESTIMATOR_FILE).unlink()
    assert _refusal(saved) == f"{saved / ESTIMATOR_FILE}: missing, though {META_FILE} says {SKOPS_FORMAT}"


@pytest.mark.parametrize("fmt", ["taxi-pipeline/sklearn-skops/v2", "pickle", None])
def test_a_tampered_format_is_refused(saved: Path, fmt: str | None) -> None:
    meta = json.loads((saved / META_FILE).read_text())
    meta["format"] = fmt
    (saved / META_FILE).write_text(json.dumps(meta))
    message = _refusal(saved)
    assert message.startswith(f"{saved / META_FILE}: unknown model format {fmt!r}")
    with pytest.raises(PipelineError, match=META_FILE):
        load_estimator(saved)


def test_a_skops_folder_tampered_to_say_linear_is_refused(saved: Path) -> None:
    meta = json.loads((saved / META_FILE).read_text())
    (saved / META_FILE).write_text(json.dumps({**meta, "format": FORMAT}))
    assert WEIGHTS_FILE in _refusal(saved)
    with pytest.raises(PipelineError):
        load_model(saved)


def test_features_that_do_not_match_the_model_are_refused(saved: Path) -> None:
    meta = json.loads((saved / META_FILE).read_text())
    (saved / META_FILE).write_text(json.dumps({**meta, "features": FeatureSpec().to_dict()}))
    assert "takes 3 columns" in _refusal(saved)


@pytest.mark.parametrize("text", [None, "not json {", "[1, 2]"])
def test_a_folder_that_holds_no_model_is_one_line(tmp_path: Path, text: str | None) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    if text is not None:
        (folder / META_FILE).write_text(text)
    assert str(folder) in _refusal(folder)
    assert str(tmp_path / "missing") in _refusal(tmp_path / "missing")


def test_fit_and_validate_hands_back_the_trees_for_the_flow_to_save(plans: list[reader.MonthPlan], tmp_path: Path) -> None:
    result = row_fits.fit_and_validate(plans[:1], plans[1], SPEC, "hist_gradient_boosting", 0, None)
    assert result.outcome.weights is None and not result.outcome.empty and result.estimator_bytes is not None
    save_estimator_bytes(result.estimator_bytes, SPEC, {"source": "synth"}, tmp_path)
    model = load_any(tmp_path)
    val = chunks.load_rows(plans[1:], SPEC, 1, 0, None)
    predicted = model.predict_codes(val.pu, val.do, val.x)
    assert float(np.sqrt(np.mean((predicted - val.y) ** 2))) == result.outcome.val_rmse  # the model the run scored

    sgd = row_fits.fit_and_validate(plans[:1], plans[1], SPEC, "sgd", 0, None)
    assert sgd.estimator_bytes is None and sgd.outcome.weights is not None  # saved as linear weights
