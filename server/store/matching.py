"""The matching queries: which devices an incident reaches.

One copy, shared by the matcher (which pushes) and the dry run (which only counts),
so a vendor's dry run reports exactly the audience the real incident would get. The
incident's geometry is a parameter (hex EWKB as PostgreSQL prints a geometry, or WKT;
EPSG:4326 either way; ``ST_SetSRID`` gives WKT, which carries none, its SRID), so a
dry run can match an incident that was never stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.store.positions import Nearby

# The incident the matcher matches: what its pushes say, and its geometry.
_INCIDENT = """
SELECT i.id, i.agency_id, i.category, i.status, i.decision, i.actual, i.occurred_at,
       i.received_at, i.public_location, i.location_kind, i.geom::text AS geom,
       ST_Y(i.public_point) AS lat, ST_X(i.public_point) AS lon,
       GeometryType(i.public_geom) <> 'POINT' AS is_area,
       ST_XMin(i.public_geom) AS west, ST_YMin(i.public_geom) AS south,
       ST_XMax(i.public_geom) AS east, ST_YMax(i.public_geom) AS north,
       ST_Y(ST_PointOnSurface(i.geom)) AS exact_lat, ST_X(ST_PointOnSurface(i.geom)) AS exact_lon,
       i.title_override, i.body_override, a.responder_radius_m,
       i.source, i.expires_at, m.severity, m.area::text AS area, i.revision,
       i.category = ANY (a.no_update_categories) AS updates_off
  FROM incidents i JOIN agencies a ON a.id = i.agency_id
  LEFT JOIN manual_alerts m ON m.incident_id = i.id
 WHERE i.id = $1
