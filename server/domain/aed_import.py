"""Parsing AED lists for import: GeoJSON Point features or CSV (pure)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from server.domain import geojson
from server.domain.errors import FieldError, ValidationFailed

MAX_AEDS = 50_000
_LAT = ("lat", "latitude", "y")
_LON = ("lon", "lng", "long", "longitude", "x")


@dataclass(frozen=True)
class Aed:
    source_id: str | None
    name: str
    description: str | None
    lat: float
    lon: float


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text[:limit] or None


def _coord(value: Any, bound: float) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and abs(number) <= bound else None


def _aed(field: str, props: dict[str, Any], lat: Any, lon: Any,
         errors: list[FieldError]) -> Aed | None:
    lat_f, lon_f = _coord(lat, 90), _coord(lon, 180)
    if lat_f is None or lon_f is None:
        errors.append(FieldError(field, "needs a latitude within ±90 and a longitude within ±180"))
        return None
    name = _text(props.get("name") or props.get("title") or props.get("location"), 100)
    source_id = _text(props.get("id") or props.get("source_id"), 100)
    description = _text(props.get("description") or props.get("access"), 200)
    # Line breaks were folded into spaces above; NUL can't be stored at all.
    bad = [key for key, value in (("name", name), ("id", source_id),
                                  ("description", description)) if value and "\x00" in value]
    if bad:
        errors.extend(FieldError(f"{field}.{key}", "must not contain NUL characters")
                      for key in bad)
        return None
    return Aed(source_id=source_id, name=name or "AED", description=description,
               lat=lat_f, lon=lon_f)


def parse_geojson(body: bytes) -> list[Aed]:
    errors: list[FieldError] = []
    aeds: list[Aed] = []
    for i, feature in enumerate(geojson.features(body)):
        field = f"features[{i}]"
        geometry = feature.get("geometry") if isinstance(feature, dict) else None
        if not isinstance(geometry, dict) or geometry.get("type") != "Point" \
                or not isinstance(geometry.get("coordinates"), list) \
                or len(geometry["coordinates"]) < 2:
            errors.append(FieldError(f"{field}.geometry", "must be a GeoJSON Point"))
            continue
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        lon, lat = geometry["coordinates"][:2]
        aed = _aed(f"{field}.geometry.coordinates", props, lat, lon, errors)
        if aed:
            aeds.append(aed)
    return _checked(aeds, errors)


def parse_csv(body: bytes) -> list[Aed]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationFailed([FieldError("body", "CSV must be UTF-8")]) from None
    reader = csv.DictReader(io.StringIO(text))
    header = {h.strip().lower(): h for h in reader.fieldnames or []}
    lat_col = next((header[c] for c in _LAT if c in header), None)
    lon_col = next((header[c] for c in _LON if c in header), None)
    if lat_col is None or lon_col is None:
        raise ValidationFailed([FieldError(
            "header", "needs latitude and longitude columns (lat/latitude, lon/lng/longitude)")])
    errors: list[FieldError] = []
    aeds: list[Aed] = []
    for line, row in enumerate(reader, start=2):
        props = {k.strip().lower(): v for k, v in row.items() if k}
        aed = _aed(f"line {line}", props, row.get(lat_col), row.get(lon_col), errors)
        if aed:
            aeds.append(aed)
    return _checked(aeds, errors)


def _checked(aeds: list[Aed], errors: list[FieldError]) -> list[Aed]:
    if errors:
        raise ValidationFailed(errors[:50], detail=f"{len(errors)} invalid AED record(s)")
    if not aeds:
        raise ValidationFailed([FieldError("body", "contains no AEDs")])
    if len(aeds) > MAX_AEDS:
        raise ValidationFailed([FieldError("body", f"at most {MAX_AEDS} AEDs per import")])
    return aeds
