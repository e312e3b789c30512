"""The matcher's queries: the incident to match, the devices it reaches (zones
around it, or responders near a cardiac arrest), and the earlier report of the same
event by another agency."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg

_INCIDENT = """
SELECT i.id, i.agency_id, i.category, i.status, i.decision, i.actual, i.occurred_at,
       i.received_at, i.public_location, i.location_kind,
       ST_Y(i.public_point) AS lat, ST_X(i.public_point) AS lon,
       ST_Y(ST_PointOnSurface(i.geom)) AS exact_lat, ST_X(ST_PointOnSurface(i.geom)) AS exact_lon,
       i.title_override, i.body_override, a.responder_radius_m
  FROM incidents i JOIN agencies a ON a.id = i.agency_id
 WHERE i.id = $1
"""

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
# are deduplicated on the earliest such incident, so each is alerted once.
SAME_EVENT_DISTANCE_M = 150
SAME_EVENT_WINDOW = dt.timedelta(minutes=10)
_SAME_EVENT = """
SELECT o.id
  FROM incidents i
  JOIN incidents o
    ON o.category = i.category
   AND o.agency_id <> i.agency_id
   AND o.occurred_at BETWEEN i.occurred_at - $2::interval AND i.occurred_at + $2::interval
   AND (o.received_at, o.id) < (i.received_at, i.id)
   AND o.decision = 'alert' AND o.actual
   AND ST_DWithin(o.geom::geography, i.geom::geography, $3)
 WHERE i.id = $1
 ORDER BY o.received_at, o.id
 LIMIT 1
"""

# The zone test runs on the GiST index of zones.geom: ST_Intersects adds the && box
# check itself. Boundary points count as inside (ST_Intersects, not ST_Within).
_NEIGHBOURS = """
SELECT DISTINCT ON (d.id) d.id, d.platform, d.token, d.locale, d.timezone,
       d.quiet_start, d.quiet_end
  FROM incidents i
  JOIN zones z ON ST_Intersects(z.geom, i.geom)
  JOIN devices d ON d.id = z.device_id
 WHERE i.id = $1
   AND d.token_disabled_at IS NULL
   AND (d.categories IS NULL OR i.category = ANY (d.categories))
"""


async def incident(pool: asyncpg.Pool, incident_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(_INCIDENT, incident_id)


async def neighbours(pool: asyncpg.Pool, incident_id: object) -> list[asyncpg.Record]:
    """Devices whose zones the incident touches, with the category among theirs."""
    return await pool.fetch(_NEIGHBOURS, incident_id)


async def responders(pool: asyncpg.Pool, device_ids: Sequence[str], public_place: bool,
                     agency_id: str) -> list[asyncpg.Record]:
    """Of the devices near a cardiac arrest, the opted-in responders to alert."""
    return await pool.fetch(_RESPONDERS, list(device_ids), public_place, agency_id)


async def same_event(pool: asyncpg.Pool, incident_id: object) -> object | None:
    """The earliest alerted report of the same event by another agency, if any."""
    event: object | None = await pool.fetchval(_SAME_EVENT, incident_id, SAME_EVENT_WINDOW,
                                               SAME_EVENT_DISTANCE_M)
    return event
