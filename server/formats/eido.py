"""NENA EIDO (Emergency Incident Data Object, NENA-STA-021 / conveyed per STA-024) JSON.

Lenient about names, strict about types: every field read must have the JSON type
named here, or the request is refused with 422 naming the field. Names accepted:

- ``incidentComponent``: one object, or a list of them (the first is used).
- Incident id: ``incidentTrackingIdentifier``, else ``$id``, else ``id`` (string).
- Call type: ``incidentTypeCommonRegistryText`` (string, or list of strings: the
  first), else ``incidentTypeInternalText``, else ``incidentTypeInternalCode``.
- Status: ``incidentStatusCommonRegistryText`` (string or list of strings).
  Cancelled/Canceled -> cancelled; Closed/Cleared/Complete(d)/Resolved/Inactive ->
  cleared (a cancel wins over a close when a list holds both); anything else
  (Active, Received, Queued, Dispatched, Enroute, OnScene, …) or absent -> active.
- Revision: the incident's ``lastUpdateTimeStamp``, else the document's, else
  ``incidentCreationTimeStamp``. Occurred at: ``incidentCreationTimeStamp``, else
  the revision. One of them is required; all need a UTC offset.
- Priority: ``priority`` (integer 0..99, as in the native format), else
  ``incidentCommonPriorityNumber`` (EIDO: 0..10, 10 most urgent), turned into
  geopush's "1 is most urgent" scale as ``11 - n``.
- Location: ``locationComponent`` (list or object) at the top level or inside the
  incident. The components named by the incident's ``locationReference`` (a
  ``{"$ref": id}`` object, an id string, ``"$ref:id"`` or ``"#id"``, or a list of
  those; matched against a component's ``$id``, ``id`` or ``componentIdentifier``)
  are tried first; without a usable reference, every component except those typed
  ``Caller`` (``locationTypeDescriptionRegistryText``) is tried. The first one
  with a ``locationByValue`` is used. That is a PIDF-LO XML string, parsed with the
  safe XML helper (no DTDs, no entities): the first ``gml:Point`` (``gml:pos`` "lat
  lon [alt]"), ``gs:Circle`` (``gml:pos`` and ``gs:radius`` in metres) or
  ``gml:Polygon`` (exterior ring as ``gml:posList`` or ``gml:pos`` list, lat lon
  order per EPSG:4326/4979; holes ignored) gives the point/geometry, and a
  ``ca:civicAddress`` gives the address "HNO[HNS] PRD A6|RD STS POD[, A3]".
- Narrative: the ``notesActionComments`` (NENA) or ``noteText`` strings of
  ``notesComponent`` entries, one per line.

Never read: ``personComponent``, ``callComponent``, ``callbackComponent``,
``agentComponent``, ``vehicleComponent`` and everything else not listed above.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shapely.geometry import Polygon

from server.domain.errors import FieldError, ValidationFailed
from server.domain.incident import Point, RawIncident, Status
from server.formats.cap import (
    MIN_RADIUS_KM,
    area_wkt,
    check_lat_lon,
    checked_polygon,
    circle_polygon,
    parse_time,
)
from server.formats.jsondecode import decode
from server.formats.safexml import child, descendants, parse_xml, text_of

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

CONTENT_TYPES = ("application/eido+json",)

GML = "http://www.opengis.net/gml"
PIDFLO = "http://www.opengis.net/pidflo/1.0"
CIVIC = "urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr"
METRE_UOMS = ("urn:ogc:def:uom:EPSG::9001", "urn:ogc:def:uom:EPSG:9001")

MAX_ID = 128
MAX_TEXT = 200
MAX_PIDF_BYTES = 64 * 1024
MAX_RADIUS_M = 1_000_000.0

_CANCELLED = {"cancelled", "canceled", "cancel"}
_CLEARED = {"closed", "cleared", "complete", "completed", "resolved", "inactive"}

_REF_KEYS = ("$id", "id", "componentIdentifier")


def _fail(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([FieldError(field, message)])


# --- typed access to decoded JSON ---------------------------------------------------


def _obj(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, "must be an object")
    return value


def _objects(value: object, field: str) -> list[tuple[str, dict[str, Any]]]:
    """An object or a list of objects -> [(field path, object)]."""
    if isinstance(value, dict):
        return [(field, value)]
    if isinstance(value, list):
        return [(f"{field}[{i}]", _obj(v, f"{field}[{i}]")) for i, v in enumerate(value)]
    raise _fail(field, "must be an object or a list of objects")


def _str(doc: dict[str, Any], key: str, field: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(field, "must be a string")
    return value.strip() or None


def _first_str(doc: dict[str, Any], key: str, field: str) -> str | None:
    """A string, or the first non-blank string of a list of strings."""
    value = doc.get(key)
    if isinstance(value, list):
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise _fail(f"{field}[{i}]", "must be a string")
        value = next((v for v in value if v.strip()), None)
    return _str({key: value}, key, field)


def _strings(doc: dict[str, Any], key: str, field: str) -> list[str]:
    value = doc.get(key)
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        if not isinstance(v, str):
            raise _fail(f"{field}[{i}]" if isinstance(value, list) else field, "must be a string")
    return [v.strip() for v in items if v.strip()]


def _int(doc: dict[str, Any], key: str, field: str, lo: int, hi: int) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(field, f"must be an integer from {lo} to {hi}")
    return value


def _time(doc: dict[str, Any], key: str, field: str) -> dt.datetime | None:
    value = _str(doc, key, field)
    return None if value is None else parse_time(value, field)


# --- incident fields ---------------------------------------------------------------


def _external_id(inc: dict[str, Any], path: str) -> str:
    for key in ("incidentTrackingIdentifier", "$id", "id"):
        value = _str(inc, key, f"{path}.{key}")
        if value is not None:
            if len(value) > MAX_ID:
                raise _fail(f"{path}.{key}", f"is longer than {MAX_ID} characters")
            return value
    raise _fail(f"{path}.incidentTrackingIdentifier", "is required")


def _call_type(inc: dict[str, Any], path: str) -> str:
    for key in ("incidentTypeCommonRegistryText", "incidentTypeInternalText",
                "incidentTypeInternalCode"):
        value = _first_str(inc, key, f"{path}.{key}")
        if value is not None:
            if len(value) > MAX_TEXT:
                raise _fail(f"{path}.{key}", f"is longer than {MAX_TEXT} characters")
            return value
    raise _fail(f"{path}.incidentTypeCommonRegistryText", "is required")


def _status(inc: dict[str, Any], path: str) -> Status:
    key = "incidentStatusCommonRegistryText"
    words = {"".join(ch for ch in s.lower() if ch.isalpha())
             for s in _strings(inc, key, f"{path}.{key}")}
    if words & _CANCELLED:
        return Status.CANCELLED
    if words & _CLEARED:
        return Status.CLEARED
    return Status.ACTIVE


def _times(doc: dict[str, Any], inc: dict[str, Any], path: str) -> tuple[dt.datetime, dt.datetime]:
    updated = _time(inc, "lastUpdateTimeStamp", f"{path}.lastUpdateTimeStamp")
    if updated is None:
        updated = _time(doc, "lastUpdateTimeStamp", "lastUpdateTimeStamp")
    created = _time(inc, "incidentCreationTimeStamp", f"{path}.incidentCreationTimeStamp")
    revision = updated or created
    if revision is None:
        raise _fail(f"{path}.lastUpdateTimeStamp", "is required")
    return revision, created or revision


def _priority(inc: dict[str, Any], path: str) -> int | None:
    own = _int(inc, "priority", f"{path}.priority", 0, 99)
    if own is not None:
        return own
    common = _int(inc, "incidentCommonPriorityNumber",
                  f"{path}.incidentCommonPriorityNumber", 0, 10)
    return None if common is None else 11 - common


def _narrative(doc: dict[str, Any]) -> str | None:
    if doc.get("notesComponent") is None:
        return None
    texts: list[str] = []
    for path, note in _objects(doc["notesComponent"], "notesComponent"):
        for key in ("notesActionComments", "noteText"):
            texts.extend(_strings(note, key, f"{path}.{key}"))
    return "\n".join(texts) or None


# --- locations ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    point: Point
    geometry_wkt: str | None
    address: str | None


def _ref_ids(inc: dict[str, Any], path: str) -> list[str]:
    value = inc.get("locationReference")
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    ids: list[str] = []
    for item in items:
        ref = item.get("$ref") if isinstance(item, dict) else item
        if not isinstance(ref, str):
            raise _fail(f"{path}.locationReference", "must be {\"$ref\": id}, an id, or a list")
        ref = ref.strip()
        ref = ref.removeprefix("$ref:").strip().removeprefix("#")
        if ref:
            ids.append(ref)
    return ids


def _component_id(comp: dict[str, Any]) -> str | None:
    for key in _REF_KEYS:
        value = comp.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip().removeprefix("#")
    return None


def _candidates(doc: dict[str, Any], inc: dict[str, Any], path: str) -> list[
    tuple[str, dict[str, Any]]
]:
    comps: list[tuple[str, dict[str, Any]]] = []
    if doc.get("locationComponent") is not None:
        comps += _objects(doc["locationComponent"], "locationComponent")
    if inc.get("locationComponent") is not None:
        comps += _objects(inc["locationComponent"], f"{path}.locationComponent")
    by_id = {cid: (p, c) for p, c in comps if (cid := _component_id(c)) is not None}
    referenced = [by_id[r] for r in _ref_ids(inc, path) if r in by_id]
    if referenced:
        return referenced
    kind_key = "locationTypeDescriptionRegistryText"
    return [
        (p, c) for p, c in comps
        if (_str(c, kind_key, f"{p}.{kind_key}") or "").lower() != "caller"
    ]


def chosen_location(doc: dict[str, Any], inc: dict[str, Any], path: str = "incidentComponent",
                    ) -> tuple[str, str | None]:
    """The field path and PIDF-LO text of the location the incident is read at (None
    when no candidate has a ``locationByValue``)."""
    for comp_path, comp in _candidates(doc, inc, path):
        field = f"{comp_path}.locationByValue"
        pidf = _str(comp, "locationByValue", field)
        if pidf is not None:
            return field, pidf
    return "locationComponent", None


def _location(doc: dict[str, Any], inc: dict[str, Any], path: str) -> _Location:
    field, pidf = chosen_location(doc, inc, path)
    if pidf is not None:
        return _pidf_location(pidf, field)
    raise _fail("locationComponent",
                "an incident location (locationByValue, PIDF-LO) is required")


def _pidf_location(pidf: str, field: str) -> _Location:
    root = parse_xml(pidf, field=field, max_bytes=MAX_PIDF_BYTES)
    address = _civic_address(root)
    for elem in root.iter():
        tag = elem.tag if isinstance(elem.tag, str) else ""
        if tag == f"{{{GML}}}Point":
            return _Location(_pos(child(elem, GML, "pos"), field), None, address)
        if tag == f"{{{PIDFLO}}}Circle":
            point, poly = _circle(elem, field)
            return _Location(point, area_wkt([poly] if poly else []), address)
        if tag == f"{{{GML}}}Polygon":
            poly = _polygon(elem, field)
            c = poly.centroid
            return _Location(Point(lat=float(c.y), lon=float(c.x)), area_wkt([poly]), address)
    raise _fail(field, "needs a gml:Point, gs:Circle or gml:Polygon (civic-only "
                       "locations are not geocoded)")


def _numbers(text: str | None, field: str) -> list[float]:
    if text is None:
        raise _fail(field, "coordinates are missing")
    try:
        values = [float(x) for x in text.split()]
    except ValueError:
        raise _fail(field, "coordinates must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise _fail(field, "coordinates must be finite numbers")
    return values


def _pos(elem: Element | None, field: str) -> Point:
    values = _numbers(text_of(elem), field)
    if len(values) not in (2, 3):
        raise _fail(field, "gml:pos must be 'lat lon' or 'lat lon alt'")
    lat, lon = values[0], values[1]
    check_lat_lon(lat, lon, field)
    return Point(lat=lat, lon=lon)


def _circle(elem: Element, field: str) -> tuple[Point, Polygon | None]:
    centre = _pos(child(elem, GML, "pos"), field)
    radius_elem = child(elem, PIDFLO, "radius")
    radius = _numbers(text_of(radius_elem), field)
    if len(radius) != 1:
        raise _fail(field, "gs:radius must be one number (metres)")
    uom = radius_elem.get("uom") if radius_elem is not None else None
    if uom is not None and uom not in METRE_UOMS:
        raise _fail(field, "gs:radius must be in metres (urn:ogc:def:uom:EPSG::9001)")
    metres = radius[0]
    if not 0 <= metres <= MAX_RADIUS_M:
        raise _fail(field, f"gs:radius must be between 0 and {MAX_RADIUS_M:g} metres")
    if metres < MIN_RADIUS_KM * 1000:
        return centre, None
    return centre, circle_polygon(centre.lat, centre.lon, metres / 1000.0, field)


def _dimension(elem: Element, srs_name: str | None) -> int:
    declared = elem.get("srsDimension")
    if declared is not None:
        return 3 if declared.strip() == "3" else 2
    return 3 if srs_name and srs_name.endswith("4979") else 2


def _polygon(elem: Element, field: str) -> Polygon:
    exterior = child(elem, GML, "exterior")
    ring = child(exterior, GML, "LinearRing") if exterior is not None else None
    if ring is None:
        raise _fail(field, "gml:Polygon needs gml:exterior/gml:LinearRing")
    srs = elem.get("srsName")
    pos_list = child(ring, GML, "posList")
    if pos_list is not None:
        dim = _dimension(pos_list, srs)
        values = _numbers(text_of(pos_list), field)
        if len(values) % dim:
            raise _fail(field, "gml:posList does not hold whole coordinate tuples")
        points = [Point(lat=values[i], lon=values[i + 1]) for i in range(0, len(values), dim)]
        for p in points:
            check_lat_lon(p.lat, p.lon, field)
    else:
        points = [_pos(p, field) for p in ring if p.tag == f"{{{GML}}}pos"]
    return checked_polygon([(p.lon, p.lat) for p in points], field)


def _civic_address(root: Element) -> str | None:
    civic = next(descendants(root, (CIVIC,), "civicAddress"), None)
    if civic is None:
        return None

    def get(name: str) -> str:
        return text_of(child(civic, CIVIC, name)) or ""

    street = get("A6") or get("RD")
    if not street:
        return None
    words: Iterable[str] = (get("HNO") + get("HNS"), get("PRD"), street, get("STS"), get("POD"))
    line = " ".join(w for w in words if w)
    city = get("A3")
    address = f"{line}, {city}" if city else line
    return address[:500]


# --- entry point -------------------------------------------------------------------


def _incident(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    value = doc.get("incidentComponent")
    if value is None:
        raise _fail("incidentComponent", "is required")
    comps = _objects(value, "incidentComponent")
    if not comps:
        raise _fail("incidentComponent", "must not be empty")
    return comps[0]


def parse(body: bytes) -> RawIncident:
    decoded: Any = decode(body)
    doc = _obj(decoded, "body")
    path, inc = _incident(doc)
    external_id = _external_id(inc, path)
    call_type = _call_type(inc, path)
    status = _status(inc, path)
    revision, occurred_at = _times(doc, inc, path)
    priority = _priority(inc, path)
    location = _location(doc, inc, path)
    return RawIncident(
        external_id=external_id,
        revision=revision,
        status=status,
        call_type=call_type,
        occurred_at=occurred_at,
        point=location.point,
        geometry_wkt=location.geometry_wkt,
        address=location.address,
        location_kind=None,
        priority=priority,
        narrative=_narrative(doc),
    )
