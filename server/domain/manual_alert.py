"""A manual alert an agency admin composes (pure): validation of what the form or the
API sends. The area is public by nature: it is drawn to be announced."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import shapely

from server.domain import zones
from server.domain.errors import FieldError, ValidationFailed
from server.domain.severity import SEVERITIES

CATEGORY = "agency_alert"     # no call-type map can produce it (not in ALL_CATEGORIES)
CALL_TYPE = "Manual alert"
MAX_TITLE = 120
MAX_BODY = 240
MAX_EXPIRY_MINUTES = 24 * 60
MAX_AREA_VERTICES = 500        # a CAP polygon should stay readable by other systems


@dataclass(frozen=True)
class ManualAlert:
    title: str
    body: str
    severity: str
    area_geojson: str          # a valid GeoJSON Polygon without holes, lon/lat
    expires_in: dt.timedelta

    @property
    def area_wkt(self) -> str:
        return area_wkt(self.area_geojson)


def area_wkt(area_geojson: str) -> str:
    """The area as WKT, the form the matching queries take (server/store/matching.py)."""
    wkt: str = shapely.from_geojson(area_geojson).wkt
    return wkt


def validate_area(area: Any, field: str = "area") -> str:
    """The area as GeoJSON Polygon text; ValidationFailed naming the field otherwise."""
    if not isinstance(area, dict) or area.get("type") != "Polygon":
        raise ValidationFailed([FieldError(f"{field}.type", "must be a GeoJSON Polygon")])
    coordinates = area.get("coordinates")
    if isinstance(coordinates, list) and len(coordinates) > 1:
        raise ValidationFailed([FieldError(
            f"{field}.coordinates", "must be one ring: CAP areas have no holes")])
    if isinstance(coordinates, list) and coordinates and isinstance(coordinates[0], list) \
            and len(coordinates[0]) > MAX_AREA_VERTICES:
        raise ValidationFailed([FieldError(
            f"{field}.coordinates", f"has more than {MAX_AREA_VERTICES} vertices")])
    try:
        checked = zones.area(field, "", area)
    except zones.ZoneError as exc:
        # zones names the field "<field>.geometry..."; here the area is the geometry
        error = FieldError(exc.error.field.replace(f"{field}.geometry", field, 1),
                           exc.error.message)
        raise ValidationFailed([error]) from None
    multi = json.loads(checked.geojson)
    return json.dumps({"type": "Polygon", "coordinates": multi["coordinates"][0]})


def validate(*, title: str, body: str, severity: str, area: Any,
             expires_in_minutes: int) -> ManualAlert:
    errors = []
    title, body = title.strip(), body.strip()
    if not 1 <= len(title) <= MAX_TITLE:
        errors.append(FieldError("title", f"must be 1 to {MAX_TITLE} characters"))
    if not 1 <= len(body) <= MAX_BODY:
        errors.append(FieldError("body", f"must be 1 to {MAX_BODY} characters"))
    if severity not in SEVERITIES:
        errors.append(FieldError("severity", f"must be one of: {', '.join(SEVERITIES)}"))
    if not 1 <= expires_in_minutes <= MAX_EXPIRY_MINUTES:
        errors.append(FieldError("expires_in_minutes",
                                 f"must be between 1 and {MAX_EXPIRY_MINUTES}"))
    if errors:
        raise ValidationFailed(errors)
    return ManualAlert(title, body, severity, validate_area(area),
                       dt.timedelta(minutes=expires_in_minutes))
