"""POST /v1/agencies/{agency}/incidents: the CAD webhook."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
from aiohttp import web

from server import metrics
from server.domain.signing import HEADER
from server.formats.native import NativeIncident
from server.web.appkeys import AGENCIES, LIMITER, OUTBOX, POOL, REDIS, SETTINGS
from server.web.ingest import format_of, ingest, parser_for
from server.web.openapi import Body, doc
from server.web.problems import Problem
from server.web.routes.body import json_response, read_bounded

routes = web.RouteTableDef()


class IncidentAccepted(msgspec.Struct, frozen=True):
    incident_id: str
    decision: str   # alert | review | suppressed:<reason>
    duplicate: bool


_XML = Body("application/cap+xml", {"type": "string", "description": "OASIS CAP 1.2 alert"})


@routes.post("/v1/agencies/{agency}/incidents")
@doc("Post an incident (CAD webhook)", "ingest", auth="signature", request=NativeIncident,
     request_bodies=(_XML, Body("application/xml", _XML.schema),
                     Body("application/eido+json", {"type": "object",
                                                    "description": "NENA EIDO JSON"})),
     responses={202: IncidentAccepted}, errors=(401, 413, 415, 422, 429))
async def post_incident(request: web.Request) -> web.Response:
    body_format = format_of(request.content_type)
    started = time.perf_counter()
    try:
        response = await _post_incident(request)
    except Problem as problem:
        # 422 and 429 come after the signature verified; anything else may name an
        # agency that doesn't exist, which must not mint a label value.
        agency = request.match_info["agency"] if problem.status in (422, 429) else "unverified"
        metrics.WEBHOOKS.labels(agency, body_format, f"rejected:{problem.status}").inc()
        raise
    finally:
        metrics.INGEST_SECONDS.labels(body_format).observe(time.perf_counter() - started)
    return response


async def _post_incident(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    parser = parser_for(request.content_type)
    body = await read_bounded(request, settings.max_body_bytes)
    accepted = await ingest(
        request.app[POOL],
        request.app[REDIS],
        request.app[AGENCIES],
        request.app[OUTBOX],
        agency_id=request.match_info["agency"],
        parser=parser,
        body=body,
        signature=request.headers.get(HEADER),
        tolerance_s=settings.signature_tolerance_s,
        now=dt.datetime.now(dt.UTC),
        limiter=request.app[LIMITER],
    )
    metrics.WEBHOOKS.labels(request.match_info["agency"], format_of(request.content_type),
                            accepted.decision).inc()
    return json_response(
        IncidentAccepted(accepted.incident_id, accepted.decision, accepted.duplicate),
        status=202,
    )
