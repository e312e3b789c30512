"""Housekeeping the relay process runs: forgetting exact incident locations, and the
tags of erased devices once no push of theirs can still be recorded."""

from __future__ import annotations

import datetime as dt

import asyncpg


async def purge_exact_locations(pool: asyncpg.Pool, older_than: dt.timedelta,
                                now: dt.datetime) -> int:
    """Replace exact geometries by the public ones (the rounded point, an area's box on
    the public grid) once responders and editors can no longer need them. A revision
    arriving later brings an exact geometry back and clears exact_purged_at (see
    store.incidents), so it is purged in its turn, ``older_than`` after it arrived."""
    status = await pool.execute(
        """UPDATE incidents SET geom = public_geom, exact_purged_at = $2
            WHERE exact_purged_at IS NULL AND received_at < $1""",
        now - older_than, now,
    )
    return int(status.split()[-1])


async def forget_erased_devices(pool: asyncpg.Pool, older_than: dt.timedelta,
                                now: dt.datetime) -> int:
    """Drop the tags of devices erased before ``now - older_than``: kept only so that a
    push in flight at the erasure is recorded unlinked (migration 0011), which takes
    seconds, not a day."""
    status = await pool.execute("DELETE FROM erased_device_tags WHERE erased_at < $1",
                                now - older_than)
    return int(status.split()[-1])
