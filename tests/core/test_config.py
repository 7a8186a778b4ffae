"""TrainConfig, RetrainConfig and ScoreConfig: every rule refuses with a one-line ConfigError naming its fields."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.config import DEFAULT_ALPHAS, DEFAULT_CANDIDATES, ConfigError, RetrainConfig, ScoreConfig, TrainConfig
from pipeline.core.months import Month

#: Every field spelt as a marker, so a message's named fields can be read back exactly.
MARKERS = {name: f"<{name}>" for model in (TrainConfig, RetrainConfig, ScoreConfig) for name in model.model_fields}


def _fields(**overrides: Any) -> dict[str, Any]:
    """A valid configuration's fields, with ``overrides``."""
    return {"train_months": "2023-01:2023-02", "val_month": "2023-03", "output": Path("out"), **overrides}


def _refused(**overrides: Any) -> ConfigError:
    """The ConfigError both the constructor and ``build`` raise, checked to be one line and identical."""
    with pytest.raises(ConfigError) as direct:
        TrainConfig(**_fields(**overrides))
    with pytest.raises(ConfigError) as built:
        TrainConfig.build(**_fields(**overrides))
    assert str(direct.value) == str(built.value)
    message = str(direct.value)
    assert message and "\n" not in message
    return direct.value


def _named(error: ConfigError) -> set[str]:
    """The fields a ConfigError names (read back through ``render``)."""
    return set(re.findall(r"<(\w+)>", error.render(MARKERS)))


def _built_error(**overrides: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.build(**_fields(**overrides))
    assert "\n" not in str(caught.value)
    return caught.value


# --- the consistency rules ------------------------------------------------------------------------


@pytest.mark.parametrize("folds", [0, 5])
def test_validation_month_inside_training_months_is_refused(folds: int) -> None:
    error = _refused(train_months="2023-01:2023-03", val_month="2023-02", folds=folds)
    assert _named(error) == {"val_month", "train_months"}
    assert "2023-02" in str(error)


@pytest.mark.parametrize("alphas", [(0.0,), (1.0, -0.5), (-1e-9,), (float("nan"),), (1.0, float("inf"))])
def test_a_non_positive_alpha_is_refused(alphas: tuple[float, ...]) -> None:
    error = _refused(alphas=alphas)
    assert _named(error) == {"alphas"}
    assert ",".join(f"{a:g}" for a in alphas) in str(error)


def test_one_fold_is_refused_but_zero_and_two_are_accepted() -> None:
    assert _named(_refused(folds=1)) == {"folds"}
    assert not TrainConfig(**_fields(folds=0)).cross_validates
    assert TrainConfig(**_fields(folds=2)).cross_validates


def test_several_alphas_need_cross_validation() -> None:
    error = _refused(alphas=(0.1, 1.0), folds=0)
    assert _named(error) == {"alphas", "folds"}
    assert TrainConfig(**_fields(alphas=(0.1, 1.0), folds=2)).alphas == (0.1, 1.0)


@pytest.mark.parametrize("model", ["hist_gradient_boosting", "sgd"])
def test_time_cv_is_for_the_linear_model_only(model: str) -> None:
    error = _refused(model=model, cv="time")
    assert _named(error) == {"cv", "model"}
    assert model in str(error)
    assert TrainConfig(**_fields(model=model, cv="kfold")).model == model
    assert TrainConfig(**_fields(model="linear", cv="time")).cv == "time"


@pytest.mark.parametrize("model", ["hist_gradient_boosting", "sgd"])
def test_an_alpha_grid_is_for_the_linear_model_only(model: str) -> None:
    error = _refused(model=model, alphas=(0.1, 1.0))
    assert _named(error) == {"alphas", "model"}
    assert model in str(error)


def test_time_cv_needs_two_training_months() -> None:
    error = _refused(cv="time", train_months="2023-01")
    assert _named(error) == {"cv", "train_months"}
    # Two months make one rolling-origin window; with CV off the kind does not matter.
    assert TrainConfig(**_fields(cv="time", train_months="2023-01:2023-02")).train_months == (Month(2023, 1), Month(2023, 2))
    assert TrainConfig(**_fields(cv="time", train_months="2023-01", folds=0)).train_months == (Month(2023, 1),)


@pytest.mark.parametrize("empty", [[], ()])
def test_an_empty_training_month_list_is_refused(empty: list | tuple) -> None:
    assert _named(_refused(train_months=empty)) == {"train_months"}


def test_an_empty_spec_string_is_refused() -> None:
    assert _named(_refused(train_months="")) == {"train_months"}


# --- months in, months out ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        [Month(2023, 3), Month(2023, 1), Month(2023, 2)],
        ("2023-02", "2023-03", "2023-01", "2023-02"),
        [Month(2023, 2), "2023-01", " 2023-03 "],
        "2023-01:2023-03",
        "2023-03,2023-01:2023-02,2023-02",
    ],
)
def test_training_months_are_accepted_in_every_form_sorted_and_unique(given: Any) -> None:
    config = TrainConfig(**_fields(train_months=given, val_month="2023-04"))
    assert config.train_months == (Month(2023, 1), Month(2023, 2), Month(2023, 3))
    assert config.months() == ([Month(2023, 1), Month(2023, 2), Month(2023, 3)], Month(2023, 4))


