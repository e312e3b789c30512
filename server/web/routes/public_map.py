"""The public incident map's data: ``GET /v1/incidents?bbox=min_lon,min_lat,max_lon,max_lat``.

It will be hit hard, so answers are cached per bounding box (rounded outwards to a
0.01° grid, so nearby views share an entry) for CACHE_S, and each client address is
rate limited (GEOPUSH_PUBLIC_REQUESTS_PER_MINUTE).
"""

from __future__ import annotations

import datetime as dt
import math
import time

import msgspec
from aiohttp import web

from server import keys
from server.domain.categories import LABELS_EN
from server.store import public_incidents
from server.web.appkeys import LIMITER, POOL, PUBLIC_CACHE, SETTINGS
from server.web.client import limit_bucket, request_address
from server.web.openapi import Query, doc
from server.web.problems import FieldError, Problem, ValidationFailed
from server.web.public_cache import CACHE_S

routes = web.RouteTableDef()

WINDOW = dt.timedelta(hours=1)
MAX_SPAN_DEG = 5.0
MAX_INCIDENTS = 500
_GRID = 100   # 0.01°


class PublicIncident(msgspec.Struct, frozen=True):
    category: str
    status: str
    location: str | None   # the public location text ("5300 block of 24th Ave NE")
    lat: float             # the public point, rounded to about 100 m
    lon: float
    occurred_at: str
    age_minutes: int
    label: str          # the category in words (English)


class PublicMap(msgspec.Struct, frozen=True):
    bbox: list[float]      # as asked, rounded outwards to the 0.01° cache grid
    generated_at: str
    incidents: list[PublicIncident]


def parse_bbox(raw: str | None) -> tuple[float, float, float, float]:
    """min_lon,min_lat,max_lon,max_lat, rounded outwards to the cache grid."""
    if raw is None:
        raise ValidationFailed([FieldError("bbox", "is required: min_lon,min_lat,max_lon,max_lat")])
    parts = raw.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValidationFailed([FieldError("bbox", "must be four numbers: "
                                           "min_lon,min_lat,max_lon,max_lat")])
    min_lon, min_lat, max_lon, max_lat = values
    if not (-180 <= min_lon < max_lon <= 180 and -90 <= min_lat < max_lat <= 90):
        raise ValidationFailed([FieldError("bbox", "needs -180 <= min_lon < max_lon <= 180 "
                                           "and -90 <= min_lat < max_lat <= 90")])
    if max_lon - min_lon > MAX_SPAN_DEG or max_lat - min_lat > MAX_SPAN_DEG:
        raise ValidationFailed([FieldError("bbox", f"may span at most {MAX_SPAN_DEG}°")])
    return (math.floor(min_lon * _GRID) / _GRID, math.floor(min_lat * _GRID) / _GRID,
            math.ceil(max_lon * _GRID) / _GRID, math.ceil(max_lat * _GRID) / _GRID)


@routes.get("/v1/incidents")
@doc("The last hour's alerted incidents in ?bbox= (public points only)", "public",
     responses={200: PublicMap},
     errors=(422, 429),
     query=(Query("bbox", "min_lon,min_lat,max_lon,max_lat", required=True),))
async def get_incidents(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    verdict = await request.app[LIMITER].check_key(
        keys.public_rate(limit_bucket(request_address(request))),
        settings.public_requests_per_minute)
    if not verdict.allowed:
        raise Problem(429, "Too many requests", slug="rate-limited",
                      headers={"Retry-After": str(verdict.retry_after_s)})
    bbox = parse_bbox(request.query.get("bbox"))
    cache = request.app[PUBLIC_CACHE]
    mono = time.monotonic()
    body = cache.get(bbox, mono)
    if body is None:
        now = dt.datetime.now(dt.UTC)
        rows = await public_incidents.recent(request.app[POOL], bbox, since=now - WINDOW,
                                             limit=MAX_INCIDENTS)
        answer = PublicMap(list(bbox), now.isoformat(), [
            PublicIncident(**public_incidents.as_public(r, now),
                           label=LABELS_EN.get(r["category"], r["category"]))
            for r in rows])
        body = msgspec.json.encode(answer)
        cache.put(bbox, body, mono)
    return web.Response(body=body, content_type="application/json",
                        headers={"Cache-Control": f"public, max-age={int(CACHE_S)}"})
