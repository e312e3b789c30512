"""Handing stored incidents to the matcher through the Redis stream.

The outbox row written with the incident is deleted only after XADD succeeded (in
batches, by ``OutboxCleaner``); the outbox relay (workers/outbox_relay.py) republishes
whatever is left, so an incident answered with 202 reaches the matcher even when Redis
was down at the time.
Publishing twice is harmless: the matcher's per-device dedup absorbs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import asyncpg

from server import keys
from server.store.redisclient import NO_WAIT, REDIS_UNAVAILABLE, RedisClient, ReplicaWait, write_all

log = logging.getLogger(__name__)

# Bound the stream's memory; far above any backlog a healthy matcher leaves.
STREAM_MAXLEN = 1_000_000


async def xadd_incidents(redis: RedisClient, incident_ids: list[str],
                         wait: ReplicaWait = NO_WAIT) -> None:
    """On the stream, in one round trip, and on ``wait.replicas`` replicas when asked
    (before the caller deletes the outbox rows). Raises if any XADD failed."""
    stream = keys.INCIDENTS_STREAM
    replies = await write_all(redis, [
        (stream, ("XADD", stream, "MAXLEN", "~", STREAM_MAXLEN, "*", "incident_id", i))
        for i in incident_ids], wait)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


class OutboxCleaner:
    """Deletes the outbox rows of published incidents in batches (every ``interval_s``)
    instead of one DELETE per webhook. A row not yet deleted is harmless: the relay
    only takes rows older than its grace period, and the matcher dedups a republish."""

    def __init__(self, pool: asyncpg.Pool, interval_s: float = 0.05,
                 replica_wait: ReplicaWait = NO_WAIT) -> None:
        self._pool = pool
        # What publishing must wait for before a row may go (ReplicaWait).
        self.replica_wait = replica_wait
        self._interval = interval_s
        self._published: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def published(self, incident_id: str) -> None:
        self._published.append(incident_id)

    async def flush(self) -> None:
        batch, self._published = self._published, []
        if not batch:
            return
        try:
            await self._pool.execute(
                # Not rows due later (the matcher's delayed second pass of updates).
                "DELETE FROM outbox WHERE incident_id = ANY($1::uuid[]) AND created_at <= now()",
                batch)
        except (asyncpg.PostgresError, OSError) as exc:
            # The relay will publish them once more; the matcher dedups.
            log.warning("could not clear %d outbox rows: %s", len(batch), exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


async def publish_incident(redis: RedisClient, cleaner: OutboxCleaner,
                           incident_id: str) -> bool:
    """True when the incident is on the stream (its outbox row goes with the next
    batch); False when Redis is unreachable and the relay will publish it."""
    try:
        await xadd_incidents(redis, [incident_id], cleaner.replica_wait)
    except REDIS_UNAVAILABLE as exc:
        log.warning("redis unavailable, incident %s left to the outbox relay: %s",
                    incident_id, exc)
        return False
    cleaner.published(incident_id)
    return True


async def relay_outbox(pool: asyncpg.Pool, redis: RedisClient, *, limit: int,
                       grace_s: float, wait: ReplicaWait = NO_WAIT) -> int:
    """Outbox rows older than ``grace_s`` (younger ones are the writer's own business),
    locked so that several relays share the work, XADDed, then deleted, in one
    transaction: a row is deleted only once its incident is on the stream."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT id, incident_id FROM outbox
                WHERE created_at < now() - make_interval(secs => $1)
                ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
            grace_s, limit,
        )
        if rows:
            await xadd_incidents(redis, [str(row["incident_id"]) for row in rows], wait)
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])",
                               [r["id"] for r in rows])
    return len(rows)


async def republish_later(pool: asyncpg.Pool, incident_id: object, delay: dt.timedelta) -> None:
    """An outbox row due ``delay`` from now: the relay publishes the incident again then."""
    await pool.execute(
        "INSERT INTO outbox (incident_id, created_at) VALUES ($1, now() + $2::interval)",
        incident_id, delay)