@pytest.mark.parametrize("given", [Month(2023, 12), "2023-12"])
def test_validation_month_as_month_or_string(given: Month | str) -> None:
    assert TrainConfig(**_fields(val_month=given)).val_month == Month(2023, 12)


@pytest.mark.parametrize("bad", ["2023-13", "23-01", "2023-03:2023-01", "2023-1", "january"])
def test_a_malformed_training_month_names_the_field(bad: str) -> None:
    error = _refused(train_months=bad)
    assert _named(error) == {"train_months"}
    assert repr(bad) in str(error)


@pytest.mark.parametrize("bad", ["2023-13", "23-01", "2023-00", 202301])
def test_a_malformed_validation_month_names_the_field(bad: object) -> None:
    error = _refused(val_month=bad)
    assert _named(error) == {"val_month"}


def test_a_malformed_month_inside_a_list_names_the_field() -> None:
    assert _named(_refused(train_months=["2023-01", "2023-13"])) == {"train_months"}


# --- Literal and constrained fields through build -------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("taxi", "blue"), ("model", "lightgbm"), ("cv", "loo")])
def test_an_unknown_literal_is_a_config_error_naming_the_field(field: str, value: str) -> None:
    error = _built_error(**{field: value})
    assert _named(error) == {field}
    assert repr(value) in str(error)


@pytest.mark.parametrize(("field", "value"), [("folds", -1), ("chunk_rows", 0), ("max_rows", 0), ("seed", -3)])
def test_a_number_out_of_range_is_a_config_error_naming_the_field(field: str, value: int) -> None:
    assert _named(_built_error(**{field: value})) == {field}


def test_an_unknown_field_is_a_config_error_that_renders() -> None:
    error = _built_error(val_monht="2023-03")
    assert "val_monht" in str(error) and "val_monht" in error.render(MARKERS)


def test_known_taxis_and_models_are_accepted() -> None:
    for taxi in ("yellow", "green"):
        assert TrainConfig.build(**_fields(taxi=taxi)).taxi == taxi
    for model in ("linear", "hist_gradient_boosting", "sgd"):
        assert TrainConfig.build(**_fields(model=model)).model == model


# --- rendering with flag names -------------------------------------------------------------------


def test_render_spells_fields_as_flags() -> None:
    error = _refused(train_months="2023-01:2023-03", val_month="2023-02")
    flags = error.render({"val_month": "--val-month", "train_months": "--train-months"})
    assert "--val-month" in flags and "--train-months" in flags
    assert "val_month" not in flags and "train_months" not in flags
    assert flags == str(error).replace("val_month", "--val-month").replace("train_months", "--train-months")
    # Without names, the field names themselves.
    assert error.render() == str(error)
    assert str(error).startswith("val_month 2023-02 is also in train_months")


def test_render_of_a_field_validator_error_uses_the_flag() -> None:
    error = _refused(val_month="2023-13")
    flags = error.render({"val_month": "--val-month"})
    assert flags.startswith("--val-month '2023-13'")
    assert "val_month" not in flags


# --- the Prefect parameter round trip ------------------------------------------------------------


def test_json_dump_round_trips() -> None:
    fields: dict[str, Any] = {
        "taxi": "green",
        "train_months": "2023-01:2023-03",
        "val_month": "2023-04",
        "output": Path("/tmp/run"),
        "alphas": (0.01, 1.0),
        "folds": 3,
        "cv": "time",
        "seed": 7,
        "numeric": ("trip_distance",),
        "chunk_rows": 123_456,
        "cache_dir": Path("/tmp/cache"),
        "cache": False,
    }
    config = TrainConfig(**fields)
    dumped = config.model_dump(mode="json")
    assert dumped["train_months"] == ["2023-01", "2023-02", "2023-03"]
    assert dumped["val_month"] == "2023-04"
    assert dumped["output"] == "/tmp/run"
    again = json.loads(json.dumps(dumped))
    assert TrainConfig(**again) == config
    assert TrainConfig(**dumped) == config
    assert TrainConfig.build(**again) == config


