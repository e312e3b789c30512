"""The Redis client factory on a real 3-master Redis Cluster and on a single Redis:
cluster detection, scripts pipelined over several slots (and re-loaded where a node
lost them), and every multi-key script or transaction of geopush in one slot."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from server import keys
from server.dev.devenv import PrivateRedis, PrivateRedisCluster, free_port
from server.store import positions
from server.store.ratelimit import LoginLimiter
from server.store.redisclient import RedisClient, connect, eval_many, is_cluster

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateRedisCluster]:
    c = PrivateRedisCluster(Path(tempfile.mkdtemp(prefix="geopush-cluster-")), masters=3)
    c.start()
    yield c
    c.stop()


@pytest.fixture
async def on_cluster(cluster: PrivateRedisCluster) -> AsyncIterator[RedisClient]:
    # Any node will do: the last master, not the URL's.
    client = await connect(cluster.nodes[-1].url(), decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


async def test_a_cluster_node_is_told_from_a_single_redis(
    cluster: PrivateRedisCluster, tmp_path: Path
) -> None:
    assert await is_cluster(cluster.url())
    client = await connect(cluster.url())
    assert isinstance(client, RedisCluster)
    await client.aclose()
    single = PrivateRedis(tmp_path / "single").start()
    try:
        assert not await is_cluster(single.url())
        client = await connect(single.url())
        assert not isinstance(client, RedisCluster)
        await client.aclose()
    finally:
        single.stop()


async def test_a_mode_given_is_not_asked(cluster: PrivateRedisCluster) -> None:
    client = await connect("redis://127.0.0.1:1/0", "standalone")   # nothing listens there
    assert not isinstance(client, RedisCluster)
    await client.aclose()
    with pytest.raises(ValueError, match="unknown redis mode"):
        await connect(cluster.url(), "sentinel")


async def test_scripts_pipelined_over_every_master_in_order(on_cluster: RedisClient) -> None:
    """One call per key, the keys spread over the three masters' slots."""
    script = on_cluster.register_script(INCR)
    names = [f"geopush:test:{i}" for i in range(30)]
    assert isinstance(on_cluster, RedisCluster)
    assert len({on_cluster.get_node_from_key(n).name for n in names}) == 3  # every master
    assert await eval_many(on_cluster, script, [([n], [i]) for i, n in enumerate(names)]) \
        == list(range(30))
    assert await eval_many(on_cluster, script, [([n], [1]) for n in names]) \
        == [i + 1 for i in range(30)]
    assert await eval_many(on_cluster, script, []) == []


async def test_a_node_that_lost_its_scripts_gets_them_again(on_cluster: RedisClient) -> None:
    """A restarted or newly promoted master has an empty script cache: the calls it
    refused (NOSCRIPT: they never ran) run after the script is loaded, once."""
    script = on_cluster.register_script(INCR)
    names = [f"geopush:test:{i}" for i in range(12)]
    await eval_many(on_cluster, script, [([n], [1]) for n in names])
    await on_cluster.script_flush()          # every master forgets every script
    assert await eval_many(on_cluster, script, [([n], [1]) for n in names]) == [2] * 12


async def test_same_on_a_single_redis(redis: RedisClient) -> None:
    script = redis.register_script(INCR)
    await redis.script_flush()
    assert await eval_many(redis, script, [([f"geopush:test:{i}"], [i]) for i in range(5)]) \
        == list(range(5))


async def test_a_script_error_is_raised_not_returned(on_cluster: RedisClient) -> None:
    script = on_cluster.register_script(INCR)
    await on_cluster.set("geopush:test:text", "not a number")
    with pytest.raises(Exception, match="not an integer"):
        await eval_many(on_cluster, script, [(["geopush:test:0"], [1]),
                                             (["geopush:test:text"], [1])])


def test_keys_written_together_share_a_slot() -> None:
    """Every multi-key script or MULTI outside the push path (the push path's keys
    are checked in test_push_shards): positions' GEO set with its report times."""
    for geo, seen in ((keys.RESPONDERS_GEO, keys.RESPONDERS_SEEN),
                      (keys.NEAR_ME_GEO, keys.NEAR_ME_SEEN)):
        assert key_slot(geo.encode()) == key_slot(seen.encode())


