"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiohttp import web

from server.store.db import ping
from server.web.appkeys import POOL, REDIS
from server.web.openapi import doc
from server.web.problems import PROBLEM_JSON, Problem
from server.web.routes.body import json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


class Health(msgspec.Struct, frozen=True):
    status: str


class Ready(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, str]


@routes.get("/healthz")
@doc("The process is alive", "operations", responses={200: Health}, store=False)
async def healthz(request: web.Request) -> web.Response:
    return json_response(Health("ok"))


@routes.get("/readyz")
@doc("PostgreSQL and Redis answer (503 with the checks if not)", "operations",
     responses={200: Ready})
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}

    async def postgres() -> None:
        await ping(request.app[POOL])

    async def redis() -> None:
        await request.app[REDIS].ping()

    for name, check in (("postgres", postgres), ("redis", redis)):
        try:
            await asyncio.wait_for(check(), timeout=2)
            checks[name] = "ok"
        except Exception as exc:  # readiness reports any failure, it never raises
            log.warning("readiness: %s unavailable: %s", name, exc)
            checks[name] = "unavailable"
    if all(v == "ok" for v in checks.values()):
        return json_response(Ready("ok", checks))
    problem = Problem(503, "Not ready", "A backing service is unreachable",
                      slug="unavailable", headers={"Retry-After": "5"})
    body = {**problem.body(), "checks": checks}
    return web.Response(body=msgspec.json.encode(body), status=503, content_type=PROBLEM_JSON,
                        headers=problem.headers)
