"""Forgetting a device in Redis: every key, set member and stream entry about it.

PostgreSQL forgets through ``DELETE FROM devices`` (cascades, and a trigger that unlinks
its delivery rows: migration 0011); this is the
Redis half, called by ``DELETE /v1/devices/{id}``.
"""

from __future__ import annotations

import json
from typing import Any

from server import keys
from server.keys import PLATFORMS, SENDER_GROUP
from server.store import positions
from server.store.redisclient import RedisClient


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _scrub_stream(redis: RedisClient, stream: str, device_id: str,
                        group: str | None) -> int:
    removed = 0
    start = "-"
    while True:
        batch: Any = await redis.xrange(stream, min=start, max="+", count=1000)
        if not batch:
            return removed
        ids = [_s(eid) for eid, fields in batch
               if _s(fields.get(b"device_id", fields.get("device_id", ""))) == device_id]
        if ids:
            if group:
                await redis.xack(stream, group, *ids)
            await redis.xdel(stream, *ids)
            removed += len(ids)
        start = "(" + _s(batch[-1][0])  # exclusive: after the last one seen


async def scrub_device(redis: RedisClient, device_id: str, shards: int) -> None:
    """Everything Redis holds about the device. Its keys are in its push shard; its
    pending pushes and retries are looked for in every shard's streams and schedules
    (short: acknowledged entries are deleted), so a push enqueued under another shard
    count is found too."""
    await positions.forget_device(redis, device_id)
    # The dedup sets the device is in, from its own index: no scan of the keyspace.
    shard = keys.device_shard(device_id, shards)
    index = keys.device_events(device_id, shard)
    events: set[Any] = await redis.smembers(index)
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.srem(_s(event), device_id)
        pipe.delete(index)
        pipe.delete(keys.device_rate(device_id, shard))
        await pipe.execute()
    for platform in PLATFORMS:
        for k in range(shards):
            stream = keys.push_stream(platform, k)
            if await redis.exists(stream):
                await _scrub_stream(redis, stream, device_id, SENDER_GROUP)
            schedule = keys.retry_schedule(platform, k)
            members: list[Any] = await redis.zrange(schedule, 0, -1)
            doomed = [m for m in members if json.loads(_s(m)).get("device_id") == device_id]
            if doomed:
                await redis.zrem(schedule, *doomed)
    if await redis.exists(keys.DEAD_STREAM):
        await _scrub_stream(redis, keys.DEAD_STREAM, device_id, None)
