"""What is waiting, for the metrics: the outbox and the editors' review queue."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Queue:
    size: int
    oldest_s: float     # 0 when empty


async def outbox(pool: asyncpg.Pool, now: dt.datetime) -> Queue:
    row = await pool.fetchrow("SELECT count(*) AS n, min(created_at) AS oldest FROM outbox")
    return _queue(row, now)


async def review_queue(pool: asyncpg.Pool, now: dt.datetime) -> Queue:
    row = await pool.fetchrow(
        """SELECT count(*) AS n, min(created_at) AS oldest FROM review_items
            WHERE state = 'pending' AND expires_at > $1""", now)
    return _queue(row, now)


def _queue(row: asyncpg.Record | None, now: dt.datetime) -> Queue:
    if row is None or row["oldest"] is None:
        return Queue(0, 0.0)
    return Queue(int(row["n"]), max(0.0, (now - row["oldest"]).total_seconds()))
