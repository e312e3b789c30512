"""Operator API: agencies (bearer GEOPUSH_ADMIN_TOKEN)."""

from __future__ import annotations

import logging
from typing import Annotated

import msgspec
from aiohttp import web

from server.appkeys import POOL, SETTINGS
from server.auth import require_admin
from server.domain import signing
from server.domain.agency_spec import validate_agency
from server.errors import NotFound, Problem
from server.routes.body import decode_json, json_response
from server.store.agencies import AgencyExists, create_agency, rotate_secret

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


class AgencyCreate(msgspec.Struct, frozen=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    timezone: str = "UTC"
    call_types: dict[str, str] = {}
    review: bool = False


class AgencyCreated(msgspec.Struct, frozen=True):
    id: str
    secret: str


@routes.post("/v1/admin/agencies")
async def post_agency(request: web.Request) -> web.Response:
    require_admin(request, request.app[SETTINGS].admin_token)
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
    log.info("agency created id=%s call_types=%d", spec.id, len(spec.call_types))
    return json_response(AgencyCreated(spec.id, secret), status=201)


@routes.post("/v1/admin/agencies/{agency}/secret")
async def post_agency_secret(request: web.Request) -> web.Response:
    require_admin(request, request.app[SETTINGS].admin_token)
    agency_id = request.match_info["agency"]
    secret = signing.new_secret()
    if not await rotate_secret(request.app[POOL], agency_id, secret):
        raise NotFound(f"No agency {agency_id!r}")
    log.info("agency secret rotated id=%s", agency_id)
    return json_response(AgencyCreated(agency_id, secret), status=200)
