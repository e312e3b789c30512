"""Periodic housekeeping, run by the relay process: expire review items past the
staleness window, forget exact incident locations after their retention period and
responders' positions 15 minutes after their last report, delete expired console
sessions and the tags of devices erased a day ago, roll finished days up into the
transparency report's counts, then delete delivery records and incidents past their
retention (in batches, each its own short transaction, so the senders writing
deliveries never wait on a long lock)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from server import metrics
from server.settings import Settings
from server.store import accounts, housekeeping, positions, review, transparency
from server.store.db import STORE_UNAVAILABLE
from server.store.redisclient import REDIS_UNAVAILABLE, RedisClient
from workers.legacy_pushes import adopt_legacy_pushes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retention:
    exact_location: dt.timedelta = dt.timedelta(hours=24)
    deliveries: dt.timedelta = dt.timedelta(days=30)
    incidents: dt.timedelta = dt.timedelta(days=365)
    erased_device_tags: dt.timedelta = dt.timedelta(days=1)


DELETE_BATCH = 5_000
DEFAULT_SHARDS = Settings.push_stream_shards


async def delete_in_batches(delete: Callable[[int], Awaitable[int]], table: str,
                            batch: int = DELETE_BATCH) -> int:
    """Call ``delete(batch)`` until it deletes fewer than a batch."""
    total = 0
    while True:
        deleted = await delete(batch)
        total += deleted
        metrics.RETENTION_DELETED.labels(table).inc(deleted)
        if deleted < batch:
            return total


async def apply_retention(pool: asyncpg.Pool, retention: Retention, now: dt.datetime, *,
                          batch: int = DELETE_BATCH) -> tuple[int, int]:
    """(deliveries, incidents) deleted. The transparency counts are rolled up first: a
    day's counts are kept before any row they count can go."""
    await transparency.roll_up(pool, now)
    deliveries = await delete_in_batches(functools.partial(
        transparency.delete_old_deliveries, pool, now - retention.deliveries), "deliveries",
        batch)
    incidents = await delete_in_batches(functools.partial(
        transparency.delete_old_incidents, pool, now - retention.incidents), "incidents", batch)
    return deliveries, incidents


async def maintain_once(pool: asyncpg.Pool, retention: Retention,
                        redis: RedisClient | None = None, *,
                        push_stream_shards: int = DEFAULT_SHARDS) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = await review.expire(pool, now)
    purged = await housekeeping.purge_exact_locations(pool, retention.exact_location, now)
    sessions = await accounts.purge_expired_sessions(pool, now)
    await housekeeping.forget_erased_devices(pool, retention.erased_device_tags, now)
    # Positions are also dropped when a cardiac arrest looks for responders; this
    # forgets them on time when none happens.
    if redis:
        adopted = await positions.adopt_legacy_keys(redis)
        if adopted:
            log.info("maintenance: %d positions moved from the keys of before the hash "
                     "tags", adopted)
        await adopt_legacy_pushes(redis, push_stream_shards)
    forgotten = (await positions.RESPONDERS.forget_stale(redis, now.timestamp())
                 if redis else 0)
    deliveries, incidents = await apply_retention(pool, retention, now)
    if expired or purged or sessions or forgotten or deliveries or incidents:
        log.info("maintenance: %d review items expired, %d exact locations purged, "
                 "%d expired sessions deleted, %d responder positions forgotten, "
                 "%d delivery records and %d incidents past retention deleted",
                 expired, purged, sessions, forgotten, deliveries, incidents)


async def run_maintenance(pool: asyncpg.Pool, retention: Retention, stop: asyncio.Event,
                          *, redis: RedisClient | None = None,
                          push_stream_shards: int = DEFAULT_SHARDS,
                          interval_s: float = 30.0) -> None:
    while not stop.is_set():
        try:
            await maintain_once(pool, retention, redis,
                                push_stream_shards=push_stream_shards)
        except STORE_UNAVAILABLE as exc:
            metrics.MAINTENANCE_FAILURES.inc()
            log.warning("maintenance: store unavailable: %s", exc)
        except REDIS_UNAVAILABLE as exc:
            log.warning("maintenance: redis unavailable: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
