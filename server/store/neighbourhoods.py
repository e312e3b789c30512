"""Imported neighbourhoods: zones by name, and where a point lies."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.domain.neighbourhood_import import Neighbourhood


@dataclass(frozen=True)
class Imported:
    id: str
    source_id: str
    name: str
    created: bool


async def import_neighbourhoods(pool: asyncpg.Pool, items: Sequence[Neighbourhood]
                                ) -> list[Imported]:
    """Insert or update (by source id) in one transaction; zones that are these
    neighbourhoods take the new geometry."""
    out: list[Imported] = []
    async with pool.acquire() as conn, conn.transaction():
        for n in items:
            row = await conn.fetchrow(
                """INSERT INTO neighbourhoods (source_id, name, geom)
                   VALUES ($1, $2, ST_Multi(ST_SetSRID(ST_GeomFromGeoJSON($3), 4326)))
                   ON CONFLICT (source_id) DO UPDATE
                      SET name = EXCLUDED.name, geom = EXCLUDED.geom, imported_at = now()
                   RETURNING id, (xmax = 0) AS created""",
                n.source_id, n.name, n.geojson,
            )
            assert row is not None   # INSERT … ON CONFLICT DO UPDATE returns its row
            out.append(Imported(str(row["id"]), n.source_id, n.name, row["created"]))
        await conn.execute(
            """UPDATE zones z SET geom = n.geom FROM neighbourhoods n
                WHERE z.neighbourhood_id = n.id AND n.id = ANY ($1::uuid[])
                  AND NOT ST_Equals(z.geom, n.geom)""",
            [i.id for i in out])
    return out


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


_COLUMNS = """id::text, name, ST_AsGeoJSON(geom, 6)::jsonb AS geometry"""


def _view(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "geometry": row["geometry"]}


async def get(pool: asyncpg.Pool, neighbourhood_id: str) -> dict[str, Any] | None:
    uid = _uuid(neighbourhood_id)
    if uid is None:
        return None
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM neighbourhoods WHERE id = $1", uid)  # noqa: S608
    return _view(row) if row else None


async def containing(pool: asyncpg.Pool, lat: float, lon: float) -> list[dict[str, Any]]:
    """The neighbourhoods a point lies in (usually one; overlapping imports may give
    more), smallest first."""
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM neighbourhoods
             WHERE ST_Intersects(geom, ST_SetSRID(ST_MakePoint($1, $2), 4326))
             ORDER BY ST_Area(geom), id""",  # noqa: S608
        lon, lat,
    )
    return [_view(r) for r in rows]


async def neighbourhood_name_at(db: asyncpg.Pool | asyncpg.Connection, lat: float,
                                lon: float) -> str | None:
    """The name of the (smallest) imported neighbourhood the point lies in, or None:
    the public location's last resort when no block or intersection can be built."""
    name: str | None = await db.fetchval(
        """SELECT name FROM neighbourhoods
            WHERE ST_Intersects(geom, ST_SetSRID(ST_MakePoint($1, $2), 4326))
            ORDER BY ST_Area(geom), id LIMIT 1""",
        lon, lat,
    )
    return name


async def existing(pool: asyncpg.Pool, ids: Sequence[str]) -> set[str]:
    """Which of these ids are imported neighbourhoods."""
    valid = [u for u in (_uuid(i) for i in ids) if u is not None]
    if not valid:
        return set()
    rows = await pool.fetch("SELECT id::text FROM neighbourhoods WHERE id = ANY ($1::uuid[])",
                            valid)
    return {r["id"] for r in rows}
