"""Matching reads from a real streaming replica (GEOPUSH_DATABASE_REPLICA_URL), and a
replica that lags, is paused or is gone never costs an incident.

The fixture starts a PostgreSQL primary of its own and a hot standby of it
(``pg_basebackup -R``, streaming replication), so these tests hold whatever database
the rest of the suite uses. A paused standby (``pg_wal_replay_pause()``) is a replica
lagging as far as one can: the incident it has not replayed must still be matched,
with every device the primary knows, including one registered a moment before.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from server import keys
from server.dev.devenv import PrivatePostgres, free_port
from server.settings import Settings
from server.store.db import create_pool
from server.store.migrate import migrate
from server.store.replica import ReplicaReads
from server.web.app import create_app
from tests.e2e.conftest import wait_for
from tests.helpers import POINT, circle, create_agency, create_device, incident, post_incident
from workers.matcher import Matcher
from workers.push import Push
from workers.runner import worker_main
from workers.streams import StreamConsumer

DATABASE = "geopush_replica_test"
_TABLES = "deliveries, zones, neighbourhoods, devices, outbox, incidents, agencies"


@dataclass(frozen=True)
class Pair:
    primary_url: str
    replica_url: str


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    base = Path(tempfile.mkdtemp(prefix="geopush-replica-"))
    base.chmod(0o755)  # the postgres user must reach both clusters
    primary = PrivatePostgres(base / "primary").start()
    standby: PrivatePostgres | None = None
    try:
        url = primary.create_database(DATABASE)
        asyncio.run(migrate(url))
        standby = primary.start_standby(base / "standby")
        yield Pair(url, standby.url(DATABASE))
    finally:
        if standby:
            standby.stop()
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)
        for cluster in (primary, standby):
            if cluster and not cluster.directory.is_relative_to(base.resolve()):
                shutil.rmtree(cluster.directory, ignore_errors=True)


@dataclass
class Stack:
    client: TestClient[Any, Any]
    primary: asyncpg.Pool
    replica: asyncpg.Pool
    redis: aioredis.Redis
    settings: Settings
    replica_url: str


@pytest.fixture
async def stack(pair: Pair, settings: Settings, redis: aioredis.Redis
                ) -> AsyncIterator[Stack]:
    """The web app on the primary, and a pool on each server (the tables emptied)."""
    primary = await create_pool(pair.primary_url)
    replica = await create_pool(pair.replica_url)
    await primary.execute(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")
    on_primary = replace(settings, database_url=pair.primary_url)
    try:
        async with TestClient(TestServer(create_app(on_primary))) as client:
            yield Stack(client, primary, replica, redis, on_primary, pair.replica_url)
    finally:
        # A test that failed with replay paused must not leave it so for the next.
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()
        await primary.close()


async def queued_tokens(redis: aioredis.Redis) -> set[str]:
    """Tokens of every push on any push stream."""
    tokens = set()
    async for stream in redis.scan_iter(match="geopush:*push:*", _type="STREAM"):
        entries: Any = await redis.xrange(stream)
        for _, fields in entries:
            tokens.add(Push.from_fields(fields).token)
    return tokens


def reads(outcome: str) -> float:
    value = REGISTRY.get_sample_value("geopush_replica_reads_total",
                                              {"outcome": outcome})
    return value or 0.0


async def device_near_point(client: TestClient[Any, Any]) -> str:
    token = secrets.token_hex(32)
    await create_device(client, "apns", token, circle(*POINT, 1000))
    return token


async def match_what_is_on_the_stream(matcher: Matcher, redis: aioredis.Redis) -> None:
    consumer = StreamConsumer(redis, keys.INCIDENTS_STREAM, keys.MATCHER_GROUP, "test")
    await consumer.setup()
    entries = await consumer.read()
    assert entries, "nothing on the incident stream"
    await matcher.handle(consumer, entries)


async def test_a_caught_up_replica_serves_the_matchers_reads(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    token = await device_near_point(stack.client)
    status, accepted = await post_incident(stack.client, secret, incident("R1"))
    assert (status, accepted["decision"]) == (202, "alert"), accepted
    before = reads("replica")

    # A generous wait: the standby streams and catches up in milliseconds.
    matcher = Matcher(stack.primary, stack.redis, device_pushes_per_hour=0,
                      reads=ReplicaReads(stack.primary, stack.replica, wait_s=30))
    await match_what_is_on_the_stream(matcher, stack.redis)

    assert await queued_tokens(stack.redis) == {token}
    assert reads("replica") == before + 1
    # The replica really is a standby of the primary, holding what was matched.
    assert await stack.replica.fetchval("SELECT pg_is_in_recovery()")
    assert await stack.replica.fetchval(
        "SELECT count(*) FROM incidents WHERE id = $1", accepted["incident_id"]) == 1


async def test_a_paused_replica_costs_no_incident_and_no_new_device(stack: Stack) -> None:
    """The matcher worker as it runs in production, with GEOPUSH_DATABASE_REPLICA_URL:
    while the replica replays nothing, an incident and a device registered just
    before it are matched from the primary; once it caught up again, from the replica."""
    secret = await create_agency(stack.client)
    earlier = await device_near_point(stack.client)
    await stack.replica.execute("SELECT pg_wal_replay_pause()")
    await wait_for(lambda: _paused(stack.replica), what="replay to pause")
    newcomer = await device_near_point(stack.client)
    status, accepted = await post_incident(stack.client, secret, incident("R2"))
    assert (status, accepted["decision"]) == (202, "alert"), accepted
    # The replica has neither the incident nor the newcomer's device.
    assert await stack.replica.fetchval(
        "SELECT count(*) FROM incidents WHERE id = $1", accepted["incident_id"]) == 0
    assert await stack.replica.fetchval("SELECT count(*) FROM devices") == 1

    lagging, replica_reads = reads("lagging"), reads("replica")
    settings = replace(stack.settings, database_replica_url=stack.replica_url,
                       replica_wait_ms=100, consumer_name="test-matcher")
    stop = asyncio.Event()
    worker = asyncio.create_task(worker_main(settings, "matcher", stop))
    try:
        await wait_for(lambda: _queued_is(stack.redis, {earlier, newcomer}), within=30,
                       what="both devices' pushes from the paused replica's matcher")
        assert reads("lagging") > lagging
        assert reads("replica") == replica_reads

        # Replay resumes: the next incident is matched on the replica again.
        await stack.replica.execute("SELECT pg_wal_replay_resume()")
        _, second = await post_incident(stack.client, secret, incident(
            "R3", call_type="Residential Fire"))
        await wait_for(lambda: _stream_empty(stack.redis), within=30,
                       what="the second incident to be matched")
        assert reads("replica") > replica_reads
        assert await stack.replica.fetchval(
            "SELECT count(*) FROM incidents WHERE id = $1", second["incident_id"]) == 1
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=20)


@pytest.fixture
async def unreachable() -> AsyncIterator[asyncpg.Pool]:
    """A pool for a replica that is not there (nothing listens on its port)."""
    pool = await create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                             min_size=0, connect_timeout=2)
    yield pool
    await pool.close()


async def an_incident_near_a_device(stack: Stack, external_id: str) -> str:
    """A device near POINT and an incident there, on the stream; the device's token."""
    secret = await create_agency(stack.client)
    token = await device_near_point(stack.client)
    status, _ = await post_incident(stack.client, secret, incident(external_id))
    assert status == 202
    return token


