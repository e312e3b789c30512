"""What the public map shows: the last hour's alerted incidents, public points only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from server.domain.categories import NEIGHBOUR_ALERTABLE

# Only what a push already told the neighbourhood: the rounded public point and the
# public location text. Never the exact geometry, the narrative or the call type as sent;
# CPR calls (responders only) and manual alerts (their own feed) are not on it.
_RECENT = """
SELECT category, status, occurred_at, public_location,
       ST_Y(public_point) AS lat, ST_X(public_point) AS lon
  FROM incidents
 WHERE decision = 'alert' AND actual AND source = 'cad'
   AND occurred_at > $1
   AND category = ANY ($2::text[])
   AND public_point && ST_MakeEnvelope($3, $4, $5, $6, 4326)
 ORDER BY occurred_at DESC
 LIMIT $7
"""


async def recent(pool: asyncpg.Pool, bbox: tuple[float, float, float, float], *,
                 since: dt.datetime, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        _RECENT, since, sorted(NEIGHBOUR_ALERTABLE), *bbox, limit)
    return rows


def as_public(row: Any, now: dt.datetime) -> dict[str, Any]:
    return {"category": row["category"], "status": row["status"],
            "location": row["public_location"], "lat": row["lat"], "lon": row["lon"],
            "occurred_at": row["occurred_at"].astimezone(dt.UTC).isoformat(),
            "age_minutes": max(0, int((now - row["occurred_at"]).total_seconds() // 60))}
