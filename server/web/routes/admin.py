"""Operator API (bearer GEOPUSH_ADMIN_TOKEN): agencies, their call-type maps, AEDs and
responders. An agency admin (session) may change their own agency's call-type map.
The review queue is in server/web/review.py."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Annotated, Any

import msgspec
from aiohttp import web

from server.domain import aed_import, neighbourhood_import, signing
from server.domain.accounts import OPERATOR
from server.domain.agency_spec import validate_agency, validate_call_types
from server.domain.categories import ALL_CATEGORIES, normalize_call_type
from server.domain.errors import FieldError, ValidationFailed
from server.domain.policy import DEFAULT_ALERTABLE
from server.domain.text import SINGLE_LINE, Line
from server.store import aeds, answers, audit, neighbourhoods
from server.store.agencies import (
    AgencyExists,
    create_agency,
    get_agency,
    rotate_secret,
    unmapped_call_types,
    update_agency,
)
from server.store.devices import register_responder, unregister_responder
from server.web.appkeys import AGENCIES, POOL, SETTINGS
from server.web.auth import require_admin
from server.web.openapi import Body, Query, doc
from server.web.principal import Forbidden, principal, require_agency_admin
from server.web.problems import NotFound, Problem
from server.web.routes.body import decode_json, json_response, read_bounded

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# Every text field is one line without NUL (a NUL can't be stored; CR or LF would forge
# log lines), and bodies refuse fields they don't know: a typo must not do nothing.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=SINGLE_LINE)]


class AgencyCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern=SINGLE_LINE)]
    name: Name
    timezone: Line = "UTC"
    call_types: dict[Line, Line] = {}
    review: bool = False


class AgencyCreated(msgspec.Struct, frozen=True):
    id: str
    secret: str


class AgencyPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """JSON merge patch (RFC 7396) of an agency: absent fields are unchanged;
    in ``call_types`` a null value removes that call type."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    timezone: Line | msgspec.UnsetType = msgspec.UNSET
    call_types: dict[Line, Line | None] | msgspec.UnsetType = msgspec.UNSET
    review: bool | msgspec.UnsetType = msgspec.UNSET
    review_categories: list[Line] | msgspec.UnsetType = msgspec.UNSET
    alertable_categories: list[Line] | msgspec.UnsetType | None = msgspec.UNSET
    staleness_minutes: Annotated[int, msgspec.Meta(ge=1, le=1440)] | msgspec.UnsetType = (
        msgspec.UNSET)
    rate_limit_per_minute: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | \
        msgspec.UnsetType = msgspec.UNSET
    responder_radius_m: Annotated[int, msgspec.Meta(ge=50, le=5000)] | msgspec.UnsetType = (
        msgspec.UNSET)
    # Categories whose clear or cancel sends no update to the phones it reached.
    no_update_categories: list[str] | msgspec.UnsetType = msgspec.UNSET


