"""Champion or challenger: the rule, and the record of each decision.

The challenger replaces the champion only if its RMSE on the new validation
month is lower than the champion's RMSE on the same month. A tie (equal to
:data:`TIE_REL_TOL`, as an identical retrain gives) keeps the champion: an equal
model is no reason to move the serving pointer. A champion that cannot be scored
there is kept: an unmeasured comparison never promotes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

#: RMSEs this close are a tie: the champion's is scored apart from the challenger's, so the same model may differ in its last bits.
TIE_REL_TOL = 1e-9


@dataclass(frozen=True)
class Decision:
    """One line of ``history.jsonl``: what happened to the champion, and why."""

    action: str  # "promote" | "keep" | "manual-promote" | "rollback"
    version: str
    champion_before: str | None
    champion_after: str | None
    challenger_rmse: float | None
    champion_rmse: float | None  # the previous champion's RMSE on val_month, when it was scored
    val_month: str | None
    reason: str
    time: str

    def to_dict(self) -> dict[str, Any]:
        """The ``history.jsonl`` object."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """Read a ``history.jsonl`` object; a missing field is a KeyError, extra fields are ignored."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def decide(val_month: str, challenger_rmse: float, champion: str | None, scored: float | None) -> tuple[str, str, float | None]:
    """The action, its reason, and the champion's RMSE as recorded (None unless a finite number)."""
    if champion is None:
        return "promote", "first version", None
    month = val_month
    if scored is None or not math.isfinite(float(scored)):
        why = "it cannot be scored" if scored is None else f"its score is {scored}"
        return "keep", f"kept the champion {champion}: {why} on {month}, so the challenger cannot be compared", None
    rmse = float(scored)
    if math.isclose(challenger_rmse, rmse, rel_tol=TIE_REL_TOL):
        figures = f"({challenger_rmse:.6g} = {rmse:.6g} for {champion})"
        return "keep", f"kept the champion {champion}: the challenger ties it on {month} {figures}, so nothing would improve", rmse
    if challenger_rmse < rmse:
        return "promote", f"better than the champion on {month} ({challenger_rmse:.6g} < {rmse:.6g} for {champion})", rmse
    return "keep", f"worse than the champion on {month} ({challenger_rmse:.6g} > {rmse:.6g} for {champion})", rmse