"""


def _reached(target: str, ids: int, categories: str, *, distinct: bool = True) -> str:
    """Devices with a zone meeting ``target`` (the zone test runs on the GiST index of
    zones.geom: ST_Intersects adds the && box check itself; boundary points count as
    inside), and devices with "near me" whose current position (parameters ``ids`` to
    ``ids + 2``: device ids, longitudes, latitudes, from one GEO search in Redis) is
    within their radius of ``target``. A device matched both ways is one row: one push.
    ``categories``: the SQL condition on the device's categories, ``{t}`` standing for
    the table read (both SQL fragments are this module's constants, never input).

    The zone half reads zones only: each zone carries a copy of its device's columns
    the match reads (migration 0010, kept in step by triggers there), on the heap row
    the GiST scan visits anyway for the geometry's recheck, so a zone found costs no
    lookup in devices. The near-me half (a few devices) reads devices by id.

    ``distinct`` false: a device matched twice (two zones, or a zone and its position)
    comes twice, and rows stream from the first one found, with no sort or hash of the
    whole match before it; whoever reads it keeps the first of each device (the
    matcher: in memory and, across processes, by the event's dedup set in Redis).
    That is the streaming matcher's form; the counting one (dry run) is distinct."""
    rows = f"""
SELECT z.device_id AS id, z.platform, z.token, z.locale, z.timezone,
       z.quiet_start, z.quiet_end
  FROM zones z
 WHERE ST_Intersects(z.geom, {target})
   AND z.token_disabled_at IS NULL
   AND {categories.format(t="z")}
UNION ALL
SELECT d.id, d.platform, d.token, d.locale, d.timezone, d.quiet_start, d.quiet_end
  FROM unnest(${ids}::uuid[], ${ids + 1}::float8[], ${ids + 2}::float8[])
       AS p(device_id, lon, lat)
  JOIN devices d ON d.id = p.device_id
 WHERE d.near_me_radius_m IS NOT NULL
   AND d.token_disabled_at IS NULL
   AND {categories.format(t="d")}
   AND ST_DWithin(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)::geography,
                  ({target})::geography, d.near_me_radius_m)
"""  # noqa: S608
    if not distinct:
        return rows
    return f"SELECT DISTINCT ON (m.id) m.* FROM ({rows}) m"  # noqa: S608


# An incident is matched, by zone and by near-me position alike, against its public
# geometry, never the exact one: who is alerted is a function of what the push says,
# so a grid of cheap devices can't locate an incident more precisely than the push
# does (the exact point serves CPR responders and the agency's editors only). The
# public geometry comes from the exact one ($1) and the public point ($6 lon, $7 lat):
# the point for a point, an area's box widened to the public grid (geopush_public_geom,
# sql/0005; stored incidents keep it in public_geom). Only devices that take the
# incident's category ($2).
_TAKES_CATEGORY = "({t}.categories IS NULL OR $2 = ANY ({t}.categories))"
_NEIGHBOURS = _reached(
    """geopush_public_geom(ST_SetSRID($1::text::geometry, 4326),
                           ST_SetSRID(ST_MakePoint($6::float8, $7::float8), 4326))""",
    ids=3, categories=_TAKES_CATEGORY)

_NEIGHBOUR_ROWS = _reached(
    """geopush_public_geom(ST_SetSRID($1::text::geometry, 4326),
                           ST_SetSRID(ST_MakePoint($6::float8, $7::float8), 4326))""",
    ids=3, categories=_TAKES_CATEGORY, distinct=False)

# How far an incident's public area reaches from its public point (0 for a point):
# near-me positions are searched that much further out.
_EXTENT = """
SELECT CASE WHEN GeometryType(g) IN ('POLYGON', 'MULTIPOLYGON')
            THEN (SELECT max(ST_Distance(ST_SetSRID(ST_MakePoint($3, $2), 4326)::geography,
                                         (v).geom::geography))
                    FROM ST_DumpPoints(g) v)
            ELSE 0 END
  FROM (SELECT geopush_public_geom(ST_SetSRID($1::text::geometry, 4326),
                                   ST_SetSRID(ST_MakePoint($3::float8, $2::float8), 4326))
               AS g) x
"""
# (The farthest vertex in metres: the longest line in degrees, as before, can pick
# another corner, since a degree of longitude is shorter than one of latitude here.)

# A manual alert's area is public by nature (an agency drew it to be announced), so it
# is matched as drawn, never generalized, whatever categories the device chose.
_AREA_NEIGHBOURS = _reached("ST_SetSRID($1::text::geometry, 4326)", ids=2, categories="true")
_AREA_NEIGHBOUR_ROWS = _reached("ST_SetSRID($1::text::geometry, 4326)", ids=2,
                                categories="true", distinct=False)
_AREA_AUDIENCE_SIZE = f"SELECT count(*) FROM ({_AREA_NEIGHBOURS}) AS reached"  # noqa: S608

# Responders near a cardiac arrest, from the positions Redis found. Where the arrest is
# not known to be in a public place, only responders the agency registered are alerted.
_RESPONDERS = """
SELECT d.id, d.platform, d.token, d.locale, d.timezone, d.quiet_start, d.quiet_end
  FROM devices d
 WHERE d.id = ANY ($1::uuid[])
   AND d.responder
   AND d.token_disabled_at IS NULL
   AND (d.categories IS NULL OR 'cardiac_arrest' = ANY (d.categories))
   AND ($2 OR EXISTS (SELECT 1 FROM agency_responders r
                       WHERE r.device_id = d.id AND r.agency_id = $3))
"""

# Two agencies reporting one event (a fire both the fire and the police CAD know
# about): the same category within 150 m and 10 minutes, already alerted. Devices
# are deduplicated on the earliest such incident, so each is alerted once. An
# incident not stored yet (a dry run) has no id: every earlier arrival counts.
SAME_EVENT_DISTANCE_M = 150
SAME_EVENT_WINDOW = dt.timedelta(minutes=10)
_SAME_EVENT = """
SELECT o.id
  FROM incidents o
 WHERE o.category = $1
   AND o.agency_id <> $2
   AND o.occurred_at BETWEEN $3::timestamptz - $7::interval AND $3::timestamptz + $7::interval
   AND ($5::uuid IS NULL OR (o.received_at, o.id) < ($4::timestamptz, $5::uuid))
   AND o.received_at <= $4
   AND o.decision = 'alert' AND o.actual
   AND ST_DWithin(o.public_geom::geography,
                  geopush_public_geom(ST_SetSRID($6::text::geometry, 4326),
                                      ST_SetSRID(ST_MakePoint($10::float8, $9::float8), 4326)
                                      )::geography, $8)
 ORDER BY o.received_at, o.id
 LIMIT 1
"""

_POINT_ON_SURFACE = """
SELECT ST_Y(p) AS lat, ST_X(p) AS lon
  FROM ST_PointOnSurface(ST_SetSRID($1::text::geometry, 4326)) AS p
"""


async def neighbours(db: asyncpg.Pool, geometry: str, category: str,
                     public_point: tuple[float, float], near: Sequence[Nearby] = (),
                     ) -> list[asyncpg.Record]:
    """Devices that take ``category`` with a zone meeting the incident's public
    geometry (from its exact ``geometry`` and ``public_point``, lat and lon), or with
    "near me" and a position in ``near`` within their radius of it."""
    lat, lon = public_point
    return await db.fetch(_NEIGHBOURS, geometry, category, [n.device_id for n in near],
                          [n.lon for n in near], [n.lat for n in near], lon, lat)


async def _pages(db: asyncpg.Pool, query: str, args: Sequence[object], first: int,
                 page: int) -> AsyncGenerator[list[asyncpg.Record], None]:
    """The rows of ``query`` from a server-side cursor (in a read-only transaction),
    ``first`` rows first, then ``page`` at a time: the caller acts on each page while
    the rest is still to be read. Close it (``contextlib.aclosing``) if you stop early."""
    async with db.acquire() as conn, conn.transaction(readonly=True):
        # Planned for these values, every time: the incident's geometry folds into a
        # constant the GiST scan and the recheck use as is (a generic plan, which
        # PostgreSQL may switch a prepared statement to, would rebuild it per row). And
        # no bitmap scan: it reads the whole index match before its first row (for a
        # city-wide area, half the query's time before the first push could leave),
        # where the GiST index scan hands rows out as it finds them
        # (docs/BENCHMARKS.md, "Streaming matcher"). And no JIT: a city-wide match costs
        # enough for PostgreSQL to compile it, 75-100 ms before the first row, every
        # time (each incident's plan is new), for little gain on the rows after.
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan; "
                           "SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off")
        cursor = await conn.cursor(query, *args)
        size = first
        while True:
            rows = await cursor.fetch(size)
            if rows:
                yield rows
            if len(rows) < size:
                return
            size = page


def neighbour_pages(db: asyncpg.Pool, geometry: str, category: str,
                    public_point: tuple[float, float], near: Sequence[Nearby] = (), *,
                    first: int, page: int) -> AsyncGenerator[list[asyncpg.Record], None]:
    """``neighbours`` as it is read, page by page; a device may come twice."""
    lat, lon = public_point
    return _pages(db, _NEIGHBOUR_ROWS, (geometry, category, [n.device_id for n in near],
                                        [n.lon for n in near], [n.lat for n in near], lon, lat),
                  first, page)


def area_neighbour_pages(db: asyncpg.Pool, area: str, near: Sequence[Nearby] = (), *,
                         first: int, page: int) -> AsyncGenerator[list[asyncpg.Record], None]:
    """Devices with a zone meeting a manual alert's ``area``, or with "near me" and a
    position in ``near`` within their radius of it, page by page; a device may come
    twice."""
    return _pages(db, _AREA_NEIGHBOUR_ROWS, (area, [n.device_id for n in near],
                                             [n.lon for n in near], [n.lat for n in near]),
                  first, page)


async def extent_m(db: asyncpg.Pool, geometry: str, lat: float, lon: float) -> float:
    """Metres from the public point (lat, lon) to the farthest point of the incident's
    area; 0 for a point."""
    return float(await db.fetchval(_EXTENT, geometry, lat, lon) or 0.0)


async def area_audience_size(db: asyncpg.Pool | PoolConnectionProxy[asyncpg.Record],
                             area: str, near: Sequence[Nearby] = ()) -> int:
    """How many devices ``area_neighbour_pages`` would give for the same ``near``
    positions, each once (the alert's preview)."""
    size: int = await db.fetchval(_AREA_AUDIENCE_SIZE, area, [n.device_id for n in near],
                                  [n.lon for n in near], [n.lat for n in near])
    return size


async def responders(db: asyncpg.Pool, device_ids: list[str], *, public_place: bool,
                     agency_id: str) -> list[asyncpg.Record]:
    """Of the responders near an arrest, those who may be alerted for it."""
    return await db.fetch(_RESPONDERS, device_ids, public_place, agency_id)


async def same_event(
    db: asyncpg.Pool, *, category: str, agency_id: str, occurred_at: dt.datetime,
    received_at: dt.datetime, incident_id: object | None, geometry: str,
    public_point: tuple[float, float],
) -> object | None:
    """The earliest incident of another agency that is the same event, if any (near
    on public geometries: which pushes a device gets tells nothing finer either)."""
    event_id: object | None = await db.fetchval(
        _SAME_EVENT, category, agency_id, occurred_at, received_at, incident_id, geometry,
        SAME_EVENT_WINDOW, SAME_EVENT_DISTANCE_M, public_point[0], public_point[1])
    return event_id


async def point_on_surface(db: asyncpg.Pool, geometry: str) -> tuple[float, float]:
    """(lat, lon) of a point inside the geometry, as the matcher picks a responder's
    destination from a stored incident."""
    row = await db.fetchrow(_POINT_ON_SURFACE, geometry)
    assert row is not None  # a function call in FROM always yields a row
    return float(row["lat"]), float(row["lon"])


async def incident(db: asyncpg.Pool, incident_id: str) -> asyncpg.Record | None:
    """The stored incident to match, with its agency's responder radius."""
    return await db.fetchrow(_INCIDENT, incident_id)


# Who gets the update when an alerted incident ends: the devices its alert reached,
# by the delivery records (not who would match now), with their current token.
_ALERTED = """
SELECT DISTINCT ON (d.id) d.id, d.platform, d.token, d.locale
  FROM deliveries del JOIN devices d ON d.id = del.device_id
 WHERE del.incident_id = $1 AND del.outcome = 'sent' AND del.kind = 'alert'
   AND d.token_disabled_at IS NULL
"""


def alerted_pages(db: asyncpg.Pool, incident_id: object, *, first: int, page: int
                  ) -> AsyncGenerator[list[asyncpg.Record], None]:
    """The devices an ended incident's alert reached, with their current token, page
    by page."""
    return _pages(db, _ALERTED, (incident_id,), first, page)
