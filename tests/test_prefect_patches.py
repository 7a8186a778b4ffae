"""The Prefect workarounds: exact, scoped to a run, and off on a Prefect version they were not written for."""

from __future__ import annotations

import warnings

import pytest
from prefect.context import SettingsContext
from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

from pipeline.orchestration import prefect_patches


def test_memo_is_exact_follows_settings_changes_and_is_removed_after_the_scope():
    original = SettingsContext.serialize
    with prefect_patches.installed():
        with prefect_patches.installed():  # nested scopes share the outer patch
            patched = SettingsContext.serialize
        assert SettingsContext.serialize is patched is not original
        context = SettingsContext.get()
        first = context.serialize()
        assert context.serialize() is first  # memoised: no second pydantic dump
        assert first == original(context)
        with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "ERROR"}):
            changed = SettingsContext.get().serialize()
            assert changed is not first
            assert changed["settings"]["logging"]["level"] == "ERROR"
        assert SettingsContext.get().serialize() == first
    assert SettingsContext.serialize is original


def test_restored_after_an_exception():
    original = SettingsContext.serialize
    with pytest.raises(RuntimeError), prefect_patches.installed():
        raise RuntimeError("boom")
    assert SettingsContext.serialize is original


def test_on_another_prefect_version_nothing_is_patched_and_it_warns_once(monkeypatch):
    import prefect

    monkeypatch.setattr(prefect, "__version__", "9.9.9")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # restored after the test
    prefect_patches.supported.cache_clear()
    try:
        original = SettingsContext.serialize
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with prefect_patches.installed():
                assert SettingsContext.serialize is original
            with prefect_patches.installed():
                pass
            assert prefect_patches.point_prefect_at("http://127.0.0.1:9/api") is False
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "9.9.9" in messages[0] and "3.8.8" in messages[0]
    finally:
        prefect_patches.supported.cache_clear()
