"""The submit-time memo of Prefect's settings serialisation is exact and follows settings changes."""

from prefect.context import SettingsContext
from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

from pipeline.orchestration import prefect_patches


def test_memo_returns_the_same_serialisation_and_sees_new_settings():
    prefect_patches.install()
    prefect_patches.install()  # idempotent
    context = SettingsContext.get()
    first = context.serialize()
    assert context.serialize() is first  # memoised: no second pydantic dump
    assert first == prefect_patches._original(context)
    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "ERROR"}):
        changed = SettingsContext.get().serialize()
        assert changed is not first
        assert changed["settings"]["logging"]["level"] == "ERROR"
    assert SettingsContext.get().serialize() == first
