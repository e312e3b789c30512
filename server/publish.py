"""Handing stored incidents to the matcher through the Redis stream.

The outbox row written with the incident is deleted only after XADD succeeded; the
outbox relay (workers/outbox_relay.py) republishes whatever is left, so an incident
answered with 202 reaches the matcher even when Redis was down at the time.
Publishing twice is harmless: the matcher's per-device dedup absorbs it.
"""

from __future__ import annotations

import logging

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server import keys

log = logging.getLogger(__name__)

# Bound the stream's memory; far above any backlog a healthy matcher leaves.
STREAM_MAXLEN = 1_000_000


async def xadd_incident(redis: aioredis.Redis, incident_id: str) -> None:
    await redis.xadd(
        keys.INCIDENTS_STREAM, {"incident_id": incident_id},
        maxlen=STREAM_MAXLEN, approximate=True,
    )


async def publish_incident(pool: asyncpg.Pool, redis: aioredis.Redis, incident_id: str) -> bool:
    """True when the incident is on the stream and its outbox row is gone."""
    try:
        await xadd_incident(redis, incident_id)
    except (RedisError, OSError) as exc:
        log.warning("redis unavailable, incident %s left to the outbox relay: %s",
                    incident_id, exc)
        return False
    try:
        await pool.execute("DELETE FROM outbox WHERE incident_id = $1", incident_id)
    except (asyncpg.PostgresError, OSError) as exc:
        # The relay will publish it once more; the matcher dedups.
        log.warning("could not clear outbox row of incident %s: %s", incident_id, exc)
    return True
