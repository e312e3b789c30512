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
    sides: docs/BENCHMARKS.md). The table has no foreign keys (their checks locked a
    referenced row per push); its trigger keeps what they did (migration 0011): a row
    of a device erased since its push was queued is written unlinked (NULL), as the
    device's older rows were, and a row of an incident deleted meanwhile is dropped, as
    its older rows were deleted with it."""
    await pool.copy_records_to_table("deliveries", records=rows, columns=COLUMNS)
