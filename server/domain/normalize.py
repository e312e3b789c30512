"""RawIncident (any format) + the agency's rules -> Incident (pure)."""

from __future__ import annotations

import datetime as dt

from server.domain.categories import categorize
from server.domain.incident import Incident, RawIncident
from server.domain.privacy import (
    NeighbourhoodLookup,
    public_location,
    redact,
    round_point,
)
from server.domain.text import free_text_problem, single_line_problem
from server.web.problems import FieldError, ValidationFailed

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


def normalize(
    raw: RawIncident, *, agency_id: str, call_type_map: dict[str, str], now: dt.datetime,
    neighbourhood_of: NeighbourhoodLookup | None = None,
) -> Incident:
    """``neighbourhood_of`` names the neighbourhood a point lies in: the public location
    when the address is not a block or an intersection (None: withheld then)."""
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
        public_location=public_location(raw.address, public_point, neighbourhood_of),
        location_kind=raw.location_kind,
        priority=raw.priority,
        actual=raw.actual,
        narrative=redact(raw.narrative) if raw.narrative else None,
    )
