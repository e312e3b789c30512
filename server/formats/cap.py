"""OASIS CAP 1.2 (and 1.1) alerts as incidents.

The body is parsed with ``server.formats.safexml`` (no DTDs, entities or external
references; bounded size and depth). The root must be ``alert`` in the CAP 1.2
(``urn:oasis:names:tc:emergency:cap:1.2``) or 1.1 namespace.

Mapping (errors name the CAP element path, e.g. ``info.area.circle``):

- ``identifier`` -> external id, except for ``msgType`` Update and Cancel that carry
  ``references``: their external id is the identifier of the FIRST referenced message
  (``references`` is a space-separated list of ``sender,identifier,sent``), so every
  revision of one incident shares one id and the newest ``sent`` wins. Senders must
  therefore list the original alert first (as CAP senders such as the NWS do); an
  Update that only references the previous Update would be taken for a new
  incident. An Update/Cancel without ``references`` keeps its own identifier.
  Identifiers must not contain whitespace or commas (CAP 1.2 §3.2.1).
- ``sent`` -> revision. Times must carry a UTC offset.
- ``status`` Actual -> ``actual=True``; Exercise, System, Test, Draft ->
  ``actual=False`` (stored, never pushed).
- ``msgType`` Alert/Update -> active, Cancel -> cancelled; Ack and Error are refused.
  An Alert or Update whose ``info/responseType`` includes AllClear ("the subject
  event no longer poses a threat"), or an Update whose ``info/urgency`` is Past
  ("responsive action is no longer required") -> cleared.
- Of several ``info`` blocks, the first whose ``language`` starts with "en" (an
  absent language means en-US) is used, else the first. ``info`` is required, also
  for Cancel, because an incident needs a call type and a location.
- ``info/event`` -> call type, else the first ``info/eventCode/value``.
- ``info/onset``, else ``info/effective``, else ``sent`` -> occurred_at.
- ``info/severity`` Extreme 1, Severe 2, Moderate 3, Minor 4, Unknown/absent None ->
  priority. ``urgency``, ``certainty`` and ``expires`` are not used.
- ``info/description`` and ``info/instruction`` -> narrative (never pushed).
- ``info/area``: every ``circle`` ("lat,lon radius_km") and ``polygon`` (closed ring
  of "lat,lon" pairs) of every area. CAP writes latitude first; the WKT produced is
  EPSG:4326 in lon/lat order. A circle with a radius is approximated on the sphere by
  a 32-vertex polygon; a zero (sub-metre) radius is a point. One polygon -> POLYGON, several ->
  their union as a MULTIPOLYGON, only zero-radius circles -> no geometry (None).
  The point is the first circle's centre, else the polygon's centroid. Invalid,
  self-intersecting and antimeridian-crossing polygons are refused. Geocodes alone
  are not enough (no geocoder here).
- The first ``info/area/areaDesc`` -> address (free text, generalized later).
- Nothing about persons exists in CAP's mapped elements; ``contact``, ``note``,
  ``web``, ``parameter`` and ``resource`` are never read.

The geometry helpers (``circle_polygon``, ``checked_polygon``, ``area_wkt``) are
shared with the EIDO parser.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import shapely
from shapely.geometry import MultiPolygon, Polygon

from server.domain.errors import FieldError, ValidationFailed
from server.domain.incident import Point, RawIncident, Status
from server.formats.safexml import child, children, parse_xml, split_tag, text_of

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

CONTENT_TYPES = ("application/cap+xml", "application/xml")

CAP_NAMESPACES = (
    "urn:oasis:names:tc:emergency:cap:1.2",
    "urn:oasis:names:tc:emergency:cap:1.1",
)

EARTH_RADIUS_KM = 6371.0088
CIRCLE_VERTICES = 32
MAX_RADIUS_KM = 1000.0
MIN_RADIUS_KM = 0.001     # below a metre a circle is a point
MAX_VERTICES = 1000        # per polygon
MAX_SHAPES = 20            # circles + polygons over all areas
MAX_ID = 128
MAX_TEXT = 500

_ACTUAL = {"Actual": True, "Exercise": False, "System": False, "Test": False, "Draft": False}
_MSG_TYPES = {"Alert": Status.ACTIVE, "Update": Status.ACTIVE, "Cancel": Status.CANCELLED}
_SEVERITY: dict[str, int | None] = {
    "Extreme": 1, "Severe": 2, "Moderate": 3, "Minor": 4, "Unknown": None,
}


def _fail(field: str, message: str) -> ValidationFailed:
    return ValidationFailed([FieldError(field, message)])


# --- shared geometry -----------------------------------------------------------------


def check_lat_lon(lat: float, lon: float, field: str) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise _fail(field, "coordinates must be finite numbers")
    if not -90 <= lat <= 90:
        raise _fail(field, f"latitude {lat} is outside -90..90")
    if not -180 <= lon <= 180:
        raise _fail(field, f"longitude {lon} is outside -180..180")


def _crosses_antimeridian(lonlat: Sequence[tuple[float, float]]) -> bool:
    return any(abs(b[0] - a[0]) > 180 for a, b in itertools.pairwise(lonlat))


def checked_polygon(lonlat: Sequence[tuple[float, float]], field: str) -> Polygon:
    """A valid polygon from a closed ring of (lon, lat), or 422 naming ``field``."""
    if len(lonlat) < 4:
        raise _fail(field, "a polygon needs at least 4 points (a closed ring)")
    if len(lonlat) > MAX_VERTICES:
        raise _fail(field, f"a polygon may have at most {MAX_VERTICES} points")
    if lonlat[0] != lonlat[-1]:
        raise _fail(field, "the ring is not closed (first and last points differ)")
    if _crosses_antimeridian(lonlat):
        raise _fail(field, "polygons crossing the antimeridian are not supported")
    poly = Polygon(lonlat)
    if not poly.is_valid:
        reason = shapely.is_valid_reason(poly)
        raise _fail(field, f"invalid polygon: {reason}")
    if poly.is_empty or poly.area <= 0:
        raise _fail(field, "the polygon has no area")
    return poly


def circle_polygon(lat: float, lon: float, radius_km: float, field: str) -> Polygon:
    """A circle on the sphere as a polygon of ``CIRCLE_VERTICES`` vertices (lon/lat)."""
    phi1, lam1 = math.radians(lat), math.radians(lon)
    delta = radius_km / EARTH_RADIUS_KM
    ring: list[tuple[float, float]] = []
    for i in range(CIRCLE_VERTICES):
        theta = 2 * math.pi * i / CIRCLE_VERTICES
        sin_phi2 = (math.sin(phi1) * math.cos(delta)
                    + math.cos(phi1) * math.sin(delta) * math.cos(theta))
        phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
        lam2 = lam1 + math.atan2(
            math.sin(theta) * math.sin(delta) * math.cos(phi1),
            math.cos(delta) - math.sin(phi1) * math.sin(phi2),
        )
        lon2 = (math.degrees(lam2) + 540.0) % 360.0 - 180.0
        ring.append((lon2, math.degrees(phi2)))
    ring.append(ring[0])
    if _crosses_antimeridian(ring):
        raise _fail(field, "circles crossing the antimeridian or a pole are not supported")
    return checked_polygon(ring, field)


def area_wkt(polygons: Sequence[Polygon]) -> str | None:
    """POLYGON for one, the union as MULTIPOLYGON for several, None for none."""
    if not polygons:
        return None
    if len(polygons) == 1:
        geom: Polygon | MultiPolygon = polygons[0]
    else:
        union = shapely.union_all(list(polygons))
        parts = list(union.geoms) if isinstance(union, MultiPolygon) else [union]
        geom = MultiPolygon([p for p in parts if isinstance(p, Polygon)])
    return str(shapely.to_wkt(geom, rounding_precision=-1, output_dimension=2))


def centroid(polygons: Sequence[Polygon]) -> Point:
    c = shapely.union_all(list(polygons)).centroid
    return Point(lat=float(c.y), lon=float(c.x))


# --- CAP -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Doc:
    ns: str

    def text(self, elem: Element, name: str) -> str | None:
        return text_of(child(elem, self.ns, name))

    def required(self, elem: Element, name: str, field: str) -> str:
        value = self.text(elem, name)
        if value is None:
            raise _fail(field, "is required")
        return value

    def all(self, elem: Element, name: str) -> list[Element]:
        return children(elem, self.ns, name)


def parse_time(value: str, field: str) -> dt.datetime:
    """An ISO 8601 / CAP date-time with a UTC offset."""
    if len(value) > 64:
        raise _fail(field, "is not a date-time")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise _fail(field, "is not a date-time like 2026-11-28T04:21:00-08:00") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _fail(field, "must include a UTC offset")
    return parsed


def _root(body: bytes) -> tuple[Element, _Doc]:
    root = parse_xml(body, field="body")
    ns, local = split_tag(root.tag)
    if local != "alert" or ns not in CAP_NAMESPACES:
        raise _fail("body", "is not a CAP 1.2 (or 1.1) <alert> document")
    return root, _Doc(ns)


def _identifier(value: str, field: str) -> str:
    if len(value) > MAX_ID:
        raise _fail(field, f"is longer than {MAX_ID} characters")
    if any(ch.isspace() or ch == "," for ch in value):
        raise _fail(field, "must not contain whitespace or commas")
    return value


def _external_id(doc: _Doc, root: Element, msg_type: str) -> str:
    own = _identifier(doc.required(root, "identifier", "identifier"), "identifier")
    refs = doc.text(root, "references")
    if msg_type not in ("Update", "Cancel") or refs is None:
        return own
    first = refs.split()[0]
    parts = first.split(",")
    if len(parts) != 3 or not parts[1]:
        raise _fail("references", "entries must be 'sender,identifier,sent'")
    return _identifier(parts[1], "references")


def choose_info(infos: list[Element], ns: str) -> Element | None:
    """The info block read: the first in English (no language means en-US), else the
    first (None when there is none)."""
    for info in infos:
        lang = (text_of(child(info, ns, "language")) or "en-US").lower()
        if lang.startswith("en"):
            return info
    return infos[0] if infos else None


def _choose_info(doc: _Doc, root: Element) -> Element:
    info = choose_info(doc.all(root, "info"), doc.ns)
    if info is None:
        raise _fail("info", "is required (a call type and an area are needed)")
    return info


def _call_type(doc: _Doc, info: Element) -> str:
    event = doc.text(info, "event")
    if event is None:
        for code in doc.all(info, "eventCode"):
            event = doc.text(code, "value")
            if event is not None:
                break
    if event is None:
        raise _fail("info.event", "is required (or an eventCode value)")
    if len(event) > 200:
        raise _fail("info.event", "is longer than 200 characters")
    return event


def _priority(doc: _Doc, info: Element) -> int | None:
    severity = doc.text(info, "severity")
    if severity is None:
        return None
    if severity not in _SEVERITY:
        raise _fail("info.severity", "must be Extreme, Severe, Moderate, Minor or Unknown")
    return _SEVERITY[severity]


def _narrative(doc: _Doc, info: Element) -> str | None:
    parts = [t for t in (doc.text(info, "description"), doc.text(info, "instruction")) if t]
    return "\n\n".join(parts) if parts else None


def _floats(text: str, field: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise _fail(field, "coordinates must be numbers") from None


def _parse_circle(text: str) -> tuple[Point, Polygon | None]:
    field = "info.area.circle"
    parts = text.split()
    if len(parts) != 2:
        raise _fail(field, "must be 'lat,lon radius_km'")
    latlon = _floats(parts[0], field)
    if len(latlon) != 2:
        raise _fail(field, "must be 'lat,lon radius_km'")
    lat, lon = latlon
    check_lat_lon(lat, lon, field)
    try:
        radius = float(parts[1])
    except ValueError:
        raise _fail(field, "radius must be a number of kilometres") from None
    if not (math.isfinite(radius) and 0 <= radius <= MAX_RADIUS_KM):
        raise _fail(field, f"radius must be between 0 and {MAX_RADIUS_KM:g} km")
    centre = Point(lat=lat, lon=lon)
    if radius < MIN_RADIUS_KM:
        return centre, None
    return centre, circle_polygon(lat, lon, radius, field)


def _parse_polygon(text: str) -> Polygon:
    field = "info.area.polygon"
    ring: list[tuple[float, float]] = []
    pairs = text.split()
    if len(pairs) > MAX_VERTICES:
        raise _fail(field, f"a polygon may have at most {MAX_VERTICES} points")
    for pair in pairs:
        latlon = _floats(pair, field)
        if len(latlon) != 2:
            raise _fail(field, "must be space-separated 'lat,lon' pairs")
        lat, lon = latlon
        check_lat_lon(lat, lon, field)
        ring.append((lon, lat))  # CAP is lat,lon; WKT is lon lat
    return checked_polygon(ring, field)


@dataclass(frozen=True)
class _Area:
    point: Point
    geometry_wkt: str | None
    address: str | None


def _area(doc: _Doc, info: Element) -> _Area:
    areas = doc.all(info, "area")
    if not areas:
        raise _fail("info.area", "is required")
    centres: list[Point] = []
    polygons: list[Polygon] = []
    shapes = 0
    for area in areas:
        circles = [t for t in map(text_of, doc.all(area, "circle")) if t]
        rings = [t for t in map(text_of, doc.all(area, "polygon")) if t]
        shapes += len(circles) + len(rings)
        if shapes > MAX_SHAPES:
            raise _fail("info.area", f"at most {MAX_SHAPES} circles and polygons")
        for text in circles:
            centre, poly = _parse_circle(text)
            centres.append(centre)
            if poly is not None:
                polygons.append(poly)
        polygons.extend(_parse_polygon(text) for text in rings)
    if not centres and not polygons:
        raise _fail("info.area", "needs a circle or a polygon (geocodes are not supported)")
    address = doc.text(areas[0], "areaDesc")
    if address is not None and len(address) > MAX_TEXT:
        raise _fail("info.area.areaDesc", f"is longer than {MAX_TEXT} characters")
    point = centres[0] if centres else centroid(polygons)
    return _Area(point=point, geometry_wkt=area_wkt(polygons), address=address)


def parse(body: bytes) -> RawIncident:
    root, doc = _root(body)
    status = doc.required(root, "status", "status")
    if status not in _ACTUAL:
        raise _fail("status", "must be Actual, Exercise, System, Test or Draft")
    msg_type = doc.required(root, "msgType", "msgType")
    if msg_type not in _MSG_TYPES:
        raise _fail("msgType", "must be Alert, Update or Cancel (Ack and Error are not incidents)")
    external_id = _external_id(doc, root, msg_type)
    sent = parse_time(doc.required(root, "sent", "sent"), "sent")
    info = _choose_info(doc, root)
    occurred_at = sent
    for name in ("onset", "effective"):
        value = doc.text(info, name)
        if value is not None:
            occurred_at = parse_time(value, f"info.{name}")
            break
    area = _area(doc, info)
    status_ = _MSG_TYPES[msg_type]
    if status_ is Status.ACTIVE and (
            "AllClear" in (text_of(e) for e in doc.all(info, "responseType"))
            or (msg_type == "Update" and doc.text(info, "urgency") == "Past")):
        status_ = Status.CLEARED
    return RawIncident(
        external_id=external_id,
        revision=sent,
        status=status_,
        call_type=_call_type(doc, info),
        occurred_at=occurred_at,
        point=area.point,
        geometry_wkt=area.geometry_wkt,
        address=area.address,
        location_kind=None,
        priority=_priority(doc, info),
        actual=_ACTUAL[status],
        narrative=_narrative(doc, info),
    )