async def test_positions_and_sign_in_limits_work_on_the_cluster(
    on_cluster: RedisClient
) -> None:
    await positions.RESPONDERS.report(on_cluster, "d1", 47.6, -122.3)
    assert [n.device_id for n in await positions.RESPONDERS.near(on_cluster, 47.6, -122.3,
                                                                  100)] == ["d1"]
    await positions.forget_device(on_cluster, "d1")
    assert not await on_cluster.exists(keys.RESPONDERS_GEO)

    limiter = LoginLimiter(on_cluster, failures_per_user=2, attempts_per_address=100)
    # The user's and the address's counters are in different slots.
    assert key_slot(keys.login_failures("dana").encode()) != key_slot(
        keys.login_attempts("a1").encode())
    for _ in range(2):
        assert (await limiter.check("dana", "a1")).allowed
        await limiter.attempted("dana", "a1", succeeded=False)
    verdict = await limiter.check("dana", "a2")
    assert not verdict.allowed and verdict.retry_after_s > 0
    await limiter.attempted("dana", "a2", succeeded=True)
    assert (await limiter.check("dana", "a3")).allowed
    assert int(await on_cluster.get(keys.login_attempts("a1")) or 0) == 2


async def test_positions_under_the_names_of_before_the_hash_tags_are_moved(
    redis: RedisClient
) -> None:
    if isinstance(redis, RedisCluster):
        pytest.skip("only a single Redis can hold the old names")
    old_geo, old_seen = keys.LEGACY_POSITION_KEYS[2][0], keys.LEGACY_POSITION_KEYS[3][0]
    await redis.geoadd(old_geo, (-122.3, 47.6, "old"))
    await redis.zadd(old_seen, {"old": 1000.0})
    assert await positions.adopt_legacy_keys(redis) == 2
    assert not await redis.exists(old_geo, old_seen)
    assert await redis.zscore(keys.NEAR_ME_SEEN, "old") == 1000.0
    # Written by an old web process during a rolling upgrade, after the move: merged,
    # and what the new name holds for the same device (newer) is kept.
    await redis.zadd(old_seen, {"old": 1.0, "older": 2.0})
    assert await positions.adopt_legacy_keys(redis) == 2
    assert await redis.zscore(keys.NEAR_ME_SEEN, "old") == 1000.0
    assert await redis.zscore(keys.NEAR_ME_SEEN, "older") == 2.0
    assert await positions.adopt_legacy_keys(redis) == 0


async def test_auto_mode_waits_for_redis_to_come_up(tmp_path: Path) -> None:
    """A process started before its Redis asks again until the node answers, rather
    than guessing which client to use."""
    later = PrivateRedis(tmp_path / "later", port=free_port())
    connecting = asyncio.create_task(connect(later.url(), socket_connect_timeout=0.5))
    await asyncio.sleep(0.5)
    assert not connecting.done()         # nothing listens yet: still asking
    later.start()
    try:
        client = await asyncio.wait_for(connecting, 30)
        assert not isinstance(client, RedisCluster)
        assert await client.ping()
        await client.aclose()
    finally:
        later.stop()


async def test_a_new_client_takes_a_burst_of_first_commands(
    cluster: PrivateRedisCluster
) -> None:
    """A web process's first requests arrive together. redis-py 8.1's cluster client,
    left to learn the slot map from concurrent first commands, failed some of them
    with AttributeError (a connection closed under them; 6 of 240 here): the factory
    learns it before handing the client out."""
    for trial in range(20):
        client = await connect(cluster.url(), socket_timeout=2, socket_connect_timeout=2)
        script = client.register_script(INCR)
        replies = await asyncio.gather(
            *(script(keys=[f"geopush:test:burst:{trial}"], args=[1]) for _ in range(12)),
            return_exceptions=True)
        await client.aclose()
        assert sorted(replies) == list(range(1, 13)), replies


async def test_cluster_mode_starts_before_the_cluster_and_learns_it_later(
    tmp_path: Path
) -> None:
    """GEOPUSH_REDIS_MODE=cluster: the process starts while the cluster is down (the
    web keeps accepting incidents into the outbox), and the client learns the slot
    map once the cluster answers, before a burst of commands needs it."""
    port = free_port()
    client = await connect(f"redis://127.0.0.1:{port}/0", "cluster",
                           socket_connect_timeout=0.5)
    assert isinstance(client, RedisCluster)
    cluster = PrivateRedisCluster(tmp_path / "later", first_port=port)
    await asyncio.to_thread(cluster.start)
    try:
        script = client.register_script(INCR)

        async def learnt() -> bool:
            return not client._initialize      # redis-py's own flag: slots known

        for _ in range(300):
            if await learnt():
                break
            await asyncio.sleep(0.05)
        assert await learnt()
        replies = await asyncio.gather(
            *(script(keys=["geopush:test:later"], args=[1]) for _ in range(12)))
        assert sorted(replies) == list(range(1, 13))
    finally:
        await client.aclose()
        cluster.stop()
