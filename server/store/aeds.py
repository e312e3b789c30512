"""Automated external defibrillators: imported by operators, found by nearest neighbour."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from server.domain.aed_import import Aed

NEAREST_WITHIN_M = 1000
NEAREST_COUNT = 3


async def import_aeds(pool: asyncpg.Pool, aeds: Sequence[Aed]) -> int:
    """Insert or update (by source id) in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO aeds (source_id, name, description, geom)
               VALUES ($1, $2, $3, ST_SetSRID(ST_MakePoint($4, $5), 4326))
               ON CONFLICT (source_id) DO UPDATE
                  SET name = EXCLUDED.name, description = EXCLUDED.description,
                      geom = EXCLUDED.geom, imported_at = now()""",
            [(a.source_id, a.name, a.description, a.lon, a.lat) for a in aeds],
        )
    return len(aeds)


async def nearest(pool: asyncpg.Pool, lat: float, lon: float, *,
                  within_m: float = NEAREST_WITHIN_M, count: int = NEAREST_COUNT
                  ) -> list[dict[str, Any]]:
    """The nearest AEDs: a KNN walk of the GiST index (``<->``), then the exact
    geodesic distance check."""
    rows = await pool.fetch(
        """WITH p AS (SELECT ST_SetSRID(ST_MakePoint($1, $2), 4326) AS g)
           SELECT a.name, a.description, ST_Y(a.geom) AS lat, ST_X(a.geom) AS lon,
                  ST_Distance(a.geom::geography, p.g::geography) AS distance_m
             FROM aeds a, p
            WHERE a.geom && ST_Expand(p.g, $3 / (111320 * cos(radians($2))) * 1.1,
                                      $3 / 110574.0 * 1.1)
              AND ST_DWithin(a.geom::geography, p.g::geography, $3)
            ORDER BY a.geom <-> p.g
            LIMIT $4""",
        lon, lat, within_m, count,
    )
    return [{"name": r["name"], "description": r["description"],
             "lat": round(r["lat"], 6), "lon": round(r["lon"], 6),
             "distance_m": round(r["distance_m"])} for r in rows]
