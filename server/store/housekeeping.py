"""Housekeeping the relay process runs: forgetting exact incident locations."""

from __future__ import annotations

import datetime as dt

import asyncpg


async def purge_exact_locations(pool: asyncpg.Pool, older_than: dt.timedelta,
                                now: dt.datetime) -> int:
    """Replace exact point locations by the public (rounded) point once matching can no
    longer need them. Areas (CAP polygons) are published geometry and are kept."""
    status = await pool.execute(
        """UPDATE incidents SET geom = public_point, exact_purged_at = $2
            WHERE exact_purged_at IS NULL AND received_at < $1
              AND GeometryType(geom) = 'POINT'""",
        now - older_than, now,
    )
    return int(status.split()[-1])
