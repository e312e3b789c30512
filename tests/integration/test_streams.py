"""workers.streams against a real Redis: reclaiming idle entries never hands a
consumer back what it is still working on, or what it finished meanwhile."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from workers.streams import ShardedConsumer, StreamConsumer

STREAM, GROUP = "test:stream", "test-group"


async def _consumer(redis: aioredis.Redis, name: str) -> StreamConsumer:
    consumer = StreamConsumer(redis, STREAM, GROUP, name, batch=10, block_ms=10,
                              claim_idle_ms=0, claim_every_s=0)
    await consumer.setup()
    return consumer


async def test_claim_skips_entries_in_flight_and_entries_acknowledged_meanwhile(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    consumer = await _consumer(redis, "c1")
    for n in range(3):
        await redis.xadd(STREAM, {"n": str(n)})
    entries = await consumer.read()
    assert [fields["n"] for _, fields in entries] == ["0", "1", "2"]
    first = entries[0][0]

    original = redis.xautoclaim

    async def racing(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)   # Redis hands over all three...
        await consumer.ack([first])                # ...while another task finishes one
        return result

    monkeypatch.setattr(redis, "xautoclaim", racing)
    assert await consumer.read() == []             # two in flight, one done: none again
    monkeypatch.undo()

    # A consumer that died with entries pending: another one gets them.
    other = await _consumer(redis, "c2")
    assert sorted(fields["n"] for _, fields in await other.read()) == ["1", "2"]


async def test_released_entries_are_claimed_again(redis: aioredis.Redis) -> None:
    consumer = await _consumer(redis, "c1")
    await redis.xadd(STREAM, {"n": "0"})
    [(entry_id, _)] = await consumer.read()
    consumer.release([entry_id])                   # e.g. recording it failed
    assert [eid for eid, _ in await consumer.read()] == [entry_id]
    await consumer.ack([entry_id])
    assert await redis.xlen(STREAM) == 0           # acknowledged entries are deleted


async def test_acknowledging_thousands_at_once(redis: aioredis.Redis) -> None:
    """ack goes to Redis in chunks: one script call with 20,000 ids would fail (Lua's
    unpack takes about 8,000 values)."""
    consumer = StreamConsumer(redis, STREAM, GROUP, "c1", batch=20_000, block_ms=10)
    await consumer.setup()
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(20_000):
            pipe.xadd(STREAM, {"n": str(n)})
        await pipe.execute()
    entries = await consumer.read()
    assert len(entries) == 20_000
    await consumer.ack([eid for eid, _ in entries])
    assert await redis.xlen(STREAM) == 0
    [group] = await redis.xinfo_groups(STREAM)
    assert group["pending"] == 0


SHARDED = [f"test:{{s{n}}}:stream" for n in range(4)]


async def _sharded(redis: aioredis.Redis, name: str = "c1", **options: Any) -> ShardedConsumer:
    consumer = ShardedConsumer(redis, SHARDED, GROUP, name, **{"batch": 20, "block_ms": 50,
                                                               **options})
    await consumer.setup()
    return consumer


async def test_a_sharded_consumer_serves_every_shard_even_when_one_is_busy(
    redis: aioredis.Redis,
) -> None:
    consumer = await _sharded(redis)
    for n in range(200):
        await redis.xadd(SHARDED[0], {"shard": "0", "n": str(n)})
    for shard in (1, 2, 3):
        for n in range(3):
            await redis.xadd(SHARDED[shard], {"shard": str(shard), "n": str(n)})
    first = await consumer.read(20)
    assert len(first) == 20                       # never more than asked for
    assert {fields["shard"] for _, fields in first} == {"0", "1", "2", "3"}
    seen = list(first)
    while len(seen) < 209:
        batch = await consumer.read(20)
        assert batch, "entries left unread"
        seen += batch
    assert len({eid for eid, _ in seen}) == 209
    await consumer.ack([eid for eid, _ in seen])
    for stream in SHARDED:
        assert await redis.xlen(stream) == 0      # acknowledged and deleted, every shard


async def test_equal_stream_ids_on_two_shards_are_two_entries(redis: aioredis.Redis) -> None:
    consumer = await _sharded(redis)
    await redis.xadd(SHARDED[1], {"n": "a"}, id="5-1")
    await redis.xadd(SHARDED[2], {"n": "b"}, id="5-1")
    entries = await consumer.read()
    assert sorted(fields["n"] for _, fields in entries) == ["a", "b"]
    [(on_1, _)] = [e for e in entries if e[1]["n"] == "a"]
    await consumer.ack([on_1])
    assert (await redis.xlen(SHARDED[1]), await redis.xlen(SHARDED[2])) == (0, 1)


async def test_a_waiting_sharded_consumer_wakes_for_any_shard(redis: aioredis.Redis) -> None:
    consumer = await _sharded(redis, block_ms=5_000)
    waiting = asyncio.create_task(consumer.read())
    await asyncio.sleep(0)                         # let it find every shard empty
    await redis.xadd(SHARDED[3], {"n": "late"})
    entries = await waiting
    assert [fields["n"] for _, fields in entries] == ["late"]
    assert await consumer.finish() == []           # the other shards' waits end empty


async def test_sharded_consumer_reclaims_a_dead_consumers_entries_on_each_shard(
    redis: aioredis.Redis,
) -> None:
    dead = await _sharded(redis)
    for stream in SHARDED:
        await redis.xadd(stream, {"on": stream})
    assert len(await dead.read()) == 4             # read, never acknowledged
    survivor = await _sharded(redis, "c2", claim_idle_ms=0, claim_every_s=0)
    reclaimed = await survivor.read()
    assert sorted(fields["on"] for _, fields in reclaimed) == sorted(SHARDED)
