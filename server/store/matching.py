"""The matching queries: which devices an incident reaches.

One copy, shared by the matcher (which pushes) and the dry run (which only counts),
so a vendor's dry run reports exactly the audience the real incident would get. The
incident's geometry is a parameter (hex EWKB as PostgreSQL prints a geometry, or WKT;
EPSG:4326 either way; ``ST_SetSRID`` gives WKT, which carries none, its SRID), so a
dry run can match an incident that was never stored.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# The incident the matcher matches: what its pushes say, and its geometry.
_INCIDENT = """
SELECT i.id, i.agency_id, i.category, i.status, i.decision, i.actual, i.occurred_at,
       i.received_at, i.public_location, i.location_kind, i.geom::text AS geom,
       ST_Y(i.public_point) AS lat, ST_X(i.public_point) AS lon,
       ST_Y(ST_PointOnSurface(i.geom)) AS exact_lat, ST_X(ST_PointOnSurface(i.geom)) AS exact_lon,
       i.title_override, i.body_override, a.responder_radius_m,
       i.source, i.expires_at, m.severity, m.area::text AS area
  FROM incidents i JOIN agencies a ON a.id = i.agency_id
  LEFT JOIN manual_alerts m ON m.incident_id = i.id
 WHERE i.id = $1
"""


# The zone test runs on the GiST index of zones.geom: ST_Intersects adds the && box
# check itself. Boundary points count as inside (ST_Intersects, not ST_Within).
_NEIGHBOURS = """
SELECT DISTINCT ON (d.id) d.id, d.platform, d.token, d.locale, d.timezone,
       d.quiet_start, d.quiet_end
  FROM zones z
  JOIN devices d ON d.id = z.device_id
 WHERE ST_Intersects(z.geom, ST_SetSRID($1::text::geometry, 4326))
   AND d.token_disabled_at IS NULL
   AND (d.categories IS NULL OR $2 = ANY (d.categories))
"""

# A manual alert's area is public by nature (an agency drew it to be announced), so it
# is matched as drawn, never generalized: every device with a zone meeting it, whatever
# categories the device chose.
_AREA_NEIGHBOURS = """
SELECT DISTINCT ON (d.id) d.id, d.platform, d.token, d.locale, d.timezone,
       d.quiet_start, d.quiet_end
  FROM zones z
  JOIN devices d ON d.id = z.device_id
 WHERE ST_Intersects(z.geom, ST_SetSRID($1::text::geometry, 4326))
   AND d.token_disabled_at IS NULL
"""
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
   AND ST_DWithin(o.geom::geography, ST_SetSRID($6::text::geometry, 4326)::geography, $8)
 ORDER BY o.received_at, o.id
 LIMIT 1
"""

_POINT_ON_SURFACE = """
SELECT ST_Y(p) AS lat, ST_X(p) AS lon
  FROM ST_PointOnSurface(ST_SetSRID($1::text::geometry, 4326)) AS p
"""


async def neighbours(db: asyncpg.Pool, geometry: str, category: str) -> list[asyncpg.Record]:
    """Devices with a zone meeting ``geometry`` that take ``category``."""
    return await db.fetch(_NEIGHBOURS, geometry, category)


async def area_neighbours(db: asyncpg.Pool, area: str) -> list[asyncpg.Record]:
    """Devices with a zone meeting a manual alert's ``area``."""
    return await db.fetch(_AREA_NEIGHBOURS, area)


async def area_audience_size(db: asyncpg.Pool | PoolConnectionProxy[asyncpg.Record],
                             area: str) -> int:
    """How many devices ``area_neighbours`` would return (the alert's preview)."""
    size: int = await db.fetchval(_AREA_AUDIENCE_SIZE, area)
    return size


async def responders(db: asyncpg.Pool, device_ids: list[str], *, public_place: bool,
                     agency_id: str) -> list[asyncpg.Record]:
    """Of the responders near an arrest, those who may be alerted for it."""
    return await db.fetch(_RESPONDERS, device_ids, public_place, agency_id)


async def same_event(
    db: asyncpg.Pool, *, category: str, agency_id: str, occurred_at: dt.datetime,
    received_at: dt.datetime, incident_id: object | None, geometry: str,
) -> object | None:
    """The earliest incident of another agency that is the same event, if any."""
    event_id: object | None = await db.fetchval(
        _SAME_EVENT, category, agency_id, occurred_at, received_at, incident_id, geometry,
        SAME_EVENT_WINDOW, SAME_EVENT_DISTANCE_M)
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
