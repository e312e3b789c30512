"""``deliveries`` has no foreign keys (migration 0011); triggers do what they did. A
deleted device's rows are unlinked (device_id NULL) and a deleted incident's rows
deleted: by the triggers on ``devices`` and ``incidents`` for the rows already
written, and by the trigger on ``deliveries`` for rows written after the deletion (a
push in flight when its device was erased). Both orders of a deletion racing a
recording end with no row pointing at what was deleted, and the other rows as
written; so does any sequence of recordings and deletions (hypothesis). Real
PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.store import deliveries
from tests.conftest import Services
from tests.helpers import SyncWorld
from workers.maintenance import Retention, maintain_once

OUTCOMES = ["sent", "token_gone", "retry", "failed", "dead", "withdrawn"]
LOCK = 7450483687065745001   # 'geopdevi': the triggers' advisory lock (migration 0011)


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
        if await pool.fetchval(query, LOCK):
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


_INSERT = """INSERT INTO deliveries (incident_id, device_id, platform, outcome)
              VALUES ($1::uuid, $2::uuid, 'fcm', 'sent')"""


async def test_a_device_erased_while_its_push_is_being_recorded_waits_then_unlinks(
        pool: asyncpg.Pool) -> None:
    """A recording has written its row, uncommitted (any writer of deliveries: the
    trigger is the table's); the deletion waits for it to commit, then unlinks the new
    row too."""
    incident = await _incident(pool)
    devices = await _devices(pool, 2)
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        for device in devices:
            await conn.execute(_INSERT, incident, device)
        deleting = asyncio.create_task(
            pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0]))
        await _waiting_on_the_lock(pool)
        assert not deleting.done()
        await tx.commit()
    await asyncio.wait_for(deleting, 10)
    assert await _linked(pool) == [None, devices[1]]


async def test_a_push_recorded_while_its_device_is_being_erased_waits_then_unlinks(
        pool: asyncpg.Pool) -> None:
    """The deletion has run, uncommitted; the recording (the sender's COPY) waits for
    it, then finds the device erased and unlinks its row."""
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


async def test_erasure_keeps_a_tag_not_the_id_and_forgets_it_after_a_day(
        pool: asyncpg.Pool) -> None:
    devices = await _devices(pool, 2)
    tags = [await pool.fetchval("SELECT geopush_device_tag($1::uuid)", d) for d in devices]
    await pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0])
    await pool.execute("UPDATE erased_device_tags SET erased_at = now() - interval '25 hours'")
    await pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[1])
    kept = await pool.fetch("SELECT * FROM erased_device_tags")
    assert sorted(r["tag"] for r in kept) == sorted(tags)
    assert all(0 <= t < 65536 for t in tags)
    await maintain_once(pool, Retention())
    assert [r["tag"] for r in await pool.fetch("SELECT tag FROM erased_device_tags")] == [
        tags[1]]


async def test_a_tag_shared_with_an_erased_device_keeps_a_live_device_linked(
        pool: asyncpg.Pool) -> None:
    """A tag says "may be erased"; the device is looked up before its row is unlinked."""
    incident = await _incident(pool)
    devices = await _devices(pool, 2)
    await pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0])
    await pool.execute("INSERT INTO erased_device_tags (tag) "
                       "VALUES (geopush_device_tag($1::uuid))", devices[1])
    await deliveries.record(pool, [_row(incident, d) for d in devices])
    assert await _linked(pool) == [None, devices[1]]


async def test_rows_of_a_deleted_incident_are_dropped_and_erased_devices_unlinked(
        pool: asyncpg.Pool) -> None:
    """Deleting an incident deletes its rows; rows written for it afterwards are
    dropped, in the same batch as an erased device's row, which is unlinked."""
    kept, gone = await _incident(pool), await _incident(pool)
    devices = await _devices(pool, 2)
    await deliveries.record(pool, [_row(gone, devices[0])])
    await pool.execute("DELETE FROM incidents WHERE id = $1::uuid", gone)
    await pool.execute("DELETE FROM devices WHERE id = $1::uuid", devices[0])
    await deliveries.record(pool, [_row(gone, devices[1]), _row(kept, devices[0]),
                                   _row(kept, devices[1])])
    rows = await pool.fetch("SELECT incident_id::text, device_id::text FROM deliveries")
    assert sorted((r["incident_id"], r["device_id"] or "") for r in rows) == sorted([
        (kept, ""), (kept, devices[1])])


async def test_deliveries_has_no_foreign_keys(pool: asyncpg.Pool) -> None:
    """The point of migration 0011: recording a push locks no device or incident row."""
    keys = await pool.fetch(
        """SELECT conname FROM pg_constraint
            WHERE conrelid = 'deliveries'::regclass AND contype = 'f'""")
    assert keys == []


DEVICES = 4
_STEP = st.one_of(
    # A batch of outcomes for some devices (the sender's COPY), some of them erased.
    st.tuples(st.just("record"), st.integers(0, 1),
              st.lists(st.integers(0, DEVICES - 1), min_size=1, max_size=6),
              st.sampled_from(OUTCOMES)),
    st.tuples(st.just("erase"), st.lists(st.integers(0, DEVICES - 1), min_size=1,
                                         max_size=2, unique=True)),
    # One row written by an INSERT (an operator's, say): the triggers are the table's.
    st.tuples(st.just("insert"), st.integers(0, 1), st.integers(0, DEVICES - 1)),
    st.tuples(st.just("delete incident"), st.integers(0, 1)),
)


@pytest.fixture(scope="module")
def world(services: Services) -> Iterator[SyncWorld]:
    w = SyncWorld(services.database_url)
    yield w
    w.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, max_size=10))
def test_no_row_points_at_what_was_deleted_after_any_recordings_and_deletions(
        world: SyncWorld, steps: list[tuple[Any, ...]]) -> None:
    """Whatever the order of recordings and deletions: every row of a device still
    there names it, every row of an erased device is unlinked, the rows of a deleted
    incident are gone, and no other row is lost."""
    world.run(world.pool.execute("TRUNCATE deliveries, erased_device_tags, devices, incidents, "
                                 "agencies RESTART IDENTITY CASCADE"))
    incidents = [world.run(_incident(world.pool)) for _ in range(2)]
    ids = world.run(_devices(world.pool, DEVICES))
    erased: set[str] = set()
    deleted: set[str] = set()
    written: list[tuple[str, str]] = []     # (incident, device) of each row, in order
    for step in steps:
        if step[0] == "record":
            rows = [(incidents[step[1]], ids[i]) for i in step[2]]
            world.run(deliveries.record(world.pool, [_row(i, d, step[3]) for i, d in rows]))
            written += rows
        elif step[0] == "insert":
            world.run(world.pool.execute(_INSERT, incidents[step[1]], ids[step[2]]))
            written.append((incidents[step[1]], ids[step[2]]))
        elif step[0] == "erase":
            gone = [ids[i] for i in step[1]]
            world.run(world.pool.execute("DELETE FROM devices WHERE id = ANY($1::uuid[])",
                                         gone))
            erased.update(gone)
        else:
            world.run(world.pool.execute("DELETE FROM incidents WHERE id = $1::uuid",
                                         incidents[step[1]]))
            deleted.add(incidents[step[1]])
    expected = [(i, None if d in erased else d) for i, d in written if i not in deleted]
    rows = world.run(world.pool.fetch(
        "SELECT incident_id::text, device_id::text FROM deliveries ORDER BY id"))
    assert [(r["incident_id"], r["device_id"]) for r in rows] == expected
