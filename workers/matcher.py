"""The matcher: incidents in, per-platform pushes out.

For each incident on ``geopush:incidents`` it finds the devices whose zones intersect
the incident's public geometry (PostGIS, GiST-indexed) or whose current position is
near it ("near me", Redis GEO), applies their category preferences and quiet hours,
and enqueues one push per device. For an alerted incident that ended (cleared,
cancelled) it enqueues the update that replaces the alert on the phones it reached.

The match streams: it is read from a server-side cursor a page at a time and each
page is enqueued as soon as it is read (``workers.fanout``), so the first pushes
leave while the rest is still being read, whatever the fan-out's size. Past the first
pages a large fan-out is handed out as work items that every matcher takes a share
of. Enqueueing is a Lua script per push shard that checks the event's dedup set, the
device's hourly limit and XADDs in one atomic step, so a matcher that dies half-way
and is replayed never pushes a device twice and never skips one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from redis.exceptions import ResponseError

from server import keys, metrics
from server.domain.categories import RESPONDER_ONLY
from server.domain.policy import ALERT
from server.domain.quiet import allowed_now
from server.domain.severity import MODERATE
from server.store import aeds, matching, positions, publish
from server.store.audience import (
    ALERT_LIFETIME,
    DEFAULT_LOCATION_TTL,
    NEIGHBOUR,
    RESPONDER,
    Audience,
    Target,
    find_audience,
    hourly_limit,
    near_positions,
)
from server.store.redisclient import NO_WAIT, RedisClient, ReplicaWait
from server.store.replica import REPLICA_FAILURES, ReplicaReads
from workers.fanout import Device, Enqueuer, Fanout, FanoutLimits, decode_item
from workers.push import Push
from workers.streams import TRANSIENT, Entry, StreamConsumer, sleep_unless

log = logging.getLogger(__name__)

# Alerts still in flight when the incident ended are recorded as delivered shortly
# after (a send's timeout, then the sender's recording); a second pass this much later
# gives those devices their update too. The dedup set keeps it to one per device.
UPDATE_SECOND_PASS = dt.timedelta(seconds=30)
ENDED = ("cleared", "cancelled")


@dataclass(frozen=True)
class MatchResult:
    incident_id: str
    candidates: int      # devices matched (each once), before quiet hours
    enqueued: int        # pushes this matcher enqueued itself
    items: int = 0       # pages of it handed out as work items


Rows = AsyncGenerator[list[asyncpg.Record], None]
Keep = Callable[[asyncpg.Record], bool]


class Matcher:
    def __init__(self, pool: asyncpg.Pool, redis: RedisClient, *,
                 device_pushes_per_hour: int = 10,
                 location_ttl: dt.timedelta = DEFAULT_LOCATION_TTL,
                 shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS,
                 limits: FanoutLimits | None = None,
                 replica_wait: ReplicaWait = NO_WAIT,
                 reads: ReplicaReads | None = None) -> None:
        # Writes go to ``pool``, the primary; a match reads from the pool it is given
        # (``reads``: a streaming replica once it is as fresh as the primary was when
        # the batch was read, else the primary).
        self.pool = pool
        self.redis = redis
        self.reads = reads
        # Pushes enqueued are on the Redis replicas before the incident is acknowledged.
        self.replica_wait = replica_wait
        self.shards = shards
        self.limits = limits or FanoutLimits()
        self.near_me = positions.near_me(location_ttl.total_seconds())
        # A neighbourhood having a bad night must not turn a phone into a pager: past
        # this many pushes an hour a device gets only the most severe categories and
        # CPR calls (0 switches the limit off).
        self.device_pushes_per_hour = device_pushes_per_hour
        self.enqueuer = Enqueuer(redis, shards, replica_wait)

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
        category = incident["category"]
        kind = RESPONDER if category in RESPONDER_ONLY and not manual else NEIGHBOUR
        lat, lon = incident["lat"], incident["lon"]
        limits = self.limits
        aeds_json = ""
        pages: Rows
        if manual:
            # The drawn area is public by nature: matched as drawn (matching.py).
            # Phones whose current position is in it ("near me") are reached too.
            near = await near_positions(db, self.redis, self.near_me,
                                        incident["area"], (lat, lon))
            pages = matching.area_neighbour_pages(db, incident["area"], near,
                                                  first=limits.first_page, page=limits.page)
        elif kind == RESPONDER:
            # A handful of responders near a cardiac arrest, found in Redis: one page.
            # They get the exact point (they have to find the patient) and the nearest
            # AEDs.
            audience = await find_audience(db, self.redis, self._target(incident))
            lat, lon = incident["exact_lat"], incident["exact_lon"]
            if audience.devices:
                aeds_json = json.dumps(await aeds.nearest(db, lat, lon),
                                       separators=(",", ":"))
            pages = _one_page(audience.devices)
        else:
            near = await near_positions(db, self.redis, self.near_me,
                                        incident["geom"], (lat, lon))
            pages = matching.neighbour_pages(db, incident["geom"], category,
                                             (lat, lon), near, first=limits.first_page,
                                             page=limits.page)
        # Two agencies' reports of one event share one dedup set (matching.same_event).
        event_id = None if manual else await matching.same_event(
            db, category=category, agency_id=incident["agency_id"],
            occurred_at=incident["occurred_at"], received_at=incident["received_at"],
            incident_id=incident["id"], geometry=incident["geom"],
            public_point=(incident["lat"], incident["lon"]))
        # An agency's own alert is never held back by the hourly limit, and quiet hours
        # hold back only a moderate one.
        limit = 0 if manual else hourly_limit(Audience(kind, []), category,
                                               self.device_pushes_per_hour)
        keep = None if manual and severity != MODERATE else _awake(category, now)
        # An area's public area: what neighbours were matched against, so the push says
        # all that being alerted tells.
        bbox = ((incident["west"], incident["south"], incident["east"], incident["north"])
                if incident["is_area"] and kind != RESPONDER else None)
        fanout = Fanout.of(Push(
            incident_id=str(incident["id"]), device_id="", platform="", token="", locale="",
            category=category, public_location=incident["public_location"] or "",
            lat=lat, lon=lon, occurred_at=incident["occurred_at"].timestamp(),
            received_at=incident["received_at"].timestamp(), expires_at=expires.timestamp(),
            title=incident["title_override"] or "", body=incident["body_override"] or "",
            audience=kind, aeds=aeds_json, severity=severity, bbox=bbox,
        ), str(event_id or incident["id"]), limit)
        result = await self._fan_out(fanout, pages, keep)
        log.info("matched incident=%s category=%s candidates=%d enqueued=%d items=%d",
                 incident_id, category, result.candidates, result.enqueued, result.items)
        return result

    @staticmethod
    def _target(incident: asyncpg.Record) -> Target:
        return Target(
            agency_id=incident["agency_id"], category=incident["category"],
            geometry=incident["geom"], exact_lat=incident["exact_lat"],
            exact_lon=incident["exact_lon"], public_lat=incident["lat"],
            public_lon=incident["lon"], location_kind=incident["location_kind"],
            responder_radius_m=incident["responder_radius_m"])

    async def _fan_out(self, fanout: Fanout, pages: Rows, keep: Keep | None) -> MatchResult:
        """Each page enqueued as soon as it is read: the first ``split_after`` devices
        by this matcher, every later page as a work item for any matcher. A device
        read twice (two zones; a zone and its position) counts once."""
        seen: set[str] = set()
        enqueued = items = 0
        own = self.limits.split_after
        async with contextlib.aclosing(pages):
            async for rows in pages:
                devices: list[Device] = []
                for row in rows:
                    device_id = str(row[0])
                    if device_id in seen:
                        continue
                    seen.add(device_id)
                    if keep is None or keep(row):
                        devices.append((device_id, row[1], row[2], row[3]))
                if own > 0:
                    mine, devices = devices[:own], devices[own:]
                    own -= len(mine)
                    enqueued += (await self.enqueuer.enqueue(fanout, mine))[0]
                if devices:
                    await self.enqueuer.post(fanout, devices)
                    items += 1
        return MatchResult(fanout.incident_id, len(seen), enqueued, items)

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
        ended_at = max(incident["revision"], incident["occurred_at"])
        fanout = Fanout.of(Push(
            incident_id=incident_id, device_id="", platform="", token="", locale="",
            category=incident["category"], public_location=incident["public_location"] or "",
            lat=incident["lat"], lon=incident["lon"],
            occurred_at=incident["occurred_at"].timestamp(),
            received_at=incident["received_at"].timestamp(),
            expires_at=expires.timestamp(), kind="update", status=incident["status"],
            ended_at=ended_at.timestamp(), severity=incident["severity"] or "",
        ), f"update:{incident_id}", 0)
        result = await self._fan_out(fanout, matching.alerted_pages(
            db, incident["id"], first=self.limits.first_page, page=self.limits.page),
            None)
        log.info("updates incident=%s status=%s alerted=%d enqueued=%d items=%d",
                 incident_id, incident["status"], result.candidates, result.enqueued,
                 result.items)
        return result

    async def handle(self, consumer: StreamConsumer, entries: list[Entry]) -> None:
        """Match each incident entry, then acknowledge them (after their work items,
        if any, are on the work stream)."""
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

    async def handle_items(self, consumer: StreamConsumer, entries: list[Entry]) -> None:
        """Enqueue each work item's devices, then acknowledge it."""
        for entry_id, fields in entries:
            try:
                item = decode_item(fields)
            except (KeyError, ValueError):
                log.error("dropping malformed work item %s", entry_id)
            else:
                if time.time() < item.fanout.expires_at:
                    enqueued, _ = await self.enqueuer.enqueue(item.fanout, item.devices)
                    log.debug("work item incident=%s devices=%d enqueued=%d",
                              item.fanout.incident_id, len(item.devices), enqueued)
                metrics.FANOUT_ITEMS.labels("done").inc()
            await consumer.ack([entry_id])

    async def run(self, incidents: StreamConsumer, work: StreamConsumer,
                  stop: asyncio.Event) -> None:
        """The matcher's loop until ``stop``: new incidents first, always; a work item
        of a large fan-out only when no incident waits and the push streams have room
        (``FanoutLimits.backlog``); otherwise wait for an incident, ``incidents``'
        block time at most, and look again."""
        await incidents.setup()
        await work.setup()
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._step(incidents, work)
                backoff = 0.5
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis lost a stream or its group (restarted without persistence): make
                # them again; the outbox relay republishes lost incidents.
                log.warning("a matcher stream's group is gone; recreating it")
                await sleep_unless(stop, backoff)
                with contextlib.suppress(*TRANSIENT):
                    await incidents.setup()
                    await work.setup()
            except TRANSIENT as exc:
                # A PostgreSQL or Redis blip: what was in hand stays pending and is
                # claimed again once idle.
                log.warning("matching failed: %s; retrying in %.1fs", exc, backoff)
                await sleep_unless(stop, backoff)
                backoff = min(backoff * 2, 10)

    async def _step(self, incidents: StreamConsumer, work: StreamConsumer) -> None:
        entries = await incidents.read(block=False)
        if entries:
            await self._handled(incidents, entries, self.handle)
            return
        if await self.enqueuer.backlog() < self.limits.backlog:
            items = await work.read(1, block=False)
            if items:
                await self._handled(work, items, self.handle_items)
                return
        entries = await incidents.read()
        if entries:
            await self._handled(incidents, entries, self.handle)

    @staticmethod
    async def _handled(consumer: StreamConsumer, entries: list[Entry],
                       handle: Callable[[StreamConsumer, list[Entry]], Awaitable[None]],
                       ) -> None:
        try:
            await handle(consumer, entries)
        except TRANSIENT:
            consumer.release([eid for eid, _ in entries])
            raise


def _awake(category: str, now: dt.datetime) -> Keep:
    """Whether a device's row is outside its quiet hours (or the category always comes
    through); a device without quiet hours costs no time zone lookup."""
    def keep(row: asyncpg.Record) -> bool:
        start = row[5]
        return start is None or allowed_now(category, now, row[4], start, row[6])
    return keep


async def _one_page(rows: list[asyncpg.Record]) -> Rows:
    if rows:
        yield rows
