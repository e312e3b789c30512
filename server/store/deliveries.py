"""What the senders write and read: delivery outcomes, and which incidents were
withdrawn while their pushes waited."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg

COLUMNS = ["incident_id", "device_id", "platform", "outcome", "reason", "status_code",
           "gateway_id", "attempt", "latency_ms", "kind"]


async def withdrawn(pool: asyncpg.Pool, incident_ids: Collection[str]) -> set[str]:
    """Of these incidents, those cleared, cancelled or re-decided (no longer alerting)."""
    rows = await pool.fetch(
        """SELECT id::text FROM incidents
            WHERE id = ANY($1::uuid[]) AND (status <> 'active' OR decision <> 'alert')""",
        sorted(incident_ids),
    )
    return {r["id"] for r in rows}


# Held shared while a batch is recorded, exclusively by the trigger that unlinks a
# deleted device's rows (migration 0011): 'geopdevi'.
DEVICE_LINK_LOCK = 7450483687065745001


async def record(pool: asyncpg.Pool, rows: list[tuple[Any, ...]]) -> None:
    """Rows of ``COLUMNS`` in one binary COPY (cheaper than an INSERT of arrays on both
    sides: docs/BENCHMARKS.md).

    ``device_id`` has no foreign key (migration 0011: its check locked the device's row
    for every push). In its place: holding ``DEVICE_LINK_LOCK`` shared, the devices that
    no longer exist are looked up first and their rows written unlinked (NULL), as the
    key's ON DELETE SET NULL left their older rows; a device deleted meanwhile waits
    for this transaction and then unlinks what it wrote. When an incident was deleted
    since its push was queued, its key refuses the COPY: then the batch is written again
    without that incident's rows, as its older rows were deleted with it."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await _link_devices(conn, rows)
                await conn.copy_records_to_table("deliveries", records=rows, columns=COLUMNS)
            return
        except asyncpg.ForeignKeyViolationError:
            pass
        async with conn.transaction():
            rows = await _link_devices(conn, rows)
            columns = list(zip(*rows, strict=True))
            await conn.execute(
                """INSERT INTO deliveries (incident_id, device_id, platform, outcome, reason,
                                           status_code, gateway_id, attempt, latency_ms, kind)
                   SELECT r.incident_id, r.device_id, r.platform, r.outcome, r.reason,
                          r.status_code, r.gateway_id, r.attempt, r.latency_ms, r.kind
                     FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                 $6::int[], $7::text[], $8::int[], $9::int[], $10::text[])
                          AS r(incident_id, device_id, platform, outcome, reason, status_code,
                               gateway_id, attempt, latency_ms, kind)
                     JOIN incidents i ON i.id = r.incident_id""",
                *(list(c) for c in columns),
            )


async def _link_devices(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]
                        ) -> list[tuple[Any, ...]]:
    """Takes ``DEVICE_LINK_LOCK`` shared (for the rest of the transaction), then returns
    ``rows`` with the ids of devices that no longer exist replaced by NULL (in place:
    the caller's list). The lock is taken by a statement of its own: the lookup's
    snapshot must be taken after it, so that it sees a deletion it waited for."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", DEVICE_LINK_LOCK)
    gone = await conn.fetch(
        """SELECT u.id FROM unnest($1::uuid[]) AS u(id)
            WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = u.id)""",
        list({row[1] for row in rows if row[1] is not None}))
    if gone:
        erased = {str(r["id"]) for r in gone}
        rows[:] = [(row[0], None, *row[2:]) if row[1] is not None and str(row[1]) in erased
                   else row for row in rows]
    return rows