class AgencyView(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An agency's settings, never its secret. Built from ``Agency.public()``: a key
    added there and not here fails loudly (forbid_unknown_fields) instead of being
    dropped from the answer and the document."""

    id: str
    name: str
    timezone: str
    call_types: dict[str, str]
    review: bool
    review_categories: list[str]
    alertable_categories: list[str] | None
    staleness_minutes: int
    rate_limit_per_minute: int
    responder_radius_m: int
    no_update_categories: list[str]


class UnmappedCallType(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    call_type: str
    incidents: int
    last_seen: str


class UnmappedCallTypes(msgspec.Struct, frozen=True):
    agency: str
    call_types: list[UnmappedCallType]


class AedsImported(msgspec.Struct, frozen=True):
    imported: int


class ResponderAdded(msgspec.Struct, frozen=True):
    agency: str
    device_id: str


class ImportedNeighbourhood(msgspec.Struct, frozen=True):
    id: str
    source_id: str
    name: str


class NeighbourhoodsImported(msgspec.Struct, frozen=True):
    imported: int
    created: int      # of which new (the others were updated in place)
    neighbourhoods: list[ImportedNeighbourhood]


class IncidentResponders(msgspec.Struct, frozen=True):
    """CPR responders alerted to an incident and how many answered what (the latest
    answer of each)."""

    incident_id: str
    agency_id: str
    alerted: int
    responding: int
    on_scene: int
    declined: int


class CprCall(msgspec.Struct, frozen=True):
    incident_id: str
    category: str
    public_location: str | None
    received_at: str
    alerted: int
    responding: int
    on_scene: int
    declined: int


class ResponderAnswers(msgspec.Struct, frozen=True):
    hours: int
    incidents: list[CprCall]


def _admin(request: web.Request) -> None:
    require_admin(request, request.app[SETTINGS].admin_token)


@routes.post("/v1/admin/agencies")
@doc("Create an agency (its secret is shown once)", "admin", auth="admin",
     request=AgencyCreate, responses={201: AgencyCreated}, errors=(401, 409, 413, 422))
async def post_agency(request: web.Request) -> web.Response:
    _admin(request)
    body = await decode_json(request, AgencyCreate)
    spec = validate_agency(body.id, body.name, body.timezone, body.call_types)
    secret = signing.new_secret()
    try:
        await create_agency(
            request.app[POOL], agency_id=spec.id, name=spec.name, timezone=spec.timezone,
            call_types=spec.call_types, review=body.review, secret=secret,
        )
    except AgencyExists:
        raise Problem(409, "Agency exists", f"An agency with id {spec.id!r} already exists",
                      slug="conflict") from None
    request.app[AGENCIES].invalidate(spec.id)  # it may be cached as unknown
    await audit.record(request.app[POOL], actor=OPERATOR, agency_id=spec.id,
                       action="agency.create",
                       details={"call_types": spec.call_types, "review": body.review})
    log.info("agency created id=%s call_types=%d", spec.id, len(spec.call_types))
    return json_response(AgencyCreated(spec.id, secret), status=201)


async def _agency_or_404(request: web.Request) -> Any:
    agency = await get_agency(request.app[POOL], request.match_info["agency"])
    if agency is None:
        raise NotFound(f"No agency {request.match_info['agency']!r}")
    return agency


@routes.get("/v1/admin/agencies/{agency}")
@doc("An agency's settings (never its secret)", "admin", auth="admin",
     responses={200: AgencyView}, errors=(401, 404))
async def get_agency_view(request: web.Request) -> web.Response:
    _admin(request)
    return json_response(msgspec.convert((await _agency_or_404(request)).public(), AgencyView))


def _categories(field: str, names: list[str], allowed: frozenset[str]) -> list[str]:
    unknown = sorted(set(names) - allowed)
    if unknown:
        raise ValidationFailed([FieldError(
            field, f"unknown {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")])
    return sorted(set(names))


@routes.patch("/v1/admin/agencies/{agency}")
@doc("Change an agency (JSON merge patch)", "admin", auth="agency_admin",
     request=AgencyPatch, responses={200: AgencyView}, errors=(401, 403, 404, 413, 422))
async def patch_agency(request: web.Request) -> web.Response:
    who = await require_agency_admin(request, request.match_info["agency"])
    agency = await _agency_or_404(request)
    patch = await decode_json(request, AgencyPatch, limit=1024 * 1024)
    changes: dict[str, Any] = {
        f: getattr(patch, f) for f in patch.__struct_fields__
        if getattr(patch, f) is not msgspec.UNSET
    }
    if not who.is_operator and set(changes) - {"call_types"}:
        raise Forbidden("An agency admin may change the call-type map only")
    requested_call_types = changes.get("call_types")
    if "call_types" in changes:
        merged = dict(agency.call_types)
        additions = {k: v for k, v in changes["call_types"].items() if v is not None}
        for removed in (k for k, v in changes["call_types"].items() if v is None):
            merged.pop(normalize_call_type(removed), None)
        merged.update(validate_call_types(additions))
        changes["call_types"] = merged
    if "timezone" in changes or "name" in changes:
        validate_agency(agency.id, changes.get("name", agency.name),
                        changes.get("timezone", agency.timezone), {})
    if "review_categories" in changes:
        changes["review_categories"] = _categories(
            "review_categories", changes["review_categories"], ALL_CATEGORIES)
    if "no_update_categories" in changes:
        changes["no_update_categories"] = _categories(
            "no_update_categories", changes["no_update_categories"], DEFAULT_ALERTABLE)
    if changes.get("alertable_categories") is not None:
        changes["alertable_categories"] = _categories(
            "alertable_categories", changes["alertable_categories"], DEFAULT_ALERTABLE)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        await update_agency(conn, agency.id, changes)
        await audit.record(conn, actor=who.name, agency_id=agency.id, action="agency.update",
                           details={k: (requested_call_types if k == "call_types" else v)
                                    for k, v in changes.items()})
    request.app[AGENCIES].invalidate(agency.id)
    log.info("agency updated id=%s fields=%s", agency.id, ",".join(sorted(changes)))
    updated = await get_agency(request.app[POOL], agency.id)
    assert updated is not None
    return json_response(msgspec.convert(updated.public(), AgencyView))


@routes.get("/v1/admin/agencies/{agency}/unmapped")
@doc("Call types that arrived unmapped", "admin", auth="admin",
     responses={200: UnmappedCallTypes}, errors=(401, 404))
async def get_unmapped(request: web.Request) -> web.Response:
    _admin(request)
    agency = await _agency_or_404(request)
    found = await unmapped_call_types(request.app[POOL], agency.id)
    return json_response(UnmappedCallTypes(
        agency.id, msgspec.convert(found, list[UnmappedCallType])))


@routes.post("/v1/admin/agencies/{agency}/secret")
@doc("Rotate the signing secret (the previous one verifies for 24 h)", "admin",
     auth="admin", responses={200: AgencyCreated}, errors=(401, 404))
async def post_agency_secret(request: web.Request) -> web.Response:
    _admin(request)
    agency_id = request.match_info["agency"]
    secret = signing.new_secret()
    if not await rotate_secret(request.app[POOL], agency_id, secret):
        raise NotFound(f"No agency {agency_id!r}")
    request.app[AGENCIES].invalidate(agency_id)
    await audit.record(request.app[POOL], actor=OPERATOR, agency_id=agency_id,
                       action="agency.rotate_secret")
    log.info("agency secret rotated id=%s", agency_id)
    return json_response(AgencyCreated(agency_id, secret), status=200)


AED_CONTENT_TYPES = ("application/geo+json", "application/json", "text/csv")


@routes.post("/v1/admin/aeds")
@doc("Import AEDs (GeoJSON FeatureCollection of Points, or CSV)", "admin", auth="admin",
     request_bodies=(
         Body("application/geo+json", {"type": "object", "description": "FeatureCollection"}),
         Body("application/json", {"type": "object", "description": "FeatureCollection"}),
         Body("text/csv", {"type": "string", "description":
                           "latitude,longitude[,name,description,id] with a header row"})),
     responses={200: AedsImported}, errors=(401, 413, 415, 422))
async def post_aeds(request: web.Request) -> web.Response:
    """Import AEDs from a GeoJSON FeatureCollection of Points or a CSV with latitude and
    longitude columns (name, description and id optional; id makes re-imports update)."""
    _admin(request)
    content_type = request.content_type.lower()
    if content_type not in AED_CONTENT_TYPES:
        raise Problem(415, "Unsupported media type",
                      f"use one of: {', '.join(AED_CONTENT_TYPES)}", slug="unsupported-media-type")
    body = await read_bounded(request, 16 * 1024 * 1024)
    parsed = aed_import.parse_csv(body) if content_type == "text/csv" \
        else aed_import.parse_geojson(body)
    count = await aeds.import_aeds(request.app[POOL], parsed)
    log.info("aeds imported count=%d", count)
    return json_response(AedsImported(count))


class ResponderRegistration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    device_id: Line


@routes.post("/v1/admin/agencies/{agency}/responders")
@doc("Register a verified CPR responder with an agency", "admin", auth="admin",
     request=ResponderRegistration, responses={201: ResponderAdded},
     errors=(401, 404, 413, 422))
async def post_responder(request: web.Request) -> web.Response:
    """Register a verified CPR responder with an agency: they are alerted to cardiac
    arrests in residences too, not only in public places."""
    _admin(request)
    agency = await _agency_or_404(request)
    body = await decode_json(request, ResponderRegistration)
    try:
        device_id = str(uuid.UUID(body.device_id))
    except ValueError:
        raise ValidationFailed([FieldError("device_id", "is not a device id")]) from None
    if not await register_responder(request.app[POOL], agency.id, device_id):
        raise ValidationFailed([FieldError("device_id", "no such device")])
    return json_response(ResponderAdded(agency.id, device_id), status=201)


@routes.delete("/v1/admin/agencies/{agency}/responders/{device}")
@doc("Unregister a CPR responder", "admin", auth="admin", responses={204: None},
     errors=(401, 404))
async def delete_responder(request: web.Request) -> web.Response:
    _admin(request)
    agency = await _agency_or_404(request)
    await unregister_responder(request.app[POOL], agency.id, request.match_info["device"])
    return web.Response(status=204)


@routes.post("/v1/admin/neighbourhoods")
@doc("Import neighbourhoods (GeoJSON; ?name_property=, ?id_property=, ?source=)", "admin",
     auth="admin",
     request_bodies=(Body("application/geo+json", {"type": "object"}),
                     Body("application/json", {"type": "object"})),
     responses={200: NeighbourhoodsImported},
     errors=(401, 413, 415, 422),
     query=(Query("name_property", "the property holding the name (default name)"),
            Query("id_property", "an id property (default: the feature's id, else its name)"),
            Query("source", "the dataset (default geojson)")))
async def post_neighbourhoods(request: web.Request) -> web.Response:
    """Import a city's neighbourhoods (GeoJSON FeatureCollection of Polygons or
    MultiPolygons). ``?name_property=`` names the property holding the name (default
    ``name``), ``?id_property=`` an id property (default: the feature's id, else its
    name), ``?source=`` the dataset (default ``geojson``). Re-importing updates in place."""
    _admin(request)
    if request.content_type.lower() not in ("application/geo+json", "application/json"):
        raise Problem(415, "Unsupported media type",
                      "use application/geo+json or application/json",
                      slug="unsupported-media-type")
    query = request.query
    source = query.get("source", "geojson")
    if not _SOURCE.match(source):
        raise ValidationFailed([FieldError("source", "must be 1-64 letters, digits, '-' or '_'")])
    body = await read_bounded(request, 32 * 1024 * 1024)
    parsed = neighbourhood_import.parse_geojson(
        body, name_property=query.get("name_property") or "name",
        id_property=query.get("id_property") or None, source=source)
    imported = await neighbourhoods.import_neighbourhoods(request.app[POOL], parsed)
    log.info("neighbourhoods imported count=%d new=%d", len(imported),
             sum(i.created for i in imported))
    return json_response(NeighbourhoodsImported(
        len(imported), sum(i.created for i in imported),
        [ImportedNeighbourhood(i.id, i.source_id, i.name) for i in imported]))


_SOURCE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@routes.get("/v1/admin/incidents/{incident}/responders")
@doc("Responders alerted to an incident and their answers (operator, or the agency's "
     "admins)", "admin", auth="agency_admin",
     responses={200: IncidentResponders}, errors=(401, 403, 404))
async def get_incident_responders(request: web.Request) -> web.Response:
    """How many CPR responders an incident alerted and what they answered: for the
    operator, or an admin of the incident's agency (signed in to the console); other
    agencies' users get 404, as if there were no such incident."""
    who = await principal(request)
    raw = request.match_info["incident"]
    try:
        incident_id = str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"No incident {raw!r}") from None
    found = await answers.counts(request.app[POOL], incident_id)
    if found is None or not who.sees(found["agency_id"]):
        raise NotFound(f"No incident {incident_id!r}")
    if not who.administers(found["agency_id"]):
        raise Forbidden("Only the agency's admins may see responders' answers")
    return json_response(msgspec.convert({"incident_id": incident_id, **found},
                                         IncidentResponders))


# How far back the console's responder view reaches: a CPR call is over within the hour,
# the day covers a shift's handover.
ANSWERS_WINDOW_HOURS = 24


@routes.get("/v1/admin/agencies/{agency}/responder-answers")
@doc("The agency's CPR calls of the last day, responders alerted and their answers",
     "admin", auth="agency_admin", responses={200: ResponderAnswers},
     errors=(401, 403, 404))
async def get_responder_answers(request: web.Request) -> web.Response:
    """The agency's CPR calls of the last day with responders alerted and their answers
    (operator, or the agency's admins): what the console's Responders page shows."""
    agency_id = request.match_info["agency"]
    await require_agency_admin(request, agency_id)
    found = await answers.recent(request.app[POOL], agency_id, hours=ANSWERS_WINDOW_HOURS)
    return json_response(ResponderAnswers(ANSWERS_WINDOW_HOURS,
                                          msgspec.convert(found, list[CprCall])))
