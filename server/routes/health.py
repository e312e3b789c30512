"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from server.appkeys import POOL, REDIS
from server.routes.body import json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}

    async def postgres() -> None:
        await request.app[POOL].fetchval("SELECT 1")

    async def redis() -> None:
        await request.app[REDIS].ping()

    for name, check in (("postgres", postgres), ("redis", redis)):
        try:
            await asyncio.wait_for(check(), timeout=2)
            checks[name] = "ok"
        except Exception as exc:  # readiness reports any failure, it never raises
            log.warning("readiness: %s unavailable: %s", name, exc)
            checks[name] = "unavailable"
    ok = all(v == "ok" for v in checks.values())
    return json_response({"status": "ok" if ok else "unavailable", "checks": checks},
                         status=200 if ok else 503)