async def test_an_unreachable_replica_sends_reads_to_the_primary(
    stack: Stack, unreachable: asyncpg.Pool
) -> None:
    token = await an_incident_near_a_device(stack, "R4")
    unavailable = reads("unavailable")
    matcher = Matcher(stack.primary, stack.redis, device_pushes_per_hour=0,
                      reads=ReplicaReads(stack.primary, unreachable, wait_s=0.1))
    await match_what_is_on_the_stream(matcher, stack.redis)
    assert await queued_tokens(stack.redis) == {token}
    assert reads("unavailable") == unavailable + 1


class _CheckedThenGone(ReplicaReads):
    """A replica that passed its check and died before the batch's reads."""

    async def pool(self) -> asyncpg.Pool:
        return self.replica


async def test_a_replica_failing_mid_batch_hands_the_batch_to_the_primary(
    stack: Stack, unreachable: asyncpg.Pool
) -> None:
    token = await an_incident_near_a_device(stack, "R5")
    matcher = Matcher(stack.primary, stack.redis, device_pushes_per_hour=0,
                      reads=_CheckedThenGone(stack.primary, unreachable, wait_s=0.1))
    await match_what_is_on_the_stream(matcher, stack.redis)
    assert await queued_tokens(stack.redis) == {token}
    # Handled, acknowledged: nothing left for another matcher to redo.
    [group] = await stack.redis.xinfo_groups(keys.INCIDENTS_STREAM)
    assert group["pending"] == 0


class _ReplayConflicts:
    """A hot standby cancelling every query for a conflict with recovery (what a long
    match on a busy standby may meet), as asyncpg reports it."""

    async def _cancelled(self, *args: object, **kwargs: object) -> None:
        raise asyncpg.exceptions.SerializationError(
            "canceling statement due to conflict with recovery")

    fetch = fetchrow = fetchval = _cancelled


async def test_a_query_the_replica_cancels_is_run_on_the_primary(stack: Stack) -> None:
    token = await an_incident_near_a_device(stack, "R6")
    conflicting: Any = _ReplayConflicts()
    matcher = Matcher(stack.primary, stack.redis, device_pushes_per_hour=0,
                      reads=_CheckedThenGone(stack.primary, conflicting, wait_s=0.1))
    await match_what_is_on_the_stream(matcher, stack.redis)
    assert await queued_tokens(stack.redis) == {token}


async def _paused(replica: asyncpg.Pool) -> bool:
    state: str = await replica.fetchval("SELECT pg_get_wal_replay_pause_state()")
    return state == "paused"


async def _queued_is(redis: aioredis.Redis, tokens: set[str]) -> bool:
    return await queued_tokens(redis) == tokens


async def _stream_empty(redis: aioredis.Redis) -> bool:
    """Every incident published so far was read and acknowledged by the matcher."""
    groups = await redis.xinfo_groups(keys.INCIDENTS_STREAM)
    return all(g["pending"] == 0 and g.get("lag") == 0 for g in groups)

