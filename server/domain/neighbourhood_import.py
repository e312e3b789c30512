"""Parsing a city's neighbourhoods for import: a GeoJSON FeatureCollection of
Polygons/MultiPolygons (pure).

Each feature needs a name (``properties[name_property]``) and gets a source id: the
feature's ``id``, else ``properties[id_property]`` when one is named, else its name;
re-importing the same source updates those neighbourhoods in place (their geopush ids,
and the zones that point at them, stay). Geometries are validated like a device's
zone (valid, at most 2,000 vertices, at most 1,000 km²).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.domain import geojson, zones
from server.domain.errors import FieldError, ValidationFailed

MAX_NEIGHBOURHOODS = 5_000
MAX_NAME = 100


@dataclass(frozen=True)
class Neighbourhood:
    source_id: str
    name: str
    geojson: str    # a valid MultiPolygon, lon/lat


def display_name(raw: str) -> str:
    """Names as a public location shows them: "ALASKA JUNCTION" -> "Alaska Junction";
    names already in mixed case are kept."""
    name = " ".join(raw.split())[:MAX_NAME]
    return name.title() if name.isupper() else name


def _text(value: Any) -> str | None:
    if isinstance(value, str | int) and not isinstance(value, bool):
        text = " ".join(str(value).split())
        return text or None
    return None


def parse_geojson(body: bytes, *, name_property: str, id_property: str | None = None,
                  source: str = "geojson") -> list[Neighbourhood]:
    collection = geojson.features(body)
    if len(collection) > MAX_NEIGHBOURHOODS:
        raise ValidationFailed([FieldError(
            "features", f"at most {MAX_NEIGHBOURHOODS} neighbourhoods per import")])
    errors: list[FieldError] = []
    found: dict[str, Neighbourhood] = {}
    for i, feature in enumerate(collection):
        field = f"features[{i}]"
        if not isinstance(feature, dict):
            errors.append(FieldError(field, "must be a GeoJSON Feature"))
            continue
        props = feature.get("properties")
        props = props if isinstance(props, dict) else {}
        name = _text(props.get(name_property))
        if name is None:
            errors.append(FieldError(f"{field}.properties.{name_property}",
                                     "is required (the neighbourhood's name)"))
            continue
        own_id = _text(feature.get("id")) or (
            _text(props.get(id_property)) if id_property else None) or name
        try:
            area = zones.area(field, name, feature.get("geometry"))
        except zones.ZoneError as exc:
            errors.append(exc.error)
            continue
        source_id = f"{source}:{own_id}"
        if source_id in found:
            errors.append(FieldError(field, f"repeats the id {own_id!r}"))
            continue
        found[source_id] = Neighbourhood(source_id, display_name(name), area.geojson)
    if errors:
        raise ValidationFailed(errors[:50], detail=f"{len(errors)} invalid feature(s)")
    if not found:
        raise ValidationFailed([FieldError("features", "contains no neighbourhoods")])
    return list(found.values())
