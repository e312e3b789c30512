"""A deleted device's delivery rows are unlinked (device_id NULL), with no foreign key
on ``deliveries.device_id`` (migration 0011): by the trigger on ``devices`` for the
rows already written, and by ``deliveries.record`` for a push recorded after its device
was erased. Both orders of a deletion racing a recording end with no row pointing at
the deleted device, and the other rows as written (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from server.store import deliveries

OUTCOMES = ["sent", "token_gone", "retry", "failed", "dead", "withdrawn"]


async def _incident(pool: asyncpg.Pool) -> str:
    await pool.execute(
        """INSERT INTO agencies (id, name, timezone, signing_secret)
           VALUES ('a', 'A', 'UTC', 's') ON CONFLICT DO NOTHING""")
    return str(await pool.fetchval(
        """INSERT INTO incidents (agency_id, external_id, revision, status, call_type,
                                  category, occurred_at, geom, public_point, decision)
           VALUES ('a', $1, now(), 'active', 'Fire', 'structure_fire', now(),
                   ST_SetSRID(ST_MakePoint(-122.3, 47.6), 4326),
                   ST_SetSRID(ST_MakePoint(-122.3, 47.6), 4326), 'alert')
           RETURNING id""", secrets.token_hex(4)))


async def _devices(pool: asyncpg.Pool, n: int) -> list[str]:
    return [str(await pool.fetchval(
        """INSERT INTO devices (platform, token, secret_hash) VALUES ('fcm', $1, '\\x00')
           RETURNING id""", secrets.token_hex(32))) for _ in range(n)]


def _row(incident: str, device: str, outcome: str = "sent") -> tuple[Any, ...]:
    return (incident, device, "fcm", outcome, None, 200, "m", 1, 5, "alert")


async def _linked(pool: asyncpg.Pool) -> list[str | None]:
    rows = await pool.fetch("SELECT device_id::text FROM deliveries ORDER BY id")
    return [r["device_id"] for r in rows]


async def _waiting_on_the_lock(pool: asyncpg.Pool) -> None:
    """Until some backend waits for ``DEVICE_LINK_LOCK`` (PostgreSQL has no event to
    await)."""
    query = """SELECT count(*) FROM pg_locks
                WHERE locktype = 'advisory' AND NOT granted
                  AND ((classid::bigint << 32) | objid::bigint) = $1"""
    for _ in range(1000):
        if await pool.fetchval(query, deliveries.DEVICE_LINK_LOCK):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody waited for the device link lock")


async def test_deleting_devices_unlinks_their_rows_of_every_outcome(
        pool: asyncpg.Pool) -> None:
    incident = await _incident(pool)
    erased, kept = await _devices(pool, 2), await _devices(pool, 1)
    await deliveries.record(pool, [_row(incident, d, outcome)
                                   for d in [*erased, *kept] for outcome in OUTCOMES])
    # One statement deleting two devices (the trigger runs once for the statement).
    await pool.execute("DELETE FROM devices WHERE id = ANY($1::uuid[])", erased)
    assert await _linked(pool) == [None] * (2 * len(OUTCOMES)) + kept * len(OUTCOMES)


async def test_a_push_recorded_after_its_device_was_erased_is_unlinked(
        pool: asyncpg.Pool) -> None:
    incident = await _incident(pool)
    devices = await _devices(pool, 3)
    await pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[1])
    await deliveries.record(pool, [_row(incident, d) for d in devices])
    assert await _linked(pool) == [devices[0], None, devices[2]]


class _PausingPool:
    """The pool ``record`` is given: its COPY completes, then the transaction waits for
    ``go`` before committing."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.copied = asyncio.Event()
        self.go = asyncio.Event()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            yield _PausingConnection(conn, self)


class _PausingConnection:
    def __init__(self, conn: asyncpg.Connection, owner: _PausingPool) -> None:
        self._conn = conn
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> str:
        result: str = await self._conn.copy_records_to_table(*args, **kwargs)
        self._owner.copied.set()
        await self._owner.go.wait()
        return result


async def test_a_device_erased_while_its_push_is_being_recorded_waits_then_unlinks(
        pool: asyncpg.Pool) -> None:
    """The recording has looked the devices up and written the rows, uncommitted; the
    deletion waits for it to commit, then unlinks the new rows too."""
    incident = await _incident(pool)
    devices = await _devices(pool, 2)
    pausing = _PausingPool(pool)
    recording = asyncio.create_task(deliveries.record(
        pausing, [_row(incident, d) for d in devices]))  # type: ignore[arg-type]
    await asyncio.wait_for(pausing.copied.wait(), 10)
    deleting = asyncio.create_task(
        pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0]))
    await _waiting_on_the_lock(pool)
    assert not deleting.done()
    pausing.go.set()
    await asyncio.wait_for(asyncio.gather(recording, deleting), 10)
    assert await _linked(pool) == [None, devices[1]]


async def test_a_push_recorded_while_its_device_is_being_erased_waits_then_unlinks(
        pool: asyncpg.Pool) -> None:
    """The deletion has run, uncommitted; the recording waits for it, then sees the
    device gone and writes its row unlinked."""
    incident = await _incident(pool)
    devices = await _devices(pool, 2)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0])
        recording = asyncio.create_task(
            deliveries.record(pool, [_row(incident, d) for d in devices]))
        await _waiting_on_the_lock(pool)
        assert not recording.done()
        await tx.commit()
    await asyncio.wait_for(recording, 10)
    assert await _linked(pool) == [None, devices[1]]


async def test_rows_of_a_deleted_incident_are_dropped_and_erased_devices_unlinked(
        pool: asyncpg.Pool) -> None:
    """The incident's key refuses the COPY; the batch is written again without the
    deleted incident's rows, the erased device's row still unlinked."""
    kept, gone = await _incident(pool), await _incident(pool)
    devices = await _devices(pool, 2)
    await pool.execute("DELETE FROM incidents WHERE id = $1::uuid", gone)
    await pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0])
    await deliveries.record(pool, [_row(gone, devices[1]), _row(kept, devices[0]),
                                   _row(kept, devices[1])])
    rows = await pool.fetch("SELECT incident_id::text, device_id::text FROM deliveries")
    assert sorted((r["incident_id"], r["device_id"] or "") for r in rows) == sorted([
        (kept, ""), (kept, devices[1])])


async def test_deliveries_has_no_key_to_devices(pool: asyncpg.Pool) -> None:
    """The point of migration 0011: recording a push locks no device row."""
    keys = await pool.fetch(
        """SELECT conname FROM pg_constraint
            WHERE conrelid = 'deliveries'::regclass AND contype = 'f'
              AND confrelid = 'devices'::regclass""")
    assert keys == []
