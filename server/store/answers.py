"""What alerted CPR responders answer, and the counts an agency sees."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from server.domain.categories import RESPONDER_ONLY
from server.domain.responses import RESPONSE_STATUSES


async def record_answer(pool: asyncpg.Pool, device_id: str, incident_id: str,
                        status: str) -> bool:
    """A responder's answer to an alert; False (nothing stored) unless this device
    received the incident's alert as a responder."""
    found = await pool.fetchval(
        """WITH alerted AS (
               SELECT 1 FROM deliveries del JOIN incidents i ON i.id = del.incident_id
                WHERE del.incident_id = $2 AND del.device_id = $1 AND del.outcome = 'sent'
                  AND del.kind = 'alert' AND i.category = ANY ($4::text[])
                LIMIT 1),
                ins AS (
               INSERT INTO responder_answers (incident_id, device_id, status)
               SELECT $2, $1, $3 FROM alerted
               ON CONFLICT (incident_id, device_id)
                  DO UPDATE SET status = EXCLUDED.status, answered_at = now()
               RETURNING 1)
           SELECT count(*) FROM ins""",
        UUID(device_id), UUID(incident_id), status, sorted(RESPONDER_ONLY),
    )
    return bool(found)


async def counts(pool: asyncpg.Pool, incident_id: str) -> dict[str, Any] | None:
    """Responders alerted to an incident and their answers by status; None when there
    is no such incident. ``agency_id`` says whose it is."""
    row = await pool.fetchrow(
        """SELECT i.agency_id,
                  (SELECT count(DISTINCT del.device_id) FROM deliveries del
                    WHERE del.incident_id = i.id AND del.outcome = 'sent'
                      AND del.kind = 'alert' AND i.category = ANY ($2::text[])) AS alerted,
                  (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
                     FROM (SELECT status, count(*) AS n FROM responder_answers
                            WHERE incident_id = i.id GROUP BY status) a) AS answers
             FROM incidents i WHERE i.id = $1""",
        UUID(incident_id), sorted(RESPONDER_ONLY),
    )
    if row is None:
        return None
    answers = row["answers"]
    return {"agency_id": row["agency_id"], "alerted": row["alerted"],
            **{status: int(answers.get(status, 0)) for status in RESPONSE_STATUSES}}


async def recent(pool: asyncpg.Pool, agency_id: str, *, hours: int) -> list[dict[str, Any]]:
    """The agency's CPR calls received in the last ``hours``, newest first: when, where
    (the public location only), how many responders were alerted and what they answered.
    """
    rows = await pool.fetch(
        """SELECT i.id, i.category, i.public_location, i.received_at,
                  (SELECT count(DISTINCT del.device_id) FROM deliveries del
                    WHERE del.incident_id = i.id AND del.outcome = 'sent'
                      AND del.kind = 'alert') AS alerted,
                  (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
                     FROM (SELECT status, count(*) AS n FROM responder_answers
                            WHERE incident_id = i.id GROUP BY status) a) AS answers
             FROM incidents i
            WHERE i.agency_id = $1 AND i.category = ANY ($2::text[])
              AND i.received_at > now() - make_interval(hours => $3)
            ORDER BY i.received_at DESC, i.id
            LIMIT 200""",
        agency_id, sorted(RESPONDER_ONLY), hours,
    )
    return [{"incident_id": str(r["id"]), "category": r["category"],
             "public_location": r["public_location"],
             "received_at": r["received_at"].isoformat(), "alerted": r["alerted"],
             **{status: int(r["answers"].get(status, 0)) for status in RESPONSE_STATUSES}}
            for r in rows]
