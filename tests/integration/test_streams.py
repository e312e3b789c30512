"""workers.streams against a real Redis: reclaiming idle entries never hands a
consumer back what it is still working on, or what it finished meanwhile."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from workers.streams import StreamConsumer

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
