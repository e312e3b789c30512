"""The matcher: incidents in, per-platform pushes out.

For each incident on ``geopush:incidents`` it finds the devices whose zones intersect
the incident's geometry (PostGIS, GiST-indexed), applies their category preferences
and quiet hours, and enqueues one push per device. Enqueueing is a Lua script that
sets the per-device dedup key and XADDs in one atomic step, so a matcher that dies
half-way and is replayed never pushes a device twice and never skips one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from server import keys
from server.domain.categories import MOST_SEVERE, RESPONDER_ONLY
from server.domain.policy import ALERT
from server.domain.quiet import allowed_now
from server.store import aeds, responders
from server.store.publish import STREAM_MAXLEN
from workers.push import Push
from workers.streams import Entry, StreamConsumer

log = logging.getLogger(__name__)

# How long after it occurred a push is still worth delivering (also the APNs
# expiration and the FCM TTL).
ALERT_LIFETIME = dt.timedelta(hours=1)

# KEYS: the event's dedup set, the platform's push stream, the device's rate counter,
# the device's index of dedup sets (what its erasure must clean).
# ARGV: device id, dedup TTL, stream MAXLEN, hourly limit (0: none), then the entry's
# field/value pairs. Returns 1 enqueued, 0 already pushed, -1 over the device's limit.
_ENQUEUE = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 0
end
local limit = tonumber(ARGV[4])
if limit > 0 then
  local n = redis.call('INCR', KEYS[3])
  if n == 1 then
    redis.call('EXPIRE', KEYS[3], 3600)
  end
  if n > limit then
    return -1
  end
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[4], KEYS[1])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5))
return 1
"""

_INCIDENT = """
SELECT i.id, i.agency_id, i.category, i.status, i.decision, i.actual, i.occurred_at,
       i.received_at, i.public_location, i.location_kind,
       ST_Y(i.public_point) AS lat, ST_X(i.public_point) AS lon,
       ST_Y(ST_PointOnSurface(i.geom)) AS exact_lat, ST_X(ST_PointOnSurface(i.geom)) AS exact_lon,
       i.title_override, i.body_override, a.responder_radius_m,
       GeometryType(i.public_geom) <> 'POINT' AS is_area,
       ST_XMin(i.public_geom) AS west, ST_YMin(i.public_geom) AS south,
       ST_XMax(i.public_geom) AS east, ST_YMax(i.public_geom) AS north
  FROM incidents i JOIN agencies a ON a.id = i.agency_id
 WHERE i.id = $1
"""

# Responders near a cardiac arrest, from the positions Redis found. Where the arrest is
# not known to be in a public place, only responders the agency registered are alerted.
_RESPONDERS = """
SELECT d.id, d.platform, d.token, d.locale, d.timezone, d.quiet_start, d.quiet_end
  FROM devices d
 WHERE d.id = ANY ($1::uuid[])
   AND d.responder
   AND d.token_disabled_at IS NULL
   AND (d.categories IS NULL OR 'cardiac_arrest' = ANY (d.categories))
   AND ($2 OR EXISTS (SELECT 1 FROM agency_responders r
                       WHERE r.device_id = d.id AND r.agency_id = $3))
"""

# Two agencies reporting one event (a fire both the fire and the police CAD know
# about): the same category within 150 m and 10 minutes, already alerted. Devices
# are deduplicated on the earliest such incident, so each is alerted once.
SAME_EVENT_DISTANCE_M = 150
SAME_EVENT_WINDOW = dt.timedelta(minutes=10)
_SAME_EVENT = """
SELECT o.id
  FROM incidents i
  JOIN incidents o
    ON o.category = i.category
   AND o.agency_id <> i.agency_id
   AND o.occurred_at BETWEEN i.occurred_at - $2::interval AND i.occurred_at + $2::interval
   AND (o.received_at, o.id) < (i.received_at, i.id)
   AND o.decision = 'alert' AND o.actual
   AND ST_DWithin(o.public_geom::geography, i.public_geom::geography, $3)
 WHERE i.id = $1
 ORDER BY o.received_at, o.id
 LIMIT 1
"""

# Neighbours are matched against the incident's public geometry (the rounded point, or
# an area widened to the same grid), never the exact one: who is alerted is a function
# of what the push says, so a grid of cheap devices can't locate an incident more
# precisely than the push does. The exact point serves CPR responders only.
# The zone test runs on the GiST index of zones.geom: ST_Intersects adds the && box
# check itself. Boundary points count as inside (ST_Intersects, not ST_Within).
_NEIGHBOURS = """
SELECT DISTINCT ON (d.id) d.id, d.platform, d.token, d.locale, d.timezone,
       d.quiet_start, d.quiet_end
  FROM incidents i
  JOIN zones z ON ST_Intersects(z.geom, i.public_geom)
  JOIN devices d ON d.id = z.device_id
 WHERE i.id = $1
   AND d.token_disabled_at IS NULL
   AND (d.categories IS NULL OR i.category = ANY (d.categories))
"""


