"""Periodic housekeeping, run by the relay process: expire review items past the
staleness window and forget exact incident locations after the retention period."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import asyncpg

from server.store import housekeeping, review
from server.store.db import STORE_UNAVAILABLE

log = logging.getLogger(__name__)


async def maintain_once(pool: asyncpg.Pool, retention: dt.timedelta) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = await review.expire(pool, now)
    purged = await housekeeping.purge_exact_locations(pool, retention, now)
    if expired or purged:
        log.info("maintenance: %d review items expired, %d exact locations purged",
                 expired, purged)


async def run_maintenance(pool: asyncpg.Pool, retention: dt.timedelta, stop: asyncio.Event,
                          *, interval_s: float = 30.0) -> None:
    while not stop.is_set():
        try:
            await maintain_once(pool, retention)
        except STORE_UNAVAILABLE as exc:
            log.warning("maintenance: store unavailable: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
