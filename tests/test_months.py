import pytest

from pipeline.errors import PipelineError
from pipeline.core.months import Month, parse_months


def test_lists_and_ranges_mix_sorted_unique():
    months = parse_months("2023-11:2024-02,2023-03,2023-12")
    assert [str(m) for m in months] == ["2023-03", "2023-11", "2023-12", "2024-01", "2024-02"]


def test_single_month():
    assert parse_months("2023-01") == [Month(2023, 1)]


@pytest.mark.parametrize("spec", ["2023-13", "2023-1", "23-01", "2023-03:2023-01", "", "2023-01:"])
def test_bad_specs_name_the_flag(spec):
    with pytest.raises(PipelineError) as info:
        parse_months(spec, flag="train-months")
    assert "--train-months" in str(info.value)
    assert "\n" not in str(info.value)
