"""POST /v1/agencies/{agency}/incidents: the CAD webhook."""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from server.domain.signing import HEADER
from server.web.appkeys import AGENCIES, LIMITER, OUTBOX, POOL, REDIS, SETTINGS
from server.web.ingest import ingest, parser_for
from server.web.routes.body import json_response, read_bounded

routes = web.RouteTableDef()


class IncidentAccepted(msgspec.Struct, frozen=True):
    incident_id: str
    decision: str   # alert | review | suppressed:<reason>
    duplicate: bool


@routes.post("/v1/agencies/{agency}/incidents")
async def post_incident(request: web.Request) -> web.Response:
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
        rejected_per_minute=settings.rejected_webhooks_per_minute,
    )
    return json_response(
        IncidentAccepted(accepted.incident_id, accepted.decision, accepted.duplicate),
        status=202,
    )