@dataclass(frozen=True)
class MatchResult:
    incident_id: str
    candidates: int
    enqueued: int


class Matcher:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, *,
                 device_pushes_per_hour: int = 10) -> None:
        self.pool = pool
        self.redis = redis
        # A neighbourhood having a bad night must not turn a phone into a pager: past
        # this many pushes an hour a device gets only the most severe categories and
        # CPR calls (0 switches the limit off).
        self.device_pushes_per_hour = device_pushes_per_hour
        self._enqueue = redis.register_script(_ENQUEUE)

    async def match_incident(self, incident_id: str, now: dt.datetime) -> MatchResult:
        incident = await self.pool.fetchrow(_INCIDENT, incident_id)
        if (incident is None or incident["decision"] != ALERT
                or incident["status"] != "active" or not incident["actual"]):
            # Changed since it was published (cleared, cancelled, re-decided): nothing to do.
            return MatchResult(incident_id, 0, 0)
        expires = incident["occurred_at"] + ALERT_LIFETIME
        if now >= expires:
            return MatchResult(incident_id, 0, 0)
        audience, aeds_json = "neighbour", ""
        lat, lon = incident["lat"], incident["lon"]
        bbox = ((incident["west"], incident["south"], incident["east"], incident["north"])
                if incident["is_area"] else None)
        if incident["category"] in RESPONDER_ONLY:
            # Never to neighbours: responders are matched by where they are now, and get
            # the exact point (they have to find the patient) and the nearest AEDs.
            audience, bbox = "responder", None
            lat, lon = incident["exact_lat"], incident["exact_lon"]
            rows = await self._responders(incident)
            if rows:
                aeds_json = json.dumps(await aeds.nearest(self.pool, lat, lon),
                                       separators=(",", ":"))
        else:
            rows = await self.pool.fetch(_NEIGHBOURS, incident["id"])
        event_id = await self.pool.fetchval(
            _SAME_EVENT, incident["id"], SAME_EVENT_WINDOW, SAME_EVENT_DISTANCE_M
        ) if rows else None
        dedup_on = str(event_id or incident["id"])
        limit = 0 if (audience == "responder" or incident["category"] in MOST_SEVERE) \
            else self.device_pushes_per_hour
        enqueued = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in rows:
                if not allowed_now(incident["category"], now, row["timezone"],
                                   row["quiet_start"], row["quiet_end"]):
                    continue
                push = Push(
                    incident_id=str(incident["id"]), device_id=str(row["id"]),
                    platform=row["platform"], token=row["token"], locale=row["locale"],
                    category=incident["category"],
                    public_location=incident["public_location"] or "",
                    lat=lat, lon=lon,
                    occurred_at=incident["occurred_at"].timestamp(),
                    received_at=incident["received_at"].timestamp(),
                    expires_at=expires.timestamp(),
                    title=incident["title_override"] or "",
                    body=incident["body_override"] or "",
                    audience=audience, aeds=aeds_json, bbox=bbox,
                )
                flat = [x for kv in push.to_fields().items() for x in kv]
                await self._enqueue(
                    keys=[keys.pushed(dedup_on), keys.push_stream(push.platform),
                          keys.device_rate(push.device_id), keys.device_events(push.device_id)],
                    args=[push.device_id, keys.PUSHED_TTL_S, STREAM_MAXLEN, limit, *flat],
                    client=pipe,
                )
            results = await pipe.execute() if len(pipe) else []
        enqueued = sum(1 for r in results if r == 1)
        limited = sum(1 for r in results if r == -1)
        log.info("matched incident=%s category=%s candidates=%d enqueued=%d rate_limited=%d",
                 incident_id, incident["category"], len(rows), enqueued, limited)
        return MatchResult(incident_id, len(rows), enqueued)

    async def _responders(self, incident: asyncpg.Record) -> list[asyncpg.Record]:
        nearby = await responders.near(self.redis, incident["exact_lat"], incident["exact_lon"],
                                       incident["responder_radius_m"])
        if not nearby:
            return []
        return await self.pool.fetch(
            _RESPONDERS, [r.device_id for r in nearby],
            incident["location_kind"] == "public", incident["agency_id"],
        )

    async def handle(self, consumer: StreamConsumer, entries: list[Entry]) -> None:
        done: list[str] = []
        now = dt.datetime.now(dt.UTC)
        for entry_id, fields in entries:
            incident_id = fields.get("incident_id", "")
            try:
                await self.match_incident(incident_id, now)
            except (asyncpg.DataError, ValueError):
                log.error("dropping malformed stream entry %s: %r", entry_id, fields)
            done.append(entry_id)
        await consumer.ack(done)