def test_defaults_round_trip_too() -> None:
    config = TrainConfig(**_fields())
    dumped = json.loads(json.dumps(config.model_dump(mode="json")))
    assert dumped["alphas"] == [1e-3] and dumped["folds"] == 5 and dumped["max_rows"] is None
    assert TrainConfig(**dumped) == config


def test_a_config_error_survives_pickling_as_it_crosses_processes() -> None:
    import pickle

    error = _built_error(numeric={"a": 1})
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and _named(again) == _named(error)


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("source", "https://ann:s3cret@example.com/trip-data"),
        ("source", "https://example.com/trip-data?X-Amz-Signature=0ddba11"),
        ("output", "az://runs/x?sig=0ddba11&sv=2024"),
        ("stats_cache", "https://example.com/cache?token=0ddba11"),
    ],
)
def test_a_location_holding_credentials_is_refused_without_echoing_them(field: str, url: str) -> None:
    error = _refused(**{field: url})
    assert _named(error) == {field}
    assert "s3cret" not in str(error) and "0ddba11" not in str(error)  # a run's parameters, logs and metrics keep locations


@pytest.mark.parametrize("url", ["s3://bucket/prefix", "https://example.com/trip-data?page=2", "https://ann@example.com/x"])
def test_a_location_without_secrets_is_accepted(url: str) -> None:
    assert TrainConfig(**_fields(source=url)).source == url


# --- the settings read from the environment: once, as defaults, where a config is built -------------------


