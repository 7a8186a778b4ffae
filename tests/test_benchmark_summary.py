"""The benchmarks' terminal summary: a quick-scale headline says that relaxed floors, not its goal, let it pass."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

conftest = pytest.importorskip("benchmarks.conftest")


def _summary(monkeypatch: pytest.MonkeyPatch, quick: bool) -> list[str]:
    monkeypatch.delenv("BENCH_QUICK", raising=False)
    written: list[str] = []
    reporter = SimpleNamespace(write_sep=lambda sep, title: written.append(title), write_line=written.append)
    options = {"bench_quick": quick}
    config: Any = SimpleNamespace(stash={conftest.HEADLINES: ["whole command vs the seed: 0.3x (goal 15x)"]}, getoption=options.get)
    conftest.pytest_terminal_summary(reporter, 0, config)
    return written


def test_a_quick_headline_says_its_floors_are_relaxed(monkeypatch):
    title, line = _summary(monkeypatch, quick=True)
    assert title == "headline ratios"
    assert line.startswith("whole command vs the seed: 0.3x (goal 15x)") and "quick scale: relaxed floors" in line


def test_a_default_scale_headline_is_printed_as_is(monkeypatch):
    assert _summary(monkeypatch, quick=False)[1] == "whole command vs the seed: 0.3x (goal 15x)"
