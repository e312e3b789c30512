"""Agencies cached in the web process for a few seconds.

Every webhook needs its agency (secrets, call-type map, policy); reading it from
PostgreSQL each time was a tenth of the ingest cost. Changes made through the admin
API in this process apply at once; other processes see them within ``ttl`` seconds.
A signature that fails against a cached agency is checked once more against a fresh
read, so a just-rotated secret is never refused.

Forged webhooks must not cost a query each: an id is looked up only when it is among
the agency ids (read all at once, at most every ``ttl`` seconds), so unknown ids, however
many, cost nothing; and a failed signature re-reads a known agency at most once every
``refresh_interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from server.store.agencies import Agency, agency_ids, get_agency


class AgencyCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 5.0, refresh_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._ttl = ttl
        self._refresh_interval = refresh_interval
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, tuple[float, Agency | None]] = {}
        self._ids: frozenset[str] = frozenset()
        self._ids_read_at: float | None = None

    async def get(self, agency_id: str, *, fresh: bool = False) -> tuple[Agency | None, bool]:
        """The agency (None if unknown) and whether it came from the cache. ``fresh``
        asks for a new read, which is made at most once every ``refresh_interval``."""
        now = self._clock()
        hit = self._entries.get(agency_id)
        if hit is not None:
            age = now - hit[0]
            if age < (self._refresh_interval if fresh else self._ttl):
                return hit[1], True
        agency = await get_agency(self._pool, agency_id) if await self._may_exist(
            agency_id, now) else None
        if len(self._entries) >= self._max:
            self._entries.clear()  # unknown ids can't grow it without bound
        self._entries[agency_id] = (now, agency)
        return agency, False

    async def _may_exist(self, agency_id: str, now: float) -> bool:
        if self._ids_read_at is None or now - self._ids_read_at >= self._ttl:
            self._ids = await agency_ids(self._pool)
            self._ids_read_at = now
        return agency_id in self._ids

    def invalidate(self, agency_id: str) -> None:
        self._entries.pop(agency_id, None)
        self._ids_read_at = None  # it may be new: read the ids again
