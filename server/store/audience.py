"""Who an incident reaches: the audience the matcher pushes to and a dry run counts.

Both go through ``find_audience`` (and the one copy of the SQL in
``server.store.matching``), so the count a CAD vendor's dry run reports is the
matcher's own answer, not an estimate kept in step by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from server import keys
from server.domain.categories import MOST_SEVERE, RESPONDER_ONLY
from server.domain.quiet import allowed_now
from server.store import matching, positions
from server.store.redisclient import RedisClient

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
    # The public (rounded) point: neighbours, by zone or near-me position, are matched
    # against it (or an area widened to its grid), never the exact geometry.
    public_lat: float
    public_lon: float


@dataclass(frozen=True)
class Audience:
    kind: str                      # NEIGHBOUR | RESPONDER
    devices: list[asyncpg.Record]  # id, platform, token, locale, timezone, quiet hours


async def find_audience(pool: asyncpg.Pool, redis: RedisClient, target: Target, *,
                        near_me: positions.NearMePositions | None = None,
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
    point = (target.public_lat, target.public_lon)
    near = [] if near_me is None else await near_positions(
        pool, redis, near_me, target.geometry, point, forget=forget)
    return Audience(NEIGHBOUR, await matching.neighbours(
        pool, target.geometry, target.category, point, near))


async def near_positions(pool: asyncpg.Pool, redis: RedisClient,
                         near_me: positions.NearMePositions, geometry: str,
                         point: tuple[float, float], *, forget: bool = True,
                         ) -> list[positions.Nearby]:
    """Near-me positions that may be within their radius of ``geometry``: GEO searches
    around ``point`` (lat, lon; a point on it), each band of radii as far out as the
    geometry's public extent plus the band's radius (one round trip). The SQL then
    keeps those within their own device's radius."""
    if not await near_me.any(redis):
        return []
    extent = await matching.extent_m(pool, geometry, *point)
    return await near_me.candidates(redis, *point, extent, forget=forget)


async def area_near_positions(pool: asyncpg.Pool, redis: RedisClient, area: str, *,
                              location_ttl: dt.timedelta) -> list[positions.Nearby]:
    """The near-me positions a manual alert over ``area`` may reach right now (read
    only: for the preview before it is sent, and the size recorded when it is)."""
    point = await matching.point_on_surface(pool, area)
    return await near_positions(pool, redis, positions.near_me(location_ttl.total_seconds()),
                                area, point, forget=False)


async def area_audience_size(pool: asyncpg.Pool, redis: RedisClient, area: str, *,
                             location_ttl: dt.timedelta) -> int:
    """How many devices a manual alert over ``area`` would reach right now, by zone
    or by near-me position."""
    near = await area_near_positions(pool, redis, area, location_ttl=location_ttl)
    return await matching.area_audience_size(pool, area, near)


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
    pool: asyncpg.Pool, redis: RedisClient, target: Target, *, occurred_at: dt.datetime,
    now: dt.datetime, per_hour: int, incident_id: object | None = None,
    location_ttl: dt.timedelta = DEFAULT_LOCATION_TTL,
    shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS,
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
        received_at=now, incident_id=incident_id, geometry=target.geometry,
        public_point=(target.public_lat, target.public_lon))
    dedup_on = event_id or incident_id
    # Read shard by shard: each command's keys in one slot (server/keys.py).
    by_shard: dict[int, list[str]] = {}
    for device in devices:
        by_shard.setdefault(keys.device_shard(device, shards), []).append(device)
    limit = hourly_limit(audience, target.category, per_hour)
    count = 0
    for shard, group in by_shard.items():
        if dedup_on is not None:
            pushed = await redis.smismember(keys.pushed(str(dedup_on), shard), group)
            group = [d for d, done in zip(group, pushed, strict=True) if not done]
        if limit and group:
            counts = await redis.mget([keys.device_rate(d, shard) for d in group])
            group = [d for d, n in zip(group, counts, strict=True) if int(n or 0) < limit]
        count += len(group)
    return count
