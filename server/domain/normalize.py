"""RawIncident (any format) + the agency's rules -> Incident (pure)."""

from __future__ import annotations

import datetime as dt

from server.domain.categories import categorize
from server.domain.errors import FieldError, ValidationFailed
from server.domain.incident import Incident, RawIncident
from server.domain.privacy import (
    redact,
    round_point,
    street_location,
)
from server.domain.text import free_text_problem, single_line_problem

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


def normalize(
    raw: RawIncident, *, agency_id: str, call_type_map: dict[str, str], now: dt.datetime,
) -> Incident:
    """The public location is the address's block or intersection, or None (the web
    edge may then name the imported neighbourhood: web.ingest.name_the_neighbourhood)."""
    errors = []
    if raw.occurred_at > now + MAX_CLOCK_SKEW:
        errors.append(FieldError("occurred_at", "is more than 5 minutes in the future"))
    if raw.revision > now + MAX_CLOCK_SKEW:
        errors.append(FieldError("updated_at", "is more than 5 minutes in the future"))
    for field, problem in (("id", single_line_problem(raw.external_id)),
                           ("call_type", single_line_problem(raw.call_type)),
                           ("location.address", single_line_problem(raw.address)),
                           ("narrative", free_text_problem(raw.narrative))):
        if problem is not None:
            errors.append(FieldError(field, problem))
    if errors:
        raise ValidationFailed(errors)
    public_point = round_point(raw.point)
    return Incident(
        agency_id=agency_id,
        external_id=raw.external_id,
        revision=raw.revision,
        status=raw.status,
        call_type=raw.call_type,
        category=categorize(raw.call_type, call_type_map),
        occurred_at=raw.occurred_at,
        geometry_wkt=raw.geometry_wkt or raw.point.wkt(),
        public_point=public_point,
        public_location=street_location(raw.address),
        location_kind=raw.location_kind,
        priority=raw.priority,
        actual=raw.actual,
        narrative=redact(raw.narrative) if raw.narrative else None,
    )
