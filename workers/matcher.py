"""The matcher: incidents in, per-platform pushes out.

For each incident on ``geopush:incidents`` it finds the devices whose zones intersect
the incident's geometry (PostGIS, GiST-indexed) or whose current position is near it
("near me", Redis GEO), applies their category preferences and quiet hours, and
enqueues one push per device. For an alerted incident that ended (cleared,
cancelled) it enqueues the update that replaces the alert on the phones it reached.
Enqueueing is a Lua script that sets the per-device dedup key and XADDs in one atomic
step, so a matcher that dies half-way and is replayed never pushes a device twice and
never skips one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis

from server import keys, metrics
from server.domain.policy import ALERT
from server.domain.severity import MODERATE
from server.store import aeds, matching, positions, publish
from server.store.audience import (
    ALERT_LIFETIME,
    DEFAULT_LOCATION_TTL,
    NEIGHBOUR,
    RESPONDER,
    Audience,
    Target,
    awake,
    find_audience,
    hourly_limit,
    near_positions,
)
from server.store.publish import STREAM_MAXLEN
from server.store.replica import REPLICA_FAILURES, ReplicaReads
from workers.push import Push
from workers.streams import Entry, StreamConsumer

log = logging.getLogger(__name__)

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

# Alerts still in flight when the incident ended are recorded as delivered shortly
# after (a send's timeout, then the sender's recording); a second pass this much later
# gives those devices their update too. The dedup set keeps it to one per device.
UPDATE_SECOND_PASS = dt.timedelta(seconds=30)
ENDED = ("cleared", "cancelled")


@dataclass(frozen=True)
class MatchResult:
    incident_id: str
    candidates: int
    enqueued: int


class Matcher:
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis, *,
                 device_pushes_per_hour: int = 10,
                 location_ttl: dt.timedelta = DEFAULT_LOCATION_TTL,
                 reads: ReplicaReads | None = None) -> None:
        self.pool = pool
        self.redis = redis
        # Where matching reads from (a streaming replica as fresh as the primary was
        # when the batch was read, else the primary); writes always go to ``pool``.
        self.reads = reads
        self.near_me = positions.near_me(location_ttl.total_seconds())
        # A neighbourhood having a bad night must not turn a phone into a pager: past
        # this many pushes an hour a device gets only the most severe categories and
        # CPR calls (0 switches the limit off).
        self.device_pushes_per_hour = device_pushes_per_hour
        self._enqueue = redis.register_script(_ENQUEUE)

    async def match_incident(self, incident_id: str, now: dt.datetime,
                             db: asyncpg.Pool | None = None) -> MatchResult:
        """``db``: where to read from (default: the primary)."""
        db = db or self.pool
        incident = await matching.incident(db, incident_id)
        if incident is None and db is not self.pool:
            # Not on the replica although it had caught up: only an asynchronous commit
            # can do that (synchronous_commit off). The primary has it.
            db = self.pool
            incident = await matching.incident(db, incident_id)
        if incident is None or not incident["actual"]:
            return MatchResult(incident_id, 0, 0)
        expires = incident["expires_at"] or incident["occurred_at"] + ALERT_LIFETIME
        if now >= expires:
            # Past the alert's lifetime: neither the alert nor an update is worth sending.
            return MatchResult(incident_id, 0, 0)
        if incident["status"] in ENDED:
            return await self._send_updates(db, incident, expires)
        if incident["decision"] != ALERT or incident["status"] != "active":
            # Re-decided since it was published: nothing to do.
            return MatchResult(incident_id, 0, 0)
        manual = incident["source"] == "manual"
        severity = incident["severity"] or ""
        if manual:
            # The drawn area is public by nature: matched as drawn (matching.py).
            # Phones whose current position is in it ("near me") are reached too.
            audience = Audience(NEIGHBOUR, await matching.area_neighbours(
                db, incident["area"],
                await near_positions(db, self.redis, self.near_me, incident["area"],
                                     (incident["lat"], incident["lon"]))))
        else:
            audience = await find_audience(db, self.redis, Target(
                agency_id=incident["agency_id"], category=incident["category"],
                geometry=incident["geom"], exact_lat=incident["exact_lat"],
                exact_lon=incident["exact_lon"], public_lat=incident["lat"],
                public_lon=incident["lon"], location_kind=incident["location_kind"],
                responder_radius_m=incident["responder_radius_m"],
            ), near_me=self.near_me)
        rows = audience.devices
        aeds_json = ""
        lat, lon = incident["lat"], incident["lon"]
        # An area's public area: what neighbours were matched against, so the push says
        # all that being alerted tells.
        bbox = ((incident["west"], incident["south"], incident["east"], incident["north"])
                if incident["is_area"] and audience.kind != RESPONDER else None)
        if audience.kind == RESPONDER:
            # Responders get the exact point (they have to find the patient) and the
            # nearest AEDs.
            lat, lon = incident["exact_lat"], incident["exact_lon"]
            if rows:
                aeds_json = json.dumps(await aeds.nearest(db, lat, lon),
                                       separators=(",", ":"))
        event_id = await matching.same_event(
            db, category=incident["category"], agency_id=incident["agency_id"],
            occurred_at=incident["occurred_at"], received_at=incident["received_at"],
            incident_id=incident["id"], geometry=incident["geom"],
            public_point=(incident["lat"], incident["lon"]),
        ) if rows and not manual else None
        dedup_on = str(event_id or incident["id"])
        # An agency's own alert is never held back by the hourly limit, and quiet hours
        # hold back only a moderate one.
        limit = 0 if manual else hourly_limit(audience, incident["category"],
                                               self.device_pushes_per_hour)
        recipients = rows if manual and severity != MODERATE \
            else awake(audience, incident["category"], now)
        pushes = [Push(
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
            audience=audience.kind, aeds=aeds_json, severity=severity, bbox=bbox,
        ) for row in recipients]
        results = await self._enqueue_all(pushes, keys.pushed(dedup_on), limit)
        enqueued = sum(1 for r in results if r == 1)
        limited = sum(1 for r in results if r == -1)
        metrics.MATCH_RATE_LIMITED.inc(limited)
        log.info("matched incident=%s category=%s candidates=%d enqueued=%d rate_limited=%d",
                 incident_id, incident["category"], len(rows), enqueued, limited)
        return MatchResult(incident_id, len(rows), enqueued)

    async def _enqueue_all(self, pushes: list[Push], dedup_key: str, limit: int) -> list[int]:
        """Each push enqueued unless its device is in ``dedup_key`` already, or over
        ``limit`` pushes this hour (0: no limit): 1 enqueued, 0 deduplicated, -1 limited."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for push in pushes:
                flat = [x for kv in push.to_fields().items() for x in kv]
                await self._enqueue(
                    keys=[dedup_key, keys.push_stream(push.platform),
                          keys.device_rate(push.device_id), keys.device_events(push.device_id)],
                    args=[push.device_id, keys.PUSHED_TTL_S, STREAM_MAXLEN, limit, *flat],
                    client=pipe,
                )
            return list(await pipe.execute()) if len(pipe) else []

    async def _send_updates(self, db: asyncpg.Pool, incident: asyncpg.Record,
                            expires: dt.datetime) -> MatchResult:
        """The incident was cleared or cancelled: every device its alert reached gets
        one silent update under the same collapse id, outside any hourly limit; unless
        the agency turned updates off for the category."""
        incident_id = str(incident["id"])
        if incident["updates_off"]:
            return MatchResult(incident_id, 0, 0)
        if await self.redis.set(keys.update_second_pass(incident_id), 1, nx=True,
                                ex=keys.PUSHED_TTL_S):
            # A delayed outbox row: the relay republishes the incident then.
            await publish.republish_later(self.pool, incident["id"], UPDATE_SECOND_PASS)
        rows = await matching.alerted(db, incident["id"])
        ended_at = max(incident["revision"], incident["occurred_at"])
        pushes = [Push(
            incident_id=incident_id, device_id=str(row["id"]), platform=row["platform"],
            token=row["token"], locale=row["locale"], category=incident["category"],
            public_location=incident["public_location"] or "",
            lat=incident["lat"], lon=incident["lon"],
            occurred_at=incident["occurred_at"].timestamp(),
            received_at=incident["received_at"].timestamp(),
            expires_at=expires.timestamp(), kind="update", status=incident["status"],
            ended_at=ended_at.timestamp(), severity=incident["severity"] or "",
        ) for row in rows]
        results = await self._enqueue_all(pushes, keys.pushed(f"update:{incident_id}"), 0)
        enqueued = sum(1 for r in results if r == 1)
        log.info("updates incident=%s status=%s alerted=%d enqueued=%d", incident_id,
                 incident["status"], len(rows), enqueued)
        return MatchResult(incident_id, len(rows), enqueued)

    async def handle(self, consumer: StreamConsumer, entries: list[Entry]) -> None:
        done: list[str] = []
        now = dt.datetime.now(dt.UTC)
        db = await self.reads.pool() if self.reads else self.pool
        for entry_id, fields in entries:
            incident_id = fields.get("incident_id", "")
            try:
                with metrics.MATCH_SECONDS.time():
                    result, db = await self._match_on(db, incident_id, now)
                metrics.MATCH_FANOUT.observe(result.enqueued)
            except (asyncpg.DataError, ValueError):
                log.error("dropping malformed stream entry %s: %r", entry_id, fields)
            done.append(entry_id)
        await consumer.ack(done)

    async def _match_on(self, db: asyncpg.Pool, incident_id: str, now: dt.datetime
                        ) -> tuple[MatchResult, asyncpg.Pool]:
        """Matched reading from ``db``; if that is the replica and it fails (down, or a
        query cancelled by replay), from the primary (enqueueing twice is harmless: the
        dedup set). The pool the rest of the batch reads from."""
        try:
            return await self.match_incident(incident_id, now, db), db
        except REPLICA_FAILURES as exc:
            if self.reads is None or db is self.pool:
                raise
            self.reads.unavailable(exc)
            return await self.match_incident(incident_id, now, self.pool), self.pool
