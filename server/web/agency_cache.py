"""Agencies cached in the web process for a few seconds.

Every webhook needs its agency (secrets, call-type map, policy); reading it from
PostgreSQL each time was a tenth of the ingest cost. Changes made through the admin
API in this process apply at once; other processes see them within ``ttl`` seconds.
A signature that fails against a cached agency is checked once more against a fresh
read, so a just-rotated secret is never refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg

from server.store.agencies import Agency, get_agency


class AgencyCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self._pool = pool
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, tuple[float, Agency | None]] = {}

    async def get(self, agency_id: str, *, fresh: bool = False) -> tuple[Agency | None, bool]:
        """The agency (None if unknown) and whether it came from the cache."""
        now = self._clock()
        hit = self._entries.get(agency_id)
        if hit is not None and not fresh and now - hit[0] < self._ttl:
            return hit[1], True
        agency = await get_agency(self._pool, agency_id)
        if len(self._entries) >= self._max:
            self._entries.clear()  # unknown ids can't grow it without bound
        self._entries[agency_id] = (now, agency)
        return agency, False

    def invalidate(self, agency_id: str) -> None:
        self._entries.pop(agency_id, None)
