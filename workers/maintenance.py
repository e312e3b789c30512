"""Periodic housekeeping, run by the relay process: expire review items past the
staleness window, forget exact incident locations after the retention period and
responders' positions 15 minutes after their last report, and delete expired console
sessions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.store import accounts, housekeeping, positions, review
from server.store.db import STORE_UNAVAILABLE

log = logging.getLogger(__name__)


async def maintain_once(pool: asyncpg.Pool, retention: dt.timedelta,
                        redis: aioredis.Redis | None = None) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = await review.expire(pool, now)
    purged = await housekeeping.purge_exact_locations(pool, retention, now)
    sessions = await accounts.purge_expired_sessions(pool, now)
    # Positions are also dropped when a cardiac arrest looks for responders; this
    # forgets them on time when none happens.
    forgotten = (await positions.RESPONDERS.forget_stale(redis, now.timestamp())
                 if redis else 0)
    if expired or purged or sessions or forgotten:
        log.info("maintenance: %d review items expired, %d exact locations purged, "
                 "%d expired sessions deleted, %d responder positions forgotten",
                 expired, purged, sessions, forgotten)


async def run_maintenance(pool: asyncpg.Pool, retention: dt.timedelta, stop: asyncio.Event,
                          *, redis: aioredis.Redis | None = None,
                          interval_s: float = 30.0) -> None:
    while not stop.is_set():
        try:
            await maintain_once(pool, retention, redis)
        except STORE_UNAVAILABLE as exc:
            log.warning("maintenance: store unavailable: %s", exc)
        except (RedisError, OSError) as exc:
            log.warning("maintenance: redis unavailable: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
