"""A Redis Cluster master killed (SIGKILL) while incidents arrive: its replica takes over,
geopush's processes ride through it, and every incident answered 202 reaches every
phone in its zone (a push sent twice only under the same collapse id)."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from server import keys, metrics
from server.dev.devenv import PrivateRedisCluster
from server.settings import Settings
from server.store.redisclient import RedisClient, ReplicaWait, connect, write_all
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, circle, create_agency, create_device, fcm_token, incident
from tests.helpers import post_incident as post

INCIDENTS = 12
DEVICES_PER_PLATFORM = 8


@pytest.fixture
def cluster() -> Iterator[PrivateRedisCluster]:
    """Three masters with a replica each; a dead master is failed over within ~2 s."""
    c = PrivateRedisCluster(Path(tempfile.mkdtemp(prefix="geopush-failover-")),
                            masters=3, replicas=1, node_timeout_ms=1000)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def settings(settings: Settings, cluster: PrivateRedisCluster) -> Settings:
    # Every hand-off waits for a replica: nothing a failover promotes lacks it. No
    # hourly limit: each phone gets every incident.
    return replace(settings, redis_url=cluster.url(), redis_wait_replicas=1,
                   redis_wait_timeout_ms=500, device_pushes_per_hour=0,
                   claim_idle_ms=3000)


@pytest.fixture
async def redis(cluster: PrivateRedisCluster) -> AsyncIterator[RedisClient]:
    client = await connect(cluster.url(), decode_responses=True)
    yield client
    await client.aclose()


def _spot(i: int) -> tuple[float, float]:
    """Incident i's place: 330 m apart, so no two are one event (150 m)."""
    return POINT[0] - 0.018 + 0.003 * i, POINT[1]


async def test_a_killed_master_loses_nothing_accepted(
    stack: Stack, cluster: PrivateRedisCluster, redis: RedisClient
) -> None:
    assert isinstance(redis, RedisCluster)
    secret = await create_agency(stack.client)
    phones: dict[str, str] = {}          # token -> platform
    for _ in range(DEVICES_PER_PLATFORM):
        for platform, token in (("apns", secrets.token_hex(32)), ("fcm", fcm_token())):
            await create_device(stack.client, platform, token, circle(*POINT, 2500))
            phones[token] = platform

    # The master of the incident stream: every incident passes through it.
    await redis.initialize()   # the slot map
    node = redis.get_node_from_key(keys.INCIDENTS_STREAM)
    assert node is not None
    [victim] = [n for n in cluster.nodes if n.port == node.port]
    accepted: list[str] = []

    async def post_one(i: int) -> None:
        lat, lon = _spot(i)
        status, body = await post(stack.client, secret,
                                  incident(f"F-failover-{i}", lat=lat, lon=lon))
        assert (status, body["decision"]) == (202, "alert"), body
        accepted.append(body["incident_id"])

    heirs = cluster.replicas_of(victim)
    assert heirs
    for i in range(INCIDENTS // 2):
        await post_one(i)
    victim.kill()                        # SIGKILL: no shutdown, nothing flushed
    for i in range(INCIDENTS // 2, INCIDENTS):   # while the cluster notices, then after
        await post_one(i)
        await asyncio.sleep(0.3)
    await asyncio.to_thread(cluster.wait_for_failover, heirs)
    live = [n for n in cluster.nodes if n.process is not None]
    assert sum(cluster.role(n) == "master" for n in live) == 3    # the replica took over

    expected = {(token, incident_id) for token in phones for incident_id in accepted}

    def delivered() -> set[tuple[str, str]]:
        got = {(d.token, d.headers["apns-collapse-id"]) for d in stack.apns.deliveries}
        got |= {(d.token or "", d.message["android"]["collapse_key"])
                for d in stack.fcm.deliveries}
        return got

    await wait_for(lambda: expected <= delivered(), within=60,
                   what=f"{len(expected)} pushes after the failover")
    assert delivered() == expected       # nothing else went out
    await stack.drained(within=30)
    assert await stack.pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_hand_off_returns_once_a_replica_has_it(
    cluster: PrivateRedisCluster, redis: RedisClient
) -> None:
    """What the test above relies on: writes to several masters, then WAIT on each of
    them; what a replica lacks within the timeout is counted, never waited out."""
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    streams = [keys.INCIDENTS_STREAM, *keys.push_streams("apns", 8)]
    writes = [(s, ("XADD", s, "*", "incident_id", "x")) for s in streams]
    assert len({redis.get_node_from_key(s).name for s in streams}) == 3   # every master
    before = metrics.UNREPLICATED_WRITES._value.get()

    replies = await write_all(redis, writes, ReplicaWait(replicas=1, timeout_ms=5000))
    assert all(isinstance(r, str) for r in replies), replies
    assert metrics.UNREPLICATED_WRITES._value.get() == before
    for stream in streams:               # each on its master's replica already
        [replica] = cluster.replicas_of(next(
            n for n in cluster.nodes if n.port == redis.get_node_from_key(stream).port))
        assert await _replica_xlen(replica.port, stream) == 1

    # Two replicas asked for, one each: counted after the timeout, not an error.
    replies = await write_all(redis, writes, ReplicaWait(replicas=2, timeout_ms=100))
    assert all(isinstance(r, str) for r in replies), replies
    assert metrics.UNREPLICATED_WRITES._value.get() == before + len(writes)


async def _replica_xlen(port: int, stream: str) -> int:
    replica = Redis(port=port, decode_responses=True)
    try:
        await replica.execute_command("READONLY")
        return int(await replica.xlen(stream))
    finally:
        await replica.aclose()
