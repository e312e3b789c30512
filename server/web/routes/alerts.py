"""Manual alerts: composed by an agency admin (or the operator), previewed, sent through
the incidents pipeline, and published as a CAP 1.2 Atom feed.

- ``POST /v1/admin/agencies/{agency}/alerts/preview {"area"}`` -> ``{"devices"}``
- ``POST /v1/admin/agencies/{agency}/alerts {"title", "body", "area", "severity",
  "expires_in_minutes"}`` -> 201
- ``GET /v1/admin/agencies/{agency}/alerts``: the agency's recent alerts
- ``GET /v1/agencies/{agency}/alerts.atom`` and ``.../alerts/{id}.cap``: public
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Annotated, Any

import msgspec
from aiohttp import web

from server.domain import manual_alert
from server.domain.text import NO_NUL, SINGLE_LINE, Line
from server.formats import cap_feed
from server.store import audience, manual_alerts
from server.store.agencies import get_agency
from server.store.publish import publish_incident
from server.web.appkeys import OUTBOX, POOL, REDIS, SETTINGS
from server.web.geojson import Polygon
from server.web.openapi import Body, doc
from server.web.principal import require_agency_admin
from server.web.problems import NotFound
from server.web.routes.body import decode_json, json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

FEED_ENTRIES = 50


class AlertPreview(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    area: Any


class AlertCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=1000, pattern=SINGLE_LINE)]
    body: Annotated[str, msgspec.Meta(max_length=4000, pattern=NO_NUL)]
    area: Any
    severity: Line
    expires_in_minutes: int = 60


class AlertSent(msgspec.Struct, frozen=True):
    id: str
    audience: int
    expires_at: str


class AlertAudience(msgspec.Struct, frozen=True):
    devices: int


class ManualAlertView(msgspec.Struct, frozen=True):
    id: str
    title: str
    body: str
    severity: str
    sent_at: str
    expires_at: str
    sent_by: str
    audience: int     # devices whose zones met the area when it was sent
    area: Polygon
    agency_name: str


class ManualAlerts(msgspec.Struct, frozen=True):
    alerts: list[ManualAlertView]


@routes.post("/v1/admin/agencies/{agency}/alerts/preview")
@doc("How many devices a manual alert's area reaches", "alerts", auth="agency_admin",
     request=AlertPreview, responses={200: AlertAudience},
     errors=(401, 403, 404, 413, 422))
async def post_preview(request: web.Request) -> web.Response:
    await require_agency_admin(request, request.match_info["agency"])
    body = await decode_json(request, AlertPreview, limit=256 * 1024)
    area = manual_alert.area_wkt(manual_alert.validate_area(body.area))
    return json_response(AlertAudience(await audience.area_audience_size(
        request.app[POOL], request.app[REDIS], area,
        location_ttl=request.app[SETTINGS].location_ttl)))


@routes.post("/v1/admin/agencies/{agency}/alerts")
@doc("Send a manual alert", "alerts", auth="agency_admin", request=AlertCreate,
     responses={201: AlertSent}, errors=(401, 403, 404, 413, 422))
async def post_alert(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    who = await require_agency_admin(request, agency_id)
    if await get_agency(request.app[POOL], agency_id) is None:
        raise NotFound(f"No agency {agency_id!r}")
    body = await decode_json(request, AlertCreate, limit=256 * 1024)
    alert = manual_alert.validate(title=body.title, body=body.body, severity=body.severity,
                                  area=body.area, expires_in_minutes=body.expires_in_minutes)
    now = dt.datetime.now(dt.UTC)
    near = await audience.area_near_positions(request.app[POOL], request.app[REDIS],
                                              alert.area_wkt,
                                              location_ttl=request.app[SETTINGS].location_ttl)
    incident_id, reached = await manual_alerts.create(request.app[POOL], agency_id, alert,
                                                      sent_by=who.name, now=now, near=near)
    await publish_incident(request.app[REDIS], request.app[OUTBOX], incident_id)
    log.info("manual alert sent agency=%s incident=%s severity=%s audience=%d by=%s",
             agency_id, incident_id, alert.severity, reached, who.name)
    return json_response(AlertSent(incident_id, reached,
                                   (now + alert.expires_in).isoformat()), status=201)


@routes.get("/v1/admin/agencies/{agency}/alerts")
@doc("The agency's recent manual alerts", "alerts", auth="agency_admin",
     responses={200: ManualAlerts},
     errors=(401, 403, 404))
async def get_alerts(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    await require_agency_admin(request, agency_id)
    alerts = await manual_alerts.recent(request.app[POOL], agency_id)
    return json_response(ManualAlerts(msgspec.convert(
        [{**a, "sent_at": a["sent_at"].isoformat(), "expires_at": a["expires_at"].isoformat()}
         for a in alerts], list[ManualAlertView])))


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _sender(request: web.Request, agency_id: str) -> str:
    # CAP's sender: no spaces, commas or angle brackets; the agency at this server.
    return f"{agency_id}@{request.host.split(':')[0]}"


@routes.get("/v1/agencies/{agency}/alerts.atom")
@doc("The agency's alerts, CAP 1.2 in Atom", "alerts",
     responses={200: Body("application/atom+xml", {"type": "string"})}, errors=(404,))
async def get_feed(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    agency = await get_agency(request.app[POOL], agency_id)
    if agency is None:
        raise NotFound(f"No agency {agency_id!r}")
    alerts = await manual_alerts.recent(request.app[POOL], agency_id, limit=FEED_ENTRIES)
    body = cap_feed.atom_feed(alerts, agency_id=agency_id, agency_name=agency.name,
                              base_url=_base_url(request), sender=_sender(request, agency_id),
                              now=dt.datetime.now(dt.UTC))
    return web.Response(body=body, content_type="application/atom+xml", charset="utf-8",
                        headers={"Cache-Control": "public, max-age=30"})


@routes.get("/v1/agencies/{agency}/alerts/{alert}.cap")
@doc("One alert as CAP 1.2", "alerts",
     responses={200: Body("application/cap+xml", {"type": "string"})}, errors=(404,))
async def get_cap(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    try:
        alert_id = str(uuid.UUID(request.match_info["alert"]))
    except ValueError:
        raise NotFound("No such alert") from None
    found = await manual_alerts.recent(request.app[POOL], agency_id, limit=1,
                                       incident_id=alert_id)
    if not found:
        raise NotFound("No such alert")
    body = cap_feed.cap_document(found[0], agency_id=agency_id,
                                 sender=_sender(request, agency_id))
    return web.Response(body=body, content_type=cap_feed.CAP_MEDIA_TYPE, charset="utf-8",
                        headers={"Cache-Control": "public, max-age=300"})
