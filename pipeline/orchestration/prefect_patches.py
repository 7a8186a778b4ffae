"""A workaround for slow task submission in Prefect 3.8 (prefect #18191, open).

Every ``submit`` to a Dask task runner serialises the whole settings context
(a pydantic dump of all settings, walked for secrets): 50-100 ms per task on a
2-core machine, paid serially in the flow process. With 20 CV tasks that cost
more than the work. The settings of a run do not change between submits, so the
serialisation is memoised on the identity of the settings context object
(``temporary_settings`` makes a new one, so a change is never missed).
"""

from __future__ import annotations

from typing import Any

from prefect.context import SettingsContext

_original = SettingsContext.serialize
_memo: dict[str, Any] = {}


def _serialize(self: SettingsContext, include_secrets: bool = True) -> dict[str, Any]:
    if _memo.get("context") is self and _memo.get("include_secrets") == include_secrets:
        return _memo["result"]
    result = _original(self, include_secrets=include_secrets)
    _memo.update(context=self, include_secrets=include_secrets, result=result)  # holds self: its id is not reused
    return result


def install() -> None:
    """Memoise ``SettingsContext.serialize`` (idempotent)."""
    SettingsContext.serialize = _serialize  # type: ignore[method-assign]
