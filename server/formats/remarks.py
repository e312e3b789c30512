"""What a parser left out or changed, told to a vendor in a dry run (pure).

Parsers read what geopush needs and drop the rest without a word, which is right for
privacy and wrong for a vendor building an integration: a misspelt ``ocurred_at`` or
a polygon sent as the wrong element is silently ignored. These functions look at a
body the parser already accepted and name, never quote, what was not read and what
geometry was approximated or merged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from server.domain.dryrun import Remark
from server.formats import cap, eido, native
from server.formats.safexml import child, children, parse_xml, split_tag, text_of

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

NATIVE, CAP, EIDO = "json", "cap", "eido"

FORMAT_OF_CONTENT_TYPE: dict[str, str] = {
    **dict.fromkeys(native.CONTENT_TYPES, NATIVE),
    **dict.fromkeys(cap.CONTENT_TYPES, CAP),
    **dict.fromkeys(eido.CONTENT_TYPES, EIDO),
}
CONTENT_TYPE_OF_FORMAT = {NATIVE: "application/json", CAP: "application/cap+xml",
                          EIDO: "application/eido+json"}

# Where each format's address comes from, for warnings about it.
ADDRESS_FIELD = {NATIVE: "location.address", CAP: "info.area.areaDesc",
                 EIDO: "locationComponent.locationByValue.civicAddress"}

# Data about people: never read by any parser, by design.
_PERSONAL = "geopush never reads it (personal data stays in the CAD)"


def _ignored(field: str, why: str = "not a field geopush reads; it is ignored") -> Remark:
    return Remark("ignored_field", why, field)


# --- native JSON --------------------------------------------------------------------

_NATIVE_TOP = set(native.NativeIncident.__struct_fields__)
_NATIVE_LOCATION = set(native.NativeLocation.__struct_fields__)
_PERSONAL_KEYS = {"caller", "patient", "person", "persons", "people", "callback", "vehicle",
                  "vehicles", "victim", "suspect", "complainant"}


def _native(body: bytes) -> list[Remark]:
    doc = msgspec.json.decode(body)
    if not isinstance(doc, dict):
        return []
    out = [_ignored(k, _PERSONAL if k.lower() in _PERSONAL_KEYS else
                    "not a field geopush reads; it is ignored")
           for k in doc if k not in _NATIVE_TOP]
    location = doc.get("location")
    if isinstance(location, dict):
        out += [_ignored(f"location.{k}") for k in location if k not in _NATIVE_LOCATION]
    return out


# --- CAP ----------------------------------------------------------------------------

_CAP_ROOT_READ = {"identifier", "sent", "status", "msgType", "references", "info"}
# CAP's envelope: required or routine, carrying nothing an alert would use.
_CAP_ROOT_QUIET = {"sender", "scope", "source", "restriction", "addresses", "code",
                   "incidents"}
_CAP_INFO_READ = {"language", "event", "eventCode", "onset", "effective", "severity",
                  "description", "instruction", "area", "responseType"}
_CAP_INFO_QUIET = {"category", "urgency", "certainty", "senderName", "headline",
                   "expires", "audience"}
_CAP_AREA_READ = {"areaDesc", "circle", "polygon"}


def _cap(body: bytes) -> list[Remark]:
    root = parse_xml(body, field="body")
    ns, _ = split_tag(root.tag)
    out = []
    for elem in root:
        name = split_tag(elem.tag)[1]
        if name not in _CAP_ROOT_READ | _CAP_ROOT_QUIET:
            out.append(_ignored(name))
    infos = children(root, ns, "info")
    chosen = cap.choose_info(infos, ns)
    for i, info in enumerate(infos):
        if info is not chosen:
            lang = text_of(child(info, ns, "language")) or "en-US"
            out.append(_ignored(f"info[{i}]", f"only one info block is read (the first in "
                                              f"English); this one ({lang}) is ignored"))
    if chosen is not None:
        out += _cap_info(chosen, ns)
    return out


def _cap_info(info: Element, ns: str) -> list[Remark]:
    out = []
    for elem in info:
        name = split_tag(elem.tag)[1]
        if name not in _CAP_INFO_READ | _CAP_INFO_QUIET:
            out.append(_ignored(f"info.{name}", _PERSONAL if name in ("contact", "parameter")
                                else "not a field geopush reads; it is ignored"))
    shapes = radius_circles = points = 0
    for j, area in enumerate(children(info, ns, "area")):
        for elem in area:
            name = split_tag(elem.tag)[1]
            if name not in _CAP_AREA_READ:
                out.append(_ignored(f"info.area.{name}", "geocodes, altitude and ceiling "
                                    "are not used: only circles and polygons locate"))
        if j > 0 and child(area, ns, "areaDesc") is not None:
            out.append(_ignored(f"info.area[{j}].areaDesc",
                                "only the first area's description is the address"))
        for circle in children(area, ns, "circle"):
            parts = (text_of(circle) or "").split()
            if len(parts) == 2 and float(parts[1]) >= cap.MIN_RADIUS_KM:
                radius_circles += 1
                shapes += 1
            else:
                points += 1
        shapes += len(children(area, ns, "polygon"))
    return out + _geometry_remarks("info.area", radius_circles, shapes, points)


def _geometry_remarks(field: str, circles: int, shapes: int, points: int) -> list[Remark]:
    out = []
    if circles:
        out.append(Remark(
            "geometry_simplified", f"{'a circle is' if circles == 1 else f'{circles} circles are'}"
            f" matched as a {cap.CIRCLE_VERTICES}-sided polygon on the sphere", field))
    if shapes > 1:
        out.append(Remark(
            "geometry_simplified", f"{shapes} shapes are matched as one area (their union)",
            field))
    if points and shapes:
        out.append(Remark(
            "geometry_simplified", "zero-radius circles are ignored where an area is given",
            field))
    elif points > 1:
        out.append(Remark(
            "geometry_simplified", f"{points} points given: only the first locates the "
                                   "incident", field))
    return out


# --- EIDO ---------------------------------------------------------------------------

_EIDO_PERSONAL = ("personComponent", "callComponent", "callbackComponent", "agentComponent",
                  "vehicleComponent")
_EIDO_INCIDENT_READ = {
    "incidentTrackingIdentifier", "$id", "id", "incidentTypeCommonRegistryText",
    "incidentTypeInternalText", "incidentTypeInternalCode",
    "incidentStatusCommonRegistryText", "lastUpdateTimeStamp", "incidentCreationTimeStamp",
    "priority", "incidentCommonPriorityNumber", "locationReference", "locationComponent",
    "componentIdentifier",
}


def _eido(body: bytes) -> list[Remark]:
    doc = msgspec.json.decode(body)
    if not isinstance(doc, dict):
        return []
    out = [_ignored(k, _PERSONAL) for k in _EIDO_PERSONAL if k in doc]
    incidents = doc.get("incidentComponent")
    if isinstance(incidents, list):
        out += [_ignored(f"incidentComponent[{i}]", "only the first incident is read")
                for i in range(1, len(incidents))]
        incidents = incidents[0] if incidents else None
    if isinstance(incidents, dict):
        out += [_ignored(f"incidentComponent.{k}") for k in incidents
                if k not in _EIDO_INCIDENT_READ and not k.endswith("Component")]
    path = "incidentComponent[0]" if isinstance(doc.get("incidentComponent"), list) \
        else "incidentComponent"
    out += _eido_geometry(doc, incidents if isinstance(incidents, dict) else {}, path)
    return out


def _eido_geometry(doc: dict[str, Any], incident: dict[str, Any], path: str,
                   ) -> list[Remark]:
    """Remarks on the PIDF-LO the parser used (the one ``eido.parse`` picked)."""
    field, pidf = eido.chosen_location(doc, incident, path)
    if pidf is None:
        return []
    root = parse_xml(pidf, field=field, max_bytes=eido.MAX_PIDF_BYTES)
    out = []
    shapes = [e for e in root.iter() if isinstance(e.tag, str) and e.tag in (
        f"{{{eido.GML}}}Point", f"{{{eido.PIDFLO}}}Circle", f"{{{eido.GML}}}Polygon")]
    if len(shapes) > 1:
        out.append(Remark("geometry_simplified", f"{len(shapes)} shapes given: only "
                                 "the first locates the incident", field))
    if shapes and shapes[0].tag == f"{{{eido.PIDFLO}}}Circle":
        radius = text_of(child(shapes[0], eido.PIDFLO, "radius")) or "0"
        try:
            metres = float(radius)
        except ValueError:
            metres = 0.0
        if metres >= cap.MIN_RADIUS_KM * 1000:
            out += _geometry_remarks(field, 1, 1, 0)
    if shapes and shapes[0].tag == f"{{{eido.GML}}}Polygon" and \
            child(shapes[0], eido.GML, "interior") is not None:
        out.append(Remark("geometry_simplified", "polygon holes (gml:interior) are "
                                 "ignored: the whole exterior ring is matched", field))
    return out


_REMARKS: dict[str, Callable[[bytes], list[Remark]]] = {
    NATIVE: _native, CAP: _cap, EIDO: _eido}


def remarks(fmt: str, body: bytes) -> list[Remark]:
    """Warnings about a body the format's parser accepted."""
    return _REMARKS[fmt](body)
