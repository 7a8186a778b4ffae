"""Feature terms: parsing, the codes the chunk kernel computes, and one clear error per bad term."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.core.features import FeatureSpec, factor_codes
from pipeline.core.schema import PICKUP
from pipeline.core.terms import MAX_LEVELS, ZONE_TERMS, Bins, Clock, TermError, parse_terms, split_terms


def test_the_seed_and_the_course_spell_their_sets():
    seed = FeatureSpec.of("PULocationID,DOLocationID,PU_DO")
    assert seed == FeatureSpec() and seed.terms == ZONE_TERMS and seed.to_dict() == FeatureSpec().to_dict()
    course = FeatureSpec.of("PU_DO,trip_distance")
    assert course.zones == ("PU_DO",) and course.numeric == ("trip_distance",) and not course.factors
    assert FeatureSpec.from_dict(course.to_dict()) == course


def test_commas_inside_brackets_stay_in_their_term():
    assert split_terms("PU_DO, trip_distance:[1,2,5] ,hour/4,x:log8(0.5,20)") == [
        "PU_DO",
        "trip_distance:[1,2,5]",
        "hour/4",
        "x:log8(0.5,20)",
    ]


def test_factors_and_their_levels():
    spec = FeatureSpec.of("PULocationID,DOLocationID,PU_DO,trip_distance:log48,hour_of_week,trip_distance:[1,2,5]*hour/4,weekday")
    assert [f.name for f in spec.factors] == ["trip_distance:log48", "hour_of_week", "trip_distance:[1,2,5]*hour/4", "weekday"]
    assert [f.levels for f in spec.factors] == [48, 168, 4 * 6, 7]
    assert spec.levels == 247 and spec.offsets() == (0, 48, 216, 240)
    assert spec.columns()[-1] == "trip_distance"
    (log,) = spec.factors[0].parts
    assert isinstance(log, Bins) and len(log.edges) == 47 and log.edges[0] == pytest.approx(0.1) and log.edges[-1] == pytest.approx(50)


def test_bins_put_outliers_in_the_end_bins():
    bins = Bins("trip_distance", (1.0, 2.0, 5.0), "[1,2,5]")
    values = np.array([-3.0, 0.0, 0.99, 1.0, 1.5, 2.0, 4.99, 5.0, 244_152.0])
    assert bins.codes(values).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("term", ["trip_distance:log48", "trip_distance:log24(0.5,40)", "trip_distance:log2(1,3)"])
def test_log_bins_are_those_a_binary_search_gives_at_and_beside_every_edge(term):
    (bins,) = FeatureSpec.of(term).factors[0].parts
    assert isinstance(bins, Bins)
    edges = np.asarray(bins.edges)
    beside = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)])
    spread = np.random.default_rng(0).lognormal(1, 2, 20_000)
    odd = [np.nan, -np.inf, np.inf, -1.0, 0.0, 5e-324, 1e308, -0.0]
    values = np.concatenate([beside, spread, odd])
    assert bins.codes(values).tolist() == np.searchsorted(edges, values, side="right").tolist()


def test_clock_codes_match_pandas():
    seconds = np.random.default_rng(0).integers(-2_000_000_000, 4_000_000_000, 5_000)  # before 1970 and after 2038 too
    stamps = pd.Series(pd.to_datetime(seconds, unit="s"))
    micros = stamps.astype("datetime64[us]").astype("int64").to_numpy()
    assert Clock("hour").codes(micros).tolist() == stamps.dt.hour.tolist()
    assert Clock("weekday").codes(micros).tolist() == stamps.dt.day_of_week.tolist()
    assert Clock("hour_of_week").codes(micros).tolist() == (stamps.dt.day_of_week * 24 + stamps.dt.hour).tolist()
    assert Clock("hour", 4).codes(micros).tolist() == (stamps.dt.hour // 4).tolist()
    assert Clock("hour_of_week", 3).codes(micros).tolist() == ((stamps.dt.day_of_week * 24 + stamps.dt.hour) // 3).tolist()


def test_factor_codes_of_a_table_are_offset_and_interacted():
    spec = FeatureSpec.of("PU_DO,weekday,trip_distance:[2]*hour/12")
    table = pa.table(
        {PICKUP: pa.array(pd.to_datetime(["2021-03-15 08:30", "2021-03-21 23:59"]), pa.timestamp("us")), "trip_distance": [1.0, None]}
    )
    # Monday -> 0, Sunday -> 6; then (bin, 12-hour block): (0, 0) -> 7 + 0, (0 for a null distance, 1) -> 7 + 1
    assert factor_codes(table, spec).tolist() == [[0, 7], [6, 8]]


def test_a_zone_interacts_with_a_factor_unknown_ids_at_level_0():
    spec = FeatureSpec.of("PULocationID,DOLocationID,PU_DO,hour,PULocationID*hour/4")
    assert [f.levels for f in spec.factors] == [24, 266 * 6]
    assert spec.columns() == ("pickup_datetime", "dropoff_datetime", "PULocationID", "DOLocationID")  # zones are read anyway
    stamps = pd.to_datetime(["2021-03-15 08:30", "2021-03-15 23:10", "2021-03-15 00:05", "2021-03-15 13:00"])
    table = pa.table({PICKUP: pa.array(stamps, pa.timestamp("us")), "PULocationID": pa.array([132, 265, 300, None], pa.int64())})
    # pickup zone × block of 4 hours: 132 at 08:30 -> 132 * 6 + 2; 265 at 23:10 -> 265 * 6 + 5; 300 (no zone) and a null -> zone 0
    assert factor_codes(table, spec)[:, 1].tolist() == [24 + 132 * 6 + 2, 24 + 265 * 6 + 5, 24 + 0, 24 + 3]


def test_quantile_bins_get_their_edges_written_into_the_term():
    from pipeline.core.config import TrainConfig
    from pipeline.core.terms import quantile_columns, quantile_edges, with_quantile_edges

    values = np.r_[np.zeros(60), np.arange(1.0, 41.0)]  # 60% of the trips at 0 miles: repeated quantiles merge
    edges = quantile_edges(values, 4)
    assert edges == (0.0, 15.25)  # the 1/4 and 2/4 quantiles are both 0: 3 bins, not 4
    assert quantile_columns(["PU_DO", "trip_distance:q4*hour/4", "fare_amount:q8", "trip_distance:q4"]) == {
        "trip_distance": {4},
        "fare_amount": {8},
    }
    term = with_quantile_edges("trip_distance:q4*hour/4", {("trip_distance", 4): edges})
    assert term == "trip_distance:q4[0.0,15.25]*hour/4"
    (factor,) = parse_terms(["PU_DO", term]).factors
    assert factor.levels == 3 * 6 and factor.name == term and quantile_columns([term]) == {}
    with pytest.raises(TermError, match="quantile edges are fixed by a run"):
        factor_codes(pa.table({"trip_distance": [1.0]}), FeatureSpec.of("PU_DO,trip_distance:q4"))
    config = TrainConfig(
        train_months="2021-01", val_month="2021-02", output="out", alphas=(1.0, 3.0),
        candidates=(("base",), ("trip_distance:q4,hour",)), read_also=("trip_distance:q4",),
    )  # fmt: skip
    fixed = config.with_quantile_edges({("trip_distance", 4): edges})
    assert fixed.candidates[1] == (*ZONE_TERMS, "trip_distance:q4[0.0,15.25]", "hour")
    assert fixed.read_also == ("trip_distance:q4[0.0,15.25]",) and fixed.features == config.features


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ("PU_DO,trip_distance:cube3", "bins are COLUMN:logN"),
        ("PU_DO,trip_distance:[1,5,2]", "bin edges must be strictly increasing"),
        ("PU_DO,trip_distance:log1", "2 or more bins"),
        ("PU_DO,trip_distance:log8(5,1)", "0 < LOW < HIGH"),
        ("PU_DO,hour/5", "blocks that divide 24"),
        ("PU_DO,minute", None),  # a numeric column: the month's columns decide (see the CLI test)
        ("PU_DO,trip_distance:q1", "2 or more bins"),
        ("PU_DO,trip_distance:q3[1,2,3]", "at most 2 edges"),
        ("PU_DO,trip_distance:q3[2,1]", "strictly increasing"),
        ("PU_DO,PU_DO*hour/4", "PU_DO cannot interact"),
        ("PU_DO,PULocationID*DOLocationID", "the zone pair is PU_DO"),
        ("PU_DO,PULocationID*hour/4,DOLocationID*hour/4", f"at most {MAX_LEVELS} levels"),
        ("PU_DO,trip_distance:log48*hour_of_week", f"at most {MAX_LEVELS} levels"),
        ("PU_DO,PU_DO", "listed twice"),
        ("PU_DO,hour?", "unknown term"),
    ],
)
def test_bad_terms_are_named(terms: str, message: str | None):
    if message is None:
        assert parse_terms(terms).numeric == ("minute",)
        return
    with pytest.raises(TermError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_terms(terms)
