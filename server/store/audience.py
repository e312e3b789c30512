"""Who an incident reaches: the audience the matcher pushes to and a dry run counts.

Both go through ``find_audience`` (and the one copy of the SQL in
``server.store.matching``), so the count a CAD vendor's dry run reports is the
matcher's own answer, not an estimate kept in step by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from server import keys
from server.domain.categories import MOST_SEVERE, RESPONDER_ONLY
from server.domain.quiet import allowed_now
from server.domain.zones import MAX_NEAR_ME_RADIUS_M
from server.store import matching, positions

# How long after it occurred a push is still worth delivering (also the APNs
# expiration and the FCM TTL).
ALERT_LIFETIME = dt.timedelta(hours=1)
# GEOPUSH_LOCATION_TTL_MINUTES' default: a near-me position is forgotten after this.
DEFAULT_LOCATION_TTL = dt.timedelta(minutes=120)

NEIGHBOUR = "neighbour"
RESPONDER = "responder"


@dataclass(frozen=True)
class Target:
    """What matching needs of an incident, stored or not."""

    agency_id: str
    category: str
    geometry: str                  # hex EWKB or WKT, EPSG:4326
    exact_lat: float               # a point on the geometry (a responder's destination)
    exact_lon: float
    location_kind: str | None
    responder_radius_m: int
    # The public (rounded) point: near-me positions are matched against it (or the
    # area, for an incident given as one), never the exact point.
    public_lat: float | None = None
    public_lon: float | None = None


@dataclass(frozen=True)
class Audience:
    kind: str                      # NEIGHBOUR | RESPONDER
    devices: list[asyncpg.Record]  # id, platform, token, locale, timezone, quiet hours


async def find_audience(pool: asyncpg.Pool, redis: aioredis.Redis, target: Target, *,
                        near_me: positions.PositionSet | None = None,
                        forget: bool = True) -> Audience:
    """Devices the incident is for, before quiet hours, dedup and hourly limits.

    A CPR call never goes to neighbours: responders are matched by where they are
    now (Redis), the rest by their zones (PostGIS) and, with ``near_me``, by where
    they are now (one GEO search in Redis, whatever the number of devices). ``forget``
    false: positions past their time-to-live are passed over but left to the matcher
    to delete (a dry run writes nothing).
    """
    if target.category in RESPONDER_ONLY:
        nearby = await positions.RESPONDERS.near(redis, target.exact_lat, target.exact_lon,
                                                 target.responder_radius_m, forget=forget)
        if not nearby:
            return Audience(RESPONDER, [])
        rows = await matching.responders(
            pool, [r.device_id for r in nearby],
            public_place=target.location_kind == "public", agency_id=target.agency_id)
        return Audience(RESPONDER, rows)
    near: list[positions.Nearby] = []
    point = None
    if target.public_lat is not None and target.public_lon is not None:
        point = (target.public_lat, target.public_lon)
    if near_me is not None and point is not None and await redis.exists(near_me.geo_key):
        extent = await matching.extent_m(pool, target.geometry, *point)
        near = await near_me.near(redis, *point, MAX_NEAR_ME_RADIUS_M + extent, forget=forget)
    return Audience(NEIGHBOUR, await matching.neighbours(
        pool, target.geometry, target.category, near, point))


def awake(audience: Audience, category: str, now: dt.datetime) -> list[asyncpg.Record]:
    """The audience's devices outside their quiet hours (or for a category that
    always comes through)."""
    return [row for row in audience.devices
            if allowed_now(category, now, row["timezone"], row["quiet_start"], row["quiet_end"])]


def hourly_limit(audience: Audience, category: str, per_hour: int) -> int:
    """A device's hourly push limit for this incident (0: none). A neighbourhood
    having a bad night must not turn a phone into a pager, but the most severe
    categories and CPR calls always come through."""
    if audience.kind == RESPONDER or category in MOST_SEVERE:
        return 0
    return per_hour


async def count_would_alert(
    pool: asyncpg.Pool, redis: aioredis.Redis, target: Target, *, occurred_at: dt.datetime,
    now: dt.datetime, per_hour: int, incident_id: object | None = None,
    location_ttl: dt.timedelta = DEFAULT_LOCATION_TTL,
) -> int:
    """How many devices the matcher would push this incident to right now, without
    touching anything: the audience, quiet hours, devices already pushed for this
    event (by an earlier revision, ``incident_id``, or another agency's report), and
    each device's hourly limit, all read only."""
    if now >= occurred_at + ALERT_LIFETIME:
        return 0
    audience = await find_audience(pool, redis, target, forget=False,
                                   near_me=positions.near_me(location_ttl.total_seconds()))
    devices = [str(row["id"]) for row in awake(audience, target.category, now)]
    if not devices:
        return 0
    event_id = await matching.same_event(
        pool, category=target.category, agency_id=target.agency_id, occurred_at=occurred_at,
        received_at=now, incident_id=incident_id, geometry=target.geometry)
    dedup_on = event_id or incident_id
    if dedup_on is not None:
        pushed = await redis.smismember(keys.pushed(str(dedup_on)), devices)
        devices = [d for d, done in zip(devices, pushed, strict=True) if not done]
    limit = hourly_limit(audience, target.category, per_hour)
    if limit and devices:
        counts = await redis.mget([keys.device_rate(d) for d in devices])
        devices = [d for d, n in zip(devices, counts, strict=True) if int(n or 0) < limit]
    return len(devices)
