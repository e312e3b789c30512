"""The transparency report's counts: per agency, day (in the agency's time zone) and
category. Days are counted from the live rows until the maintenance job rolls them up
into ``transparency_daily``, which retention never deletes; a day is rolled up once it
ended ``ROLLUP_AFTER`` ago (its pushes are long expired), always before retention can
delete the rows it counts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

ROLLUP_AFTER = dt.timedelta(days=1)

COLUMNS = ("received", "suppressed_category", "suppressed_stale", "suppressed_test",
           "suppressed_unmapped", "suppressed_other", "review_held", "review_approved",
           "review_rejected", "review_expired", "alerted", "devices_reached",
           "latency_p50_ms", "latency_p95_ms")

# $1 agency, $2 first day, $3 last day (inclusive, the agency's local dates).
_LIVE = """
WITH inc AS (
    SELECT i.id, i.category, i.decision,
           (i.received_at AT TIME ZONE a.timezone)::date AS day
      FROM incidents i JOIN agencies a ON a.id = i.agency_id
     WHERE i.agency_id = $1
       AND i.received_at >= ($2::date)::timestamp AT TIME ZONE a.timezone
       AND i.received_at < ($3::date + 1)::timestamp AT TIME ZONE a.timezone
), counts AS (
    SELECT inc.day, inc.category,
           count(*) AS received,
           count(*) FILTER (WHERE inc.decision = 'suppressed:category') AS suppressed_category,
           count(*) FILTER (WHERE inc.decision = 'suppressed:stale') AS suppressed_stale,
           count(*) FILTER (WHERE inc.decision = 'suppressed:test') AS suppressed_test,
           count(*) FILTER (WHERE inc.decision = 'suppressed:unmapped') AS suppressed_unmapped,
           count(*) FILTER (WHERE inc.decision IN ('suppressed:cleared', 'suppressed:cancelled',
                                                   'suppressed:outdated')) AS suppressed_other,
           count(r.incident_id) AS review_held,
           count(*) FILTER (WHERE r.state = 'approved') AS review_approved,
           count(*) FILTER (WHERE r.state = 'rejected') AS review_rejected,
           count(*) FILTER (WHERE r.state = 'expired') AS review_expired,
           count(*) FILTER (WHERE inc.decision = 'alert') AS alerted
      FROM inc LEFT JOIN review_items r ON r.incident_id = inc.id
     GROUP BY inc.day, inc.category
), reached AS (
    SELECT inc.day, inc.category, count(*) AS devices_reached,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY d.latency_ms) AS latency_p50_ms,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY d.latency_ms) AS latency_p95_ms
      FROM inc JOIN deliveries d ON d.incident_id = inc.id AND d.outcome = 'sent'
     GROUP BY inc.day, inc.category
)
SELECT c.*, coalesce(r.devices_reached, 0) AS devices_reached,
       r.latency_p50_ms, r.latency_p95_ms
  FROM counts c LEFT JOIN reached r USING (day, category)
"""


@dataclass(frozen=True)
class DayCounts:
    day: dt.date
    category: str
    counts: dict[str, float | None]


async def report(pool: asyncpg.Pool, agency_id: str, first: dt.date, last: dt.date
                 ) -> list[DayCounts]:
    """Rolled-up days from ``transparency_daily``, later ones counted live."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        through = await conn.fetchval(
            "SELECT through FROM transparency_rollups WHERE agency_id = $1", agency_id)
        rows = list(await conn.fetch(
            f"SELECT day, category, {', '.join(COLUMNS)} FROM transparency_daily "  # noqa: S608
            "WHERE agency_id = $1 AND day BETWEEN $2 AND $3", agency_id, first, last))
        live_from = first if through is None else max(first, through + dt.timedelta(days=1))
        if live_from <= last:
            rows += await conn.fetch(_LIVE, agency_id, live_from, last)
    rows.sort(key=lambda r: (r["day"], r["category"]))
    return [DayCounts(r["day"], r["category"], {c: r[c] for c in COLUMNS}) for r in rows]


async def roll_up(pool: asyncpg.Pool, now: dt.datetime) -> int:
    """Roll every agency's finished days into ``transparency_daily``; returns the days
    rolled up. Idempotent: a day is written once, then the watermark moves past it."""
    agencies = await pool.fetch(
        """SELECT a.id, r.through,
                  ((($1::timestamptz - $2::interval) AT TIME ZONE a.timezone)::date - 1)
                      AS last_done,
                  (SELECT (min(i.received_at) AT TIME ZONE a.timezone)::date
                     FROM incidents i WHERE i.agency_id = a.id) AS first_seen
             FROM agencies a LEFT JOIN transparency_rollups r ON r.agency_id = a.id""",
        now, ROLLUP_AFTER)
    days = 0
    for a in agencies:
        if a["first_seen"] is None:
            continue
        first = a["first_seen"] if a["through"] is None else a["through"] + dt.timedelta(days=1)
        last = a["last_done"]
        if first > last:
            continue
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO transparency_daily (agency_id, day, category, "  # noqa: S608
                f"{', '.join(COLUMNS)}) SELECT $1, day, category, {', '.join(COLUMNS)} "
                f"FROM ({_LIVE}) live ON CONFLICT (agency_id, day, category) DO NOTHING",
                a["id"], first, last)
            await conn.execute(
                """INSERT INTO transparency_rollups (agency_id, through) VALUES ($1, $2)
                   ON CONFLICT (agency_id) DO UPDATE SET through = excluded.through""",
                a["id"], last)
        days += (last - first).days + 1
    return days


async def delete_old_deliveries(pool: asyncpg.Pool, before: dt.datetime, batch: int) -> int:
    """Up to ``batch`` delivery records created before ``before``. Walks the primary key
    from the oldest (ids grow with time), so it needs no index on created_at on the
    table every push writes, and locks only the rows it deletes."""
    status = await pool.execute(
        """DELETE FROM deliveries WHERE id IN (
               SELECT id FROM deliveries WHERE created_at < $1 ORDER BY id LIMIT $2)""",
        before, batch)
    return int(status.split()[-1])


async def delete_old_incidents(pool: asyncpg.Pool, before: dt.datetime, batch: int) -> int:
    """Up to ``batch`` incidents received before ``before``, and with them (cascade)
    their review items, outbox rows and any delivery record left."""
    status = await pool.execute(
        """DELETE FROM incidents WHERE id IN (
               SELECT id FROM incidents WHERE received_at < $1 ORDER BY received_at
                LIMIT $2)""",
        before, batch)
    return int(status.split()[-1])