def test_the_project_variables_are_field_defaults_read_when_a_config_is_built(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for variable in (
        "TAXI_PIPELINE_CACHE",
        "TAXI_PIPELINE_HTTP_TIMEOUT",
        "TAXI_PIPELINE_STATS_CACHE",
        "TAXI_PIPELINE_STATS_CACHE_MAX_BYTES",
    ):
        monkeypatch.delenv(variable, raising=False)
    plain = TrainConfig(**_fields())
    assert (plain.cache_dir, plain.http_timeout, plain.stats_cache, plain.stats_cache_max_bytes) == (None, 60.0, None, 2 * 10**9)
    monkeypatch.setenv("TAXI_PIPELINE_CACHE", str(tmp_path / "months"))
    monkeypatch.setenv("TAXI_PIPELINE_HTTP_TIMEOUT", "2.5")
    monkeypatch.setenv("TAXI_PIPELINE_STATS_CACHE", "s3://bucket/stats")
    monkeypatch.setenv("TAXI_PIPELINE_STATS_CACHE_MAX_BYTES", "500MB")
    for config in (TrainConfig(**_fields()), RetrainConfig()):
        assert (config.cache_dir, config.http_timeout, config.stats_cache) == (tmp_path / "months", 2.5, "s3://bucket/stats")
        assert config.stats_cache_max_bytes == 500 * 10**6
    assert ScoreConfig(months="2023-04", output="out", model="m").http_timeout == 2.5
    given = TrainConfig(**_fields(http_timeout=9, stats_cache_max_bytes="1GB", cache_dir="elsewhere"))  # a value given wins
    assert (given.http_timeout, given.stats_cache_max_bytes, given.cache_dir) == (9.0, 10**9, Path("elsewhere"))
    assert plain.stats_cache is None  # read when built, never later: a config made before keeps its values


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("TAXI_PIPELINE_HTTP_TIMEOUT", "0", "expected a number of seconds above 0"),
        ("TAXI_PIPELINE_HTTP_TIMEOUT", "soon", "expected a number of seconds above 0"),
        ("TAXI_PIPELINE_STATS_CACHE_MAX_BYTES", "lots", "size 'lots': expected bytes or a number with B"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, why: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        RetrainConfig.build()
    assert str(caught.value).startswith(f"${variable}='{value}': {why}") and "\n" not in str(caught.value)


# --- RetrainConfig -------------------------------------------------------------------------------


def test_a_retrain_config_has_a_default_for_every_field_so_a_scheduled_run_needs_no_parameters() -> None:
    config = RetrainConfig()
    assert (config.registry, config.window, config.alphas, config.candidates) == ("runs/registry", 2, DEFAULT_ALPHAS, DEFAULT_CANDIDATES)
    assert config.as_of is None and config.boosted and not config.repair
    assert RetrainConfig.model_validate({"config": None}.get("config") or {}) == config
    # a deployment's parameter, as Prefect stores it (JSON), makes the same config back
    stored = json.loads(json.dumps(RetrainConfig(window=3, as_of="2023-04-20").model_dump(mode="json", exclude_unset=True)))
    assert stored == {"window": 3, "as_of": "2023-04-20"} and RetrainConfig(**stored).window == 3


@pytest.mark.parametrize(("field", "value"), [("window", 0), ("folds", -1), ("chunk_rows", 0), ("http_timeout", 0)])
def test_a_retrain_number_out_of_range_names_its_flag(field: str, value: int) -> None:
    with pytest.raises(ConfigError) as caught:
        RetrainConfig.build(**{field: value})
    flag = "--" + field.replace("_", "-")
    assert caught.value.render({field: flag}).startswith(f"{flag} {value}: ")


def test_retrain_rules_name_their_fields() -> None:
    with pytest.raises(ConfigError) as caught:
        RetrainConfig(model="sgd", candidates=(("PU_DO",), ("PU_DO", "trip_distance")))
    assert {"candidates", "model", "folds"} <= set(re.findall(r"<(\w+)>", caught.value.render(MARKERS)))
    with pytest.raises(ConfigError, match="every alpha must be a positive number"):
        RetrainConfig(alphas=(0.0,))
    with pytest.raises(ConfigError, match="one fold cannot cross-validate"):
        RetrainConfig(folds=1)
    with pytest.raises(ConfigError, match="<registry>: the URL holds credentials"):
        try:
            RetrainConfig(registry="s3://bucket/r?X-Amz-Signature=abc")
        except ConfigError as exc:
            raise ConfigError(exc.render(MARKERS)) from None


def test_the_challengers_training_config_follows_the_model_and_folds() -> None:
    months = ([Month(2023, 1), Month(2023, 2)], Month(2023, 3))
    linear = RetrainConfig(seed=3, chunk_rows=1000).train_config(*months, "out", champion_terms=("PU_DO",))
    assert linear.candidates == DEFAULT_CANDIDATES and linear.read_also == ("PU_DO",) and linear.boosted_challenger
    assert (linear.alphas, linear.seed, linear.chunk_rows, linear.output) == (DEFAULT_ALPHAS, 3, 1000, "out")
    rows = RetrainConfig(model="sgd").train_config(*months, "out")
    assert rows.alphas == DEFAULT_ALPHAS[:1] and not rows.boosted_challenger and rows.candidates == () and rows.numeric == ()
    boosted = RetrainConfig(model="xgboost").train_config(*months, "out")  # retrain --model xgboost: xgboost.dask alone
    assert (boosted.model, boosted.alphas, boosted.boosted_challenger, boosted.xgb_rounds) == ("xgboost", DEFAULT_ALPHAS[:1], False, 100)
    with pytest.raises(ConfigError, match="without cross-validation nothing chooses among alphas"):
        RetrainConfig(folds=0)
    no_cv = RetrainConfig(folds=0, alphas=(1.0,), candidates=(("PU_DO", "trip_distance"),)).train_config(*months, "out")
    assert no_cv.features == ("PU_DO", "trip_distance") and no_cv.folds == 0  # names a zone term: the seed's are not added


# --- ScoreConfig ---------------------------------------------------------------------------------


def test_a_score_config_names_one_model() -> None:
    config = ScoreConfig(months="2023-04:2023-05", output="out", registry="r", version="v0001")
    assert config.months == (Month(2023, 4), Month(2023, 5)) and (config.max_psi, config.max_rmse_ratio) == (0.2, 1.5)
    for fields, named in (
        ({}, {"model", "registry", "version"}),
        ({"model": "m", "registry": "r"}, {"model", "registry", "version"}),
        ({"model": "m", "version": "v0001"}, {"version", "registry", "model"}),
    ):
        with pytest.raises(ConfigError) as caught:
            ScoreConfig(months="2023-04", output="out", **fields)
        assert set(re.findall(r"<(\w+)>", caught.value.render(MARKERS))) == named
    with pytest.raises(ConfigError) as caught:
        ScoreConfig.build(months="2023-13", output="out", model="m")
    assert caught.value.render({"months": "--months"}).startswith("--months '2023-13': ")
