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


async def record(pool: asyncpg.Pool, rows: list[tuple[Any, ...]]) -> None:
    """Rows of ``COLUMNS`` in one binary COPY (cheaper than an INSERT of arrays on both
    sides: docs/BENCHMARKS.md). When a device was erased, or an incident deleted, since
    its push was queued, the foreign keys refuse the COPY: then one INSERT records the
    rows of erased devices unlinked (NULL), as their older rows are, and drops those of
    deleted incidents, as their older rows were."""
    try:
        await pool.copy_records_to_table("deliveries", records=rows, columns=COLUMNS)
        return
    except asyncpg.ForeignKeyViolationError:
        pass
    columns = list(zip(*rows, strict=True))
    await pool.execute(
        """INSERT INTO deliveries (incident_id, device_id, platform, outcome, reason,
                                   status_code, gateway_id, attempt, latency_ms, kind)
           SELECT r.incident_id, d.id, r.platform, r.outcome, r.reason, r.status_code,
                  r.gateway_id, r.attempt, r.latency_ms, r.kind
             FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::int[], $7::text[], $8::int[], $9::int[], $10::text[])
                  AS r(incident_id, device_id, platform, outcome, reason, status_code,
                       gateway_id, attempt, latency_ms, kind)
             JOIN incidents i ON i.id = r.incident_id
             LEFT JOIN devices d ON d.id = r.device_id""",
        *(list(c) for c in columns),
    )
