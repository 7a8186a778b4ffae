"""The Prefect workarounds: exact, scoped to a run, and off on a Prefect version they were not written for."""

from __future__ import annotations

import warnings

import pytest
from prefect.context import SettingsContext
from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

from pipeline.runtime import prefect_patches


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
        assert len(messages) == 1 and "9.9.9" in messages[0] and prefect_patches.known() in messages[0]
    finally:
        prefect_patches.supported.cache_clear()


@pytest.fixture
def lean_task_starts(monkeypatch):
    """:func:`prefect_patches.lean_task_starts` for one test: the originals are put back after."""
    from prefect import task_engine
    from prefect.client import orchestration

    monkeypatch.setattr(task_engine, "hydrated_context", task_engine.hydrated_context)
    monkeypatch.setattr(orchestration, "ssl", orchestration.ssl)
    prefect_patches.lean_task_starts()
    prefect_patches.lean_task_starts()  # idempotent: wraps once
    return task_engine, orchestration


def test_task_starts_reuse_identical_settings_and_build_changed_ones(lean_task_starts):
    from prefect.settings import PREFECT_API_URL, get_current_settings

    task_engine, _ = lean_task_starts
    seen = []
    for url in ("http://127.0.0.1:9/api", "http://127.0.0.1:9/api", "http://127.0.0.1:8/api"):
        with temporary_settings(updates={PREFECT_API_URL: url}):
            serialized = {"settings_context": SettingsContext.get().serialize()}
        with task_engine.hydrated_context(serialized):
            seen.append(get_current_settings())
    assert [s.api.url for s in seen] == ["http://127.0.0.1:9/api", "http://127.0.0.1:9/api", "http://127.0.0.1:8/api"]
    assert seen[0] is seen[1] is not seen[2]  # built once per distinct settings, not once per task run


def test_api_clients_share_one_verifying_ssl_context_per_ca_file(lean_task_starts):
    import ssl

    import certifi
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    _, orchestration = lean_task_starts
    first = orchestration.ssl.create_default_context(cafile=certifi.where())
    assert orchestration.ssl.create_default_context(cafile=certifi.where()) is first
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    bare = orchestration.ssl.create_default_context()  # the insecure branch changes its context: never shared
    assert bare is not orchestration.ssl.create_default_context() and bare is not first
    assert orchestration.ssl.CERT_NONE is ssl.CERT_NONE  # the rest of the module is ssl's
    with temporary_settings(updates={PREFECT_API_URL: "https://127.0.0.1:9/api"}):  # made, never connected
        one, two = get_client(sync_client=True), get_client(sync_client=True)
    shared = one._client._transport._pool._ssl_context  # for the CA file Prefect's settings name (certifi's by default)
    assert two._client._transport._pool._ssl_context is shared and shared.verify_mode == ssl.CERT_REQUIRED
