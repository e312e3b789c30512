"""An upgrade across the push shards loses no queued push: what waits under the old
stream and retry-schedule names is moved into each device's shard, once."""

from __future__ import annotations

import json
import uuid

import pytest
import redis.asyncio as aioredis

from server import keys
from server.store.redisclient import is_cluster_client
from workers.legacy_pushes import (
    adopt_legacy_pushes,
    legacy_push_stream,
    legacy_retry_schedule,
)
from workers.streams import ShardedConsumer

SHARDS = 8


def _fields(device: str, n: int) -> dict[str, str]:
    return {"device_id": device, "push": json.dumps({"device_id": device, "n": n})}


async def test_queued_pushes_and_retries_move_into_their_shards_once(
    redis: aioredis.Redis,
) -> None:
    if is_cluster_client(redis):
        pytest.skip("only a single Redis can hold the names of before the shards")
    devices = [str(uuid.uuid4()) for _ in range(40)]
    old = legacy_push_stream("apns")
    # The old version's senders had a group on the old stream, one entry in flight.
    await redis.xgroup_create(old, keys.SENDER_GROUP, id="0", mkstream=True)
    for n, device in enumerate(devices):
        await redis.xadd(old, _fields(device, n))
    await redis.xreadgroup(keys.SENDER_GROUP, "old-sender", {old: ">"}, count=1)
    await redis.xadd(old, {"push": "{}"})                 # no device id: left alone
    schedule = legacy_retry_schedule("fcm")
    retries = {json.dumps(_fields(device, n), sort_keys=True): 1_000.0 + n
               for n, device in enumerate(devices[:10])}
    await redis.zadd(schedule, retries)
    await redis.zadd(schedule, {"not json": 1.0})

    assert await adopt_legacy_pushes(redis, SHARDS) == 50
    assert await adopt_legacy_pushes(redis, SHARDS) == 0      # nothing moves twice

    # Every push is on its device's shard, as the new senders read it, with its fields.
    consumer = ShardedConsumer(redis, keys.push_streams("apns", SHARDS), keys.SENDER_GROUP,
                               "new-sender", batch=100, block_ms=10)
    await consumer.setup()
    read = await consumer.read(100)
    assert sorted(fields["device_id"] for _, fields in read) == sorted(devices)
    for entry_id, fields in read:
        shard = int(entry_id.split("/", 1)[0])
        assert shard == keys.device_shard(fields["device_id"], SHARDS)
        assert fields == _fields(fields["device_id"], devices.index(fields["device_id"]))
    assert await redis.xlen(old) == 1                     # only the malformed entry

    # Retries keep their due time, in the device's shard's schedule.
    moved: dict[str, float] = {}
    for shard in range(SHARDS):
        for member, due in await redis.zrange(keys.retry_schedule("fcm", shard), 0, -1,
                                              withscores=True):
            assert keys.device_shard(json.loads(member)["device_id"], SHARDS) == shard
            moved[member] = due
    assert moved == retries
    assert await redis.zrange(schedule, 0, -1) == ["not json"]
