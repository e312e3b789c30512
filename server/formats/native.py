"""geopush's native JSON incident format (the contract's reference format)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec

from server.domain.errors import FieldError, ValidationFailed
from server.domain.incident import LocationKind, Point, RawIncident, Status
from server.formats.jsondecode import decode

CONTENT_TYPES = ("application/json",)

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
AwareDatetime = Annotated[dt.datetime, msgspec.Meta(tz=True)]


class NativeLocation(msgspec.Struct, frozen=True):
    lat: Latitude
    lon: Longitude
    address: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    kind: Literal["public", "residence"] | None = None


class NativeIncident(msgspec.Struct, frozen=True):
    """Fields not declared here (``caller``, patient data, …) are never decoded: they
    are dropped by the parser itself, not scrubbed afterwards. ``narrative`` is read
    only so an editor can see it, redacted, while an alert waits for review."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    call_type: NonEmpty
    occurred_at: AwareDatetime
    location: NativeLocation
    updated_at: AwareDatetime | None = None
    status: Literal["active", "cleared", "cancelled"] = "active"
    priority: Annotated[int, msgspec.Meta(ge=0, le=99)] | None = None
    narrative: Annotated[str, msgspec.Meta(max_length=20_000)] | None = None


_decoder = msgspec.json.Decoder(NativeIncident)


def parse(body: bytes) -> RawIncident:
    doc = decode(body, decoder=_decoder)
    if not doc.id.strip():
        raise ValidationFailed([FieldError("id", "must not be blank")])
    if not doc.call_type.strip():
        raise ValidationFailed([FieldError("call_type", "must not be blank")])
    point = Point(doc.location.lat, doc.location.lon)
    return RawIncident(
        external_id=doc.id.strip(),
        revision=doc.updated_at or doc.occurred_at,
        status=Status(doc.status),
        call_type=doc.call_type.strip(),
        occurred_at=doc.occurred_at,
        point=point,
        geometry_wkt=None,
        address=doc.location.address,
        location_kind=LocationKind(doc.location.kind) if doc.location.kind else None,
        priority=doc.priority,
        narrative=doc.narrative,
    )
