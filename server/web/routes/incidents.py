"""POST /v1/agencies/{agency}/incidents: the CAD webhook (and its dry run)."""

from __future__ import annotations

import datetime as dt

import msgspec
from aiohttp import web

from server.domain.signing import HEADER
from server.formats.remarks import FORMAT_OF_CONTENT_TYPE
from server.web.appkeys import AGENCIES, LIMITER, OUTBOX, POOL, REDIS, SETTINGS
from server.web.dryrun import dry_run
from server.web.ingest import ingest, parser_for
from server.web.problems import FieldError, ValidationFailed
from server.web.routes.body import json_response, read_bounded

routes = web.RouteTableDef()


class IncidentAccepted(msgspec.Struct, frozen=True):
    incident_id: str
    decision: str   # alert | review | suppressed:<reason>
    duplicate: bool


def is_dry_run(request: web.Request) -> bool:
    value = request.query.get("dry_run", "false").lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise ValidationFailed([FieldError("dry_run", "must be true or false")])


@routes.post("/v1/agencies/{agency}/incidents")
async def post_incident(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    dry = is_dry_run(request)
    parser = parser_for(request.content_type)
    body = await read_bounded(request, settings.max_body_bytes)
    if dry:
        result = await dry_run(
            request.app[POOL], request.app[REDIS], request.app[AGENCIES],
            request.app[LIMITER], agency_id=request.match_info["agency"],
            fmt=FORMAT_OF_CONTENT_TYPE[request.content_type.lower()], parser=parser,
            body=body, signature=request.headers.get(HEADER),
            tolerance_s=settings.signature_tolerance_s,
            dry_runs_per_minute=settings.dry_runs_per_minute,
            device_pushes_per_hour=settings.device_pushes_per_hour,
            now=dt.datetime.now(dt.UTC), location_ttl=settings.location_ttl,
            rejected_per_minute=settings.rejected_webhooks_per_minute,
        )
        return json_response(result)
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
