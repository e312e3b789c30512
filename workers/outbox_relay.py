"""Publishes incidents whose inline publish didn't happen (Redis down, process died).

Rows younger than a grace period are left to the web process that wrote them; older
ones are locked (SKIP LOCKED, so several relays share the work), XADDed and deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from server.store.db import STORE_UNAVAILABLE
from server.store.publish import relay_outbox
from server.store.redisclient import NO_WAIT, REDIS_UNAVAILABLE, RedisClient, ReplicaWait

log = logging.getLogger(__name__)

GRACE_S = 2.0
_TRANSIENT: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, *STORE_UNAVAILABLE)


async def relay_once(pool: asyncpg.Pool, redis: RedisClient, *, limit: int = 500,
                     grace_s: float = GRACE_S, wait: ReplicaWait = NO_WAIT) -> int:
    published = await relay_outbox(pool, redis, limit=limit, grace_s=grace_s, wait=wait)
    if published:
        log.info("outbox relay published %d incidents", published)
    return published


async def run_relay(pool: asyncpg.Pool, redis: RedisClient, stop: asyncio.Event,
                    *, interval_s: float = 1.0, wait: ReplicaWait = NO_WAIT) -> None:
    while not stop.is_set():
        try:
            while await relay_once(pool, redis, wait=wait):
                pass
        except _TRANSIENT as exc:
            log.warning("outbox relay: %s; will retry", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
