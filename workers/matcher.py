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
from server.domain.policy import ALERT
from server.domain.severity import MODERATE
from server.store import aeds, matching
from server.store.audience import (
    ALERT_LIFETIME,
    NEIGHBOUR,
    RESPONDER,
    Audience,
    Target,
    awake,
    find_audience,
    hourly_limit,
)
from server.store.publish import STREAM_MAXLEN
from workers.push import Push
from workers.streams import Entry, StreamConsumer

log = logging.getLogger(__name__)

# KEYS: the event's dedup set, the platform's push stream, the device's rate counter.
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
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5))
return 1
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
        incident = await matching.incident(self.pool, incident_id)
        if (incident is None or incident["decision"] != ALERT
                or incident["status"] != "active" or not incident["actual"]):
            # Changed since it was published (cleared, cancelled, re-decided): nothing to do.
            return MatchResult(incident_id, 0, 0)
        expires = incident["expires_at"] or incident["occurred_at"] + ALERT_LIFETIME
        if now >= expires:
            return MatchResult(incident_id, 0, 0)
        manual = incident["source"] == "manual"
        severity = incident["severity"] or ""
        if manual:
            # The drawn area is public by nature: matched as drawn (matching.py).
            audience = Audience(NEIGHBOUR, await matching.area_neighbours(
                self.pool, incident["area"]))
        else:
            audience = await find_audience(self.pool, self.redis, Target(
                agency_id=incident["agency_id"], category=incident["category"],
                geometry=incident["geom"], exact_lat=incident["exact_lat"],
                exact_lon=incident["exact_lon"], location_kind=incident["location_kind"],
                responder_radius_m=incident["responder_radius_m"],
            ))
        rows = audience.devices
        aeds_json = ""
        lat, lon = incident["lat"], incident["lon"]
        if audience.kind == RESPONDER:
            # Responders get the exact point (they have to find the patient) and the
            # nearest AEDs.
            lat, lon = incident["exact_lat"], incident["exact_lon"]
            if rows:
                aeds_json = json.dumps(await aeds.nearest(self.pool, lat, lon),
                                       separators=(",", ":"))
        event_id = await matching.same_event(
            self.pool, category=incident["category"], agency_id=incident["agency_id"],
            occurred_at=incident["occurred_at"], received_at=incident["received_at"],
            incident_id=incident["id"], geometry=incident["geom"],
        ) if rows and not manual else None
        dedup_on = str(event_id or incident["id"])
        # An agency's own alert is never held back by the hourly limit, and quiet hours
        # hold back only a moderate one.
        limit = 0 if manual else hourly_limit(audience, incident["category"],
                                               self.device_pushes_per_hour)
        recipients = rows if manual and severity != MODERATE \
            else awake(audience, incident["category"], now)
        enqueued = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for row in recipients:
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
                    audience=audience.kind, aeds=aeds_json, severity=severity,
                )
                flat = [x for kv in push.to_fields().items() for x in kv]
                await self._enqueue(
                    keys=[keys.pushed(dedup_on), keys.push_stream(push.platform),
                          keys.device_rate(push.device_id)],
                    args=[push.device_id, keys.PUSHED_TTL_S, STREAM_MAXLEN, limit, *flat],
                    client=pipe,
                )
            results = await pipe.execute() if len(pipe) else []
        enqueued = sum(1 for r in results if r == 1)
        limited = sum(1 for r in results if r == -1)
        log.info("matched incident=%s category=%s candidates=%d enqueued=%d rate_limited=%d",
                 incident_id, incident["category"], len(rows), enqueued, limited)
        return MatchResult(incident_id, len(rows), enqueued)

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
