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


DEFAULT_ALERTABLE: frozenset[str] = NEIGHBOUR_ALERTABLE | RESPONDER_ONLY


@dataclass(frozen=True)
class AgencyPolicy:
    """An agency's knobs; the defaults are the product's stance.

    Agencies may narrow the alertable categories (never widen them beyond the
    product's set), change the staleness window, and hold alerts for review, either
    all of them or some categories.
    """

    alertable: frozenset[str] = field(default=DEFAULT_ALERTABLE)
    staleness: dt.timedelta = dt.timedelta(minutes=60)
    review: bool = False
    review_categories: frozenset[str] = frozenset()


def decide(incident: Incident, policy: AgencyPolicy, received_at: dt.datetime) -> str:
    """The decision for one revision of an incident, as the contract spells it."""
    if not incident.actual:
        return suppressed("test")
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
    if policy.review or incident.category in policy.review_categories:
        return REVIEW
    return ALERT


def is_pushable(decision: str) -> bool:
    return decision == ALERT
