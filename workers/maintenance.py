"""Periodic housekeeping, run by the relay process: expire review items past the
staleness window, forget exact incident locations after the retention period, and
delete expired console sessions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import asyncpg

from server.store import accounts, housekeeping, review
from server.store.db import STORE_UNAVAILABLE

log = logging.getLogger(__name__)


async def maintain_once(pool: asyncpg.Pool, retention: dt.timedelta) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = await review.expire(pool, now)
    purged = await housekeeping.purge_exact_locations(pool, retention, now)
    sessions = await accounts.purge_expired_sessions(pool, now)
    if expired or purged or sessions:
        log.info("maintenance: %d review items expired, %d exact locations purged, "
                 "%d expired sessions deleted", expired, purged, sessions)


async def run_maintenance(pool: asyncpg.Pool, retention: dt.timedelta, stop: asyncio.Event,
                          *, interval_s: float = 30.0) -> None:
    while not stop.is_set():
        try:
            await maintain_once(pool, retention)
        except STORE_UNAVAILABLE as exc:
            log.warning("maintenance: store unavailable: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
