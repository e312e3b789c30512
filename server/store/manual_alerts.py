"""Manual alerts: stored as an incident (source 'manual', the area as its geometry,
decision 'alert') with its outbox row, so the matcher and senders deliver it like any
alert; the alert's own record (its area as drawn, for matching and the CAP feed) and
its audit entry go in the same transaction. Its audience is matching.py's."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from server.domain.manual_alert import CALL_TYPE, CATEGORY, ManualAlert
from server.domain.policy import ALERT
from server.store import audit, matching
from server.store.positions import Nearby

_INSERT_INCIDENT = """
INSERT INTO incidents (id, agency_id, external_id, revision, status, call_type, category,
                       occurred_at, received_at, geom, public_point, public_location,
                       location_kind, decision, source, expires_at, title_override,
                       body_override)
VALUES ($1, $2, $3, $4, 'active', $5, $6, $4, $4, ST_SetSRID(ST_GeomFromGeoJSON($7), 4326),
        ST_PointOnSurface(ST_SetSRID(ST_GeomFromGeoJSON($7), 4326)), NULL, 'public', $8,
        'manual', $9, $10, $11)
"""


async def create(pool: asyncpg.Pool, agency_id: str, alert: ManualAlert, *, sent_by: str,
                 now: dt.datetime, near: Sequence[Nearby] = ()) -> tuple[str, int]:
    """Store and queue the alert; (incident id, audience size when sent, counting the
    near-me positions ``near`` found in the area)."""
    incident_id = uuid.uuid4()
    expires = now + alert.expires_in
    async with pool.acquire() as conn, conn.transaction():
        size = await matching.area_audience_size(conn, alert.area_wkt, near)
        await conn.execute(
            _INSERT_INCIDENT, incident_id, agency_id, f"manual:{incident_id}", now, CALL_TYPE,
            CATEGORY, alert.area_geojson, ALERT, expires, alert.title, alert.body)
        await conn.execute(
            """INSERT INTO manual_alerts (incident_id, agency_id, title, body, severity, area,
                                          sent_at, expires_at, sent_by, audience)
               VALUES ($1, $2, $3, $4, $5, ST_SetSRID(ST_GeomFromGeoJSON($6), 4326), $7, $8,
                       $9, $10)""",
            incident_id, agency_id, alert.title, alert.body, alert.severity,
            alert.area_geojson, now, expires, sent_by, size)
        await conn.execute("INSERT INTO outbox (incident_id) VALUES ($1)", incident_id)
        await audit.record(conn, actor=sent_by, agency_id=agency_id, action="alert.send",
                           target=str(incident_id),
                           details={"title": alert.title, "body": alert.body,
                                    "severity": alert.severity, "audience": size,
                                    "expires_at": expires.isoformat(),
                                    "area": json.loads(alert.area_geojson)})
    return str(incident_id), size


async def recent(pool: asyncpg.Pool, agency_id: str, *, limit: int = 50,
                 incident_id: str | None = None) -> list[dict[str, Any]]:
    """Newest first, with the area as GeoJSON (lon/lat) and the agency's name."""
    rows = await pool.fetch(
        """SELECT m.incident_id, m.title, m.body, m.severity, m.sent_at, m.expires_at,
                  m.sent_by, m.audience, ST_AsGeoJSON(m.area) AS area, a.name AS agency_name
             FROM manual_alerts m JOIN agencies a ON a.id = m.agency_id
            WHERE m.agency_id = $1 AND ($3::uuid IS NULL OR m.incident_id = $3)
            ORDER BY m.sent_at DESC LIMIT $2""",
        agency_id, limit, incident_id)
    return [{"id": str(r["incident_id"]), "title": r["title"], "body": r["body"],
             "severity": r["severity"], "sent_at": r["sent_at"], "expires_at": r["expires_at"],
             "sent_by": r["sent_by"], "audience": r["audience"],
             "area": json.loads(r["area"]), "agency_name": r["agency_name"]} for r in rows]
