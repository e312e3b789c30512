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
from redis.typing import EncodableT

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
from server.store.redisclient import (
    NO_WAIT,
    RedisClient,
    ReplicaWait,
    eval_many,
)
from workers.push import Push
from workers.streams import Entry, StreamConsumer

log = logging.getLogger(__name__)

# One call per (event, shard) and group of devices: every key it touches is in the
# shard's hash slot (server/keys.py), so it runs on a Redis Cluster as on one Redis.
# KEYS: the event's dedup set (of this shard), the shard's APNs and FCM push streams,
# then per device its hourly counter and its index of dedup sets (what its erasure
# must clean). ARGV: dedup TTL, stream MAXLEN, hourly limit (0: none), then per device
# its id, the index in KEYS of its platform's stream, and the push (the entry's field).
# A device already in the dedup set is skipped before its counter is touched, so a
# replayed call neither pushes twice nor counts twice. Returns {enqueued, limited}.
_ENQUEUE = """
local ttl = ARGV[1]
local maxlen = ARGV[2]
local limit = tonumber(ARGV[3])
local enqueued, limited = 0, 0
local k = 4
for i = 4, #ARGV, 3 do
  local device = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], device) == 0 then
    local over = false
    if limit > 0 then
      local n = redis.call('INCR', KEYS[k])
      if n == 1 then
        redis.call('EXPIRE', KEYS[k], 3600)
      end
      over = n > limit
    end
    if over then
      limited = limited + 1
    else
      redis.call('SADD', KEYS[1], device)
      redis.call('SADD', KEYS[k + 1], KEYS[1])
      redis.call('EXPIRE', KEYS[k + 1], ttl)
      redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], 'MAXLEN', '~', maxlen, '*',
                 'device_id', device, 'push', ARGV[i + 2])
      enqueued = enqueued + 1
    end
  end
  k = k + 2
end
if enqueued > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {enqueued, limited}
"""
_STREAM_INDEX = {"apns": "2", "fcm": "3"}

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
    def __init__(self, pool: asyncpg.Pool, redis: RedisClient, *,
                 device_pushes_per_hour: int = 10,
                 location_ttl: dt.timedelta = DEFAULT_LOCATION_TTL,
                 replica_wait: ReplicaWait = NO_WAIT,
                 shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS) -> None:
        self.pool = pool
        self.redis = redis
        # Pushes enqueued are on the replicas before the incident is acknowledged.
        self.replica_wait = replica_wait
        self.shards = shards
        self.near_me = positions.near_me(location_ttl.total_seconds())
        # A neighbourhood having a bad night must not turn a phone into a pager: past
        # this many pushes an hour a device gets only the most severe categories and
        # CPR calls (0 switches the limit off).
        self.device_pushes_per_hour = device_pushes_per_hour
        self._enqueue = redis.register_script(_ENQUEUE)

    async def match_incident(self, incident_id: str, now: dt.datetime) -> MatchResult:
        incident = await matching.incident(self.pool, incident_id)
        if incident is None or not incident["actual"]:
            return MatchResult(incident_id, 0, 0)
        expires = incident["expires_at"] or incident["occurred_at"] + ALERT_LIFETIME
        if now >= expires:
            # Past the alert's lifetime: neither the alert nor an update is worth sending.
            return MatchResult(incident_id, 0, 0)
        if incident["status"] in ENDED:
            return await self._send_updates(incident, expires)
        if incident["decision"] != ALERT or incident["status"] != "active":
            # Re-decided since it was published: nothing to do.
            return MatchResult(incident_id, 0, 0)
        manual = incident["source"] == "manual"
        severity = incident["severity"] or ""
        if manual:
            # The drawn area is public by nature: matched as drawn (matching.py).
            # Phones whose current position is in it ("near me") are reached too.
            audience = Audience(NEIGHBOUR, await matching.area_neighbours(
                self.pool, incident["area"],
                await self._near_area(incident["area"], incident["lat"], incident["lon"])))
        else:
            audience = await find_audience(self.pool, self.redis, Target(
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
                aeds_json = json.dumps(await aeds.nearest(self.pool, lat, lon),
                                       separators=(",", ":"))
        event_id = await matching.same_event(
            self.pool, category=incident["category"], agency_id=incident["agency_id"],
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
        enqueued, limited = await self._enqueue_all(pushes, dedup_on, limit)
        metrics.MATCH_RATE_LIMITED.inc(limited)
        log.info("matched incident=%s category=%s candidates=%d enqueued=%d rate_limited=%d",
                 incident_id, incident["category"], len(rows), enqueued, limited)
        return MatchResult(incident_id, len(rows), enqueued)

    async def _near_area(self, area: str, lat: float, lon: float) -> list[positions.Nearby]:
        """Near-me positions that may be within their radius of a manual alert's area."""
        return await near_positions(self.pool, self.redis, self.near_me, area, (lat, lon))

    async def _enqueue_all(self, pushes: list[Push], event_id: str, limit: int
                           ) -> tuple[int, int]:
        """Each push enqueued unless its device is in the event's dedup set already,
        or over ``limit`` pushes this hour (0: no limit): (enqueued, limited)."""
        return await self._enqueue_encoded(
            [(p.device_id, p.platform, p.to_fields()["push"]) for p in pushes], event_id, limit)

    async def _enqueue_encoded(self, pushes: list[tuple[str, str, str]], event_id: str,
                               limit: int) -> tuple[int, int]:
        """``pushes`` as (device id, platform, encoded push), grouped by the devices'
        shards: one script call per shard, all in one round trip (one per master of a
        cluster), on the replicas before this returns when ``replica_wait`` asks it."""
        by_shard: dict[int, tuple[list[str], list[EncodableT]]] = {}
        shards = self.shards
        for device_id, platform, encoded in pushes:
            shard = keys.device_shard(device_id, shards)
            group = by_shard.get(shard)
            if group is None:
                group = by_shard[shard] = (
                    [keys.pushed(event_id, shard), keys.push_stream("apns", shard),
                     keys.push_stream("fcm", shard)],
                    [keys.PUSHED_TTL_S, STREAM_MAXLEN, limit])
            group[0].append(keys.device_rate(device_id, shard))
            group[0].append(keys.device_events(device_id, shard))
            group[1].extend((device_id, _STREAM_INDEX[platform], encoded))
        if not by_shard:
            return 0, 0
        results = await eval_many(self.redis, self._enqueue, list(by_shard.values()),
                                  self.replica_wait)
        return (sum(int(r[0]) for r in results), sum(int(r[1]) for r in results))

    async def _send_updates(self, incident: asyncpg.Record, expires: dt.datetime
                            ) -> MatchResult:
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
        rows = await matching.alerted(self.pool, incident["id"])
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
        enqueued, _ = await self._enqueue_all(pushes, f"update:{incident_id}", 0)
        log.info("updates incident=%s status=%s alerted=%d enqueued=%d", incident_id,
                 incident["status"], len(rows), enqueued)
        return MatchResult(incident_id, len(rows), enqueued)

    async def handle(self, consumer: StreamConsumer, entries: list[Entry]) -> None:
        done: list[str] = []
        now = dt.datetime.now(dt.UTC)
        for entry_id, fields in entries:
            incident_id = fields.get("incident_id", "")
            try:
                with metrics.MATCH_SECONDS.time():
                    result = await self.match_incident(incident_id, now)
                metrics.MATCH_FANOUT.observe(result.enqueued)
            except (asyncpg.DataError, ValueError):
                log.error("dropping malformed stream entry %s: %r", entry_id, fields)
            done.append(entry_id)
        await consumer.ack(done)
