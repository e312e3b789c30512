"""The editor's queue: alerts an agency wants a person to look at first."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.domain.policy import ALERT, suppressed
from server.domain.pushtext import title_and_body
from server.store import audit


class ReviewClosed(Exception):
    """The item is not pending any more (decided, superseded or expired)."""


@dataclass(frozen=True)
class Approved:
    incident_id: str
    publish: bool


async def pending(
    pool: asyncpg.Pool, *, agency_id: str | None, now: dt.datetime, limit: int = 100,
    incident_id: str | None = None, exact: bool = False,
) -> list[dict[str, Any]]:
    """Pending items, oldest first, of one agency (or all: ``agency_id`` None), or the
    one item ``incident_id``. ``exact`` adds the exact point: for the agency's own
    editors only."""
    rows = await pool.fetch(
        """SELECT r.incident_id, r.agency_id, r.narrative, r.created_at, r.expires_at,
                  i.external_id, i.call_type, i.category, i.status, i.occurred_at,
                  i.public_location, i.location_kind, i.priority,
                  ST_Y(i.public_point) AS lat, ST_X(i.public_point) AS lon,
                  ST_Y(ST_PointOnSurface(i.geom)) AS exact_lat,
                  ST_X(ST_PointOnSurface(i.geom)) AS exact_lon
             FROM review_items r JOIN incidents i ON i.id = r.incident_id
            WHERE r.state = 'pending' AND r.expires_at > $1
              AND ($2::text IS NULL OR r.agency_id = $2)
              AND ($4::uuid IS NULL OR r.incident_id = $4)
            ORDER BY r.created_at
            LIMIT $3""",
        now, agency_id, limit, incident_id,
    )
    return [_item(r, now, exact) for r in rows]


def _item(r: asyncpg.Record, now: dt.datetime, exact: bool) -> dict[str, Any]:
    title, body = title_and_body(r["category"], r["public_location"], r["occurred_at"], now)
    location: dict[str, Any] = {"public": r["public_location"], "lat": r["lat"],
                                "lon": r["lon"], "kind": r["location_kind"]}
    if exact:
        location["exact"] = {"lat": r["exact_lat"], "lon": r["exact_lon"]}
    return {
        "incident_id": str(r["incident_id"]), "agency_id": r["agency_id"],
        "external_id": r["external_id"], "call_type": r["call_type"],
        "category": r["category"], "status": r["status"], "priority": r["priority"],
        "occurred_at": r["occurred_at"].isoformat(),
        "location": location,
        "narrative": r["narrative"],
        "proposed": {"title": title, "body": body},
        "queued_at": r["created_at"].isoformat(),
        "expires_at": r["expires_at"].isoformat(),
    }


async def _lock_pending(conn: Any, incident_id: str, now: dt.datetime,
                        agency_id: str | None) -> str:
    """Lock the pending item and return its agency; LookupError when there is none
    (or it belongs to another agency than ``agency_id``: the same answer, so ids of
    other agencies' items can't be probed)."""
    row = await conn.fetchrow(
        """SELECT agency_id, state, expires_at FROM review_items
            WHERE incident_id = $1::uuid AND ($2::text IS NULL OR agency_id = $2)
              FOR UPDATE""",
        incident_id, agency_id,
    )
    if row is None:
        raise LookupError(incident_id)
    if row["state"] != "pending" or row["expires_at"] <= now:
        raise ReviewClosed(row["state"] if row["state"] != "pending" else "expired")
    item_agency: str = row["agency_id"]
    return item_agency


async def approve(
    pool: asyncpg.Pool, incident_id: str, *, editor: str, now: dt.datetime,
    title: str | None, body: str | None, agency_id: str | None = None,
) -> Approved:
    """Approve: the incident becomes an alert (with the editor's wording, if any) and gets
    an outbox row and an audit entry (by ``editor``) in the same
    transaction, so the caller's publish can't be lost. ``agency_id`` limits it to that
    agency's items."""
    async with pool.acquire() as conn, conn.transaction():
        item_agency = await _lock_pending(conn, incident_id, now, agency_id)
        await _decide(conn, incident_id, "approved", now, editor)
        await audit.record(conn, actor=editor, agency_id=item_agency,
                           action="review.approve", target=incident_id,
                           details={"edited_title": title, "edited_body": body})
        status = await conn.fetchval(
            """UPDATE incidents SET decision = $2, title_override = $3, body_override = $4,
                                    updated_at = now()
                WHERE id = $1::uuid RETURNING status""",
            incident_id, ALERT, title, body,
        )
        publish = status == "active"
        if publish:
            await conn.execute("INSERT INTO outbox (incident_id) VALUES ($1::uuid)", incident_id)
    return Approved(incident_id, publish)


async def reject(pool: asyncpg.Pool, incident_id: str, *, editor: str, now: dt.datetime,
                 agency_id: str | None = None) -> None:
    async with pool.acquire() as conn, conn.transaction():
        item_agency = await _lock_pending(conn, incident_id, now, agency_id)
        await _decide(conn, incident_id, "rejected", now, editor)
        await audit.record(conn, actor=editor, agency_id=item_agency,
                           action="review.reject", target=incident_id)
        await conn.execute(
            "UPDATE incidents SET decision = $2, updated_at = now() WHERE id = $1::uuid",
            incident_id, suppressed("rejected"),
        )


async def expire(pool: asyncpg.Pool, now: dt.datetime) -> int:
    """Close items past the staleness window: their narrative goes with them."""
    async with pool.acquire() as conn, conn.transaction():
        ids = await conn.fetch(
            """UPDATE review_items SET state = 'expired', narrative = NULL, decided_at = $1
                WHERE state = 'pending' AND expires_at <= $1 RETURNING incident_id""",
            now,
        )
        if ids:
            await conn.execute(
                """UPDATE incidents SET decision = $2, updated_at = now()
                    WHERE id = ANY($1::uuid[]) AND decision = 'review'""",
                [r["incident_id"] for r in ids], suppressed("stale"),
            )
    return len(ids)


async def _decide(conn: PoolConnectionProxy[asyncpg.Record], incident_id: str, state: str,
                  now: dt.datetime, editor: str) -> None:
    """Record the editor's decision; the narrative is not kept past it."""
    await conn.execute(
        """UPDATE review_items SET state = $2, narrative = NULL, decided_at = $3,
                                   decided_by = $4
            WHERE incident_id = $1::uuid""",
        incident_id, state, now, editor,
    )
