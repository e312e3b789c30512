"""Publishes incidents whose inline publish didn't happen (Redis down, process died).

Rows younger than a grace period are left to the web process that wrote them; older
ones are locked (SKIP LOCKED, so several relays share the work), XADDed and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.store.db import STORE_UNAVAILABLE
from server.store.publish import xadd_incident

log = logging.getLogger(__name__)

GRACE_S = 2.0
_TRANSIENT: tuple[type[BaseException], ...] = (RedisError, *STORE_UNAVAILABLE)


async def relay_once(pool: asyncpg.Pool, redis: aioredis.Redis, *, limit: int = 500,
                     grace_s: float = GRACE_S) -> int:
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT id, incident_id FROM outbox
                WHERE created_at < now() - make_interval(secs => $1)
                ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED""",
            grace_s, limit,
        )
        for row in rows:
            await xadd_incident(redis, str(row["incident_id"]))
        if rows:
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])",
                               [r["id"] for r in rows])
    if rows:
        log.info("outbox relay published %d incidents", len(rows))
    return len(rows)


async def run_relay(pool: asyncpg.Pool, redis: aioredis.Redis, stop: asyncio.Event,
                    *, interval_s: float = 1.0) -> None:
    while not stop.is_set():
        try:
            while await relay_once(pool, redis):
                pass
        except _TRANSIENT as exc:
            log.warning("outbox relay: %s; will retry", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
