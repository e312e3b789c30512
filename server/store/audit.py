"""The audit log: who did what, when. Where a change is a transaction (a review
decision, a manual alert, a user, a call-type map change) its entry is written in it,
so the change is never without its entry."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg


async def record(db: Any, *, actor: str, agency_id: str | None, action: str,
                 target: str | None = None, details: dict[str, Any] | None = None) -> None:
    await db.execute(
        """INSERT INTO audit_log (actor, agency_id, action, target, details)
           VALUES ($1, $2, $3, $4, $5)""",
        actor, agency_id, action, target, details or {},
    )


async def entries(pool: asyncpg.Pool, *, agency_id: str | None, before_id: int | None,
                  limit: int) -> list[dict[str, Any]]:
    """Newest first; ``before_id`` pages back."""
    rows = await pool.fetch(
        """SELECT id, at, actor, agency_id, action, target, details FROM audit_log
            WHERE ($1::text IS NULL OR agency_id = $1)
              AND ($2::bigint IS NULL OR id < $2)
            ORDER BY id DESC LIMIT $3""",
        agency_id, before_id, limit,
    )
    return [{"id": r["id"], "at": _iso(r["at"]), "actor": r["actor"],
             "agency_id": r["agency_id"], "action": r["action"], "target": r["target"],
             "details": r["details"]} for r in rows]


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
