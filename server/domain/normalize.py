"""RawIncident (any format) + the agency's rules -> Incident (pure)."""

from __future__ import annotations

import datetime as dt

from server.domain.categories import categorize
from server.domain.errors import FieldError, ValidationFailed
from server.domain.incident import Incident, RawIncident
from server.domain.privacy import generalize_address, redact, round_point

MAX_CLOCK_SKEW = dt.timedelta(minutes=5)


def normalize(
    raw: RawIncident, *, agency_id: str, call_type_map: dict[str, str], now: dt.datetime
) -> Incident:
    errors = []
    if raw.occurred_at > now + MAX_CLOCK_SKEW:
        errors.append(FieldError("occurred_at", "is more than 5 minutes in the future"))
    if raw.revision > now + MAX_CLOCK_SKEW:
        errors.append(FieldError("updated_at", "is more than 5 minutes in the future"))
    if errors:
        raise ValidationFailed(errors)
    return Incident(
        agency_id=agency_id,
        external_id=raw.external_id,
        revision=raw.revision,
        status=raw.status,
        call_type=raw.call_type,
        category=categorize(raw.call_type, call_type_map),
        occurred_at=raw.occurred_at,
        geometry_wkt=raw.geometry_wkt or raw.point.wkt(),
        public_point=round_point(raw.point),
        public_location=generalize_address(raw.address),
        location_kind=raw.location_kind,
        priority=raw.priority,
        actual=raw.actual,
        narrative=redact(raw.narrative) if raw.narrative else None,
    )
