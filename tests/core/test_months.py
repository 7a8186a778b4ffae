import pytest

from pipeline.core.months import Month, parse_months
from pipeline.errors import PipelineError


def test_lists_and_ranges_mix_sorted_unique():
    months = parse_months("2023-11:2024-02,2023-03,2023-12")
    assert [str(m) for m in months] == ["2023-03", "2023-11", "2023-12", "2024-01", "2024-02"]


def test_single_month():
    assert parse_months("2023-01") == [Month(2023, 1)]


@pytest.mark.parametrize("spec", ["2023-13", "2023-1", "23-01", "2023-03:2023-01", "", "2023-01:"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(PipelineError) as info:
        parse_months(spec)
    assert "\n" not in str(info.value) and str(info.value)
