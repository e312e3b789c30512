"""Whether an incident is pushed: pure, so every rule is tested without I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from server.domain.categories import NEIGHBOUR_ALERTABLE, RESPONDER_ONLY, UNMAPPED
from server.domain.incident import Incident, Status

ALERT = "alert"
REVIEW = "review"


def suppressed(reason: str) -> str:
    return f"suppressed:{reason}"


@dataclass(frozen=True)
class AgencyPolicy:
    """An agency's knobs; the defaults are the product's stance."""

    alertable: frozenset[str] = field(default=NEIGHBOUR_ALERTABLE | RESPONDER_ONLY)
    staleness: dt.timedelta = dt.timedelta(minutes=60)
    review: bool = False


def decide(incident: Incident, policy: AgencyPolicy, received_at: dt.datetime) -> str:
    """The decision for one revision of an incident, as the contract spells it."""
    if incident.status is Status.CLEARED:
        return suppressed("cleared")
    if incident.status is Status.CANCELLED:
        return suppressed("cancelled")
    if incident.category == UNMAPPED:
        return suppressed("unmapped")
    if incident.category not in policy.alertable:
        return suppressed("category")
    if received_at - incident.occurred_at > policy.staleness:
        return suppressed("stale")
    if policy.review:
        return REVIEW
    return ALERT


def is_pushable(decision: str) -> bool:
    return decision == ALERT
