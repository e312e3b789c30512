"""POST /v1/agencies/{agency}/incidents: the CAD webhook (and its dry run)."""

from __future__ import annotations

import datetime as dt
import time

import msgspec
from aiohttp import web

from server import metrics
from server.domain.signing import HEADER
from server.formats.native import NativeIncident
from server.formats.remarks import FORMAT_OF_CONTENT_TYPE
from server.web.appkeys import AGENCIES, LIMITER, OUTBOX, POOL, REDIS, SETTINGS
from server.web.dryrun import DryRunResult, dry_run
from server.web.ingest import ingest, parser_for
from server.web.openapi import Body, Query, doc
from server.web.problems import FieldError, Problem, ValidationFailed
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


def format_of(content_type: str) -> str:
    """The metrics' format label: json, cap, eido, or unsupported."""
    return FORMAT_OF_CONTENT_TYPE.get(content_type.lower(), "unsupported")


_XML = Body("application/cap+xml", {"type": "string", "description": "OASIS CAP 1.2 alert"})
_DRY_RUN = Query(
    "dry_run",
    "true: answer 200 with what the real call would do (decision and rule, category, "
    "public text per locale, devices it would alert now, warnings); nothing is stored, "
    "published or pushed, and the same revision sent for real afterwards is not a "
    "duplicate. Signed and refused exactly like the real call; dry runs have their own "
    "per-agency rate limit.", {"type": "boolean", "default": False})


@routes.post("/v1/agencies/{agency}/incidents")
@doc("Post an incident (CAD webhook)", "ingest", auth="signature", request=NativeIncident,
     request_bodies=(_XML, Body("application/xml", _XML.schema),
                     Body("application/eido+json", {"type": "object",
                                                    "description": "NENA EIDO JSON"})),
     responses={202: IncidentAccepted, 200: DryRunResult}, errors=(401, 413, 415, 422, 429),
     query=(_DRY_RUN,),
     described={202: "Stored: the revision will be matched and pushed as decided",
                200: "dry_run=true: what the real call would do; nothing was done"})
async def post_incident(request: web.Request) -> web.Response:
    body_format = format_of(request.content_type)
    started = time.perf_counter()
    try:
        response = await _post_incident(request, body_format)
    except Problem as problem:
        # 422 and 429 come after the signature verified; anything else may name an
        # agency that doesn't exist, which must not mint a label value.
        agency = request.match_info["agency"] if problem.status in (422, 429) else "unverified"
        metrics.WEBHOOKS.labels(agency, body_format, f"rejected:{problem.status}").inc()
        raise
    finally:
        metrics.INGEST_SECONDS.labels(body_format).observe(time.perf_counter() - started)
    return response


async def _post_incident(request: web.Request, body_format: str) -> web.Response:
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
            shards=settings.push_stream_shards,
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
    metrics.WEBHOOKS.labels(request.match_info["agency"], body_format, accepted.decision).inc()
    return json_response(
        IncidentAccepted(accepted.incident_id, accepted.decision, accepted.duplicate),
        status=202,
    )
