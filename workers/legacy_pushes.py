"""Pushes queued under the names of before the push shards, moved into their shards.

Before the push streams were sharded (``GEOPUSH_PUSH_STREAM_SHARDS``), a platform's
pushes waited on one stream, ``geopush:push:<platform>``, and its retries in one sorted
set, ``geopush:retry:<platform>``. Senders of this version read only the shards, so a
push still queued under an old name when the upgrade happens (or enqueued there by a
matcher of the old version during a rolling upgrade) would wait for ever: accepted,
never sent. The relay's maintenance moves them into the device's shard.

Each move is one script call per shard and batch: the entry is added to the shard's
stream (or schedule, with its due time) and removed from the old key in one atomic
step, so a push is neither lost nor queued twice by the move. An old-version sender
may be sending an entry at the moment it is moved; then the device may get that push
twice, under the same collapse id (the phone shows it once), as after any sender's
crash. Only a single Redis can hold the old names: geopush did not run on a Redis
Cluster before the shards, and their keys carry no hash tag.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from server import keys
from server.store.redisclient import RedisClient, is_cluster_client

log = logging.getLogger(__name__)

BATCH = 500

# KEYS: the old stream, the shard's stream. ARGV: entry ids. Each entry that is still
# there is re-added with its fields (a new id: its place in the shard's queue is now)
# and deleted from the old stream. Returns how many were moved.
_MOVE_ENTRIES = """
local moved = 0
for _, id in ipairs(ARGV) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 1 then
    redis.call('XADD', KEYS[2], '*', unpack(found[1][2]))
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end
return moved
"""

# KEYS: the old schedule, the shard's schedule. ARGV: members. Each member still there
# keeps its due time. Returns how many were moved.
_MOVE_RETRIES = """
local moved = 0
for _, member in ipairs(ARGV) do
  local due = redis.call('ZSCORE', KEYS[1], member)
  if due then
    redis.call('ZADD', KEYS[2], due, member)
    redis.call('ZREM', KEYS[1], member)
    moved = moved + 1
  end
end
return moved
"""


def legacy_push_stream(platform: str) -> str:
    """A platform's push stream before the shards."""
    return f"{keys.PREFIX}:push:{platform}"


def legacy_retry_schedule(platform: str) -> str:
    """A platform's retry schedule before the shards."""
    return f"{keys.PREFIX}:retry:{platform}"


async def adopt_legacy_pushes(redis: RedisClient, shards: int) -> int:
    """Move every push queued under the old names into its device's shard; how many.
    Nothing to do on a Redis Cluster."""
    if is_cluster_client(redis):
        return 0
    moved = 0
    for platform in keys.PLATFORMS:
        moved += await _move_stream(redis, platform, shards)
        moved += await _move_schedule(redis, platform, shards)
    if moved:
        log.info("moved %d pushes queued under the names of before the push shards",
                 moved)
    return moved


async def _move_stream(redis: RedisClient, platform: str, shards: int) -> int:
    old = legacy_push_stream(platform)
    move = redis.register_script(_MOVE_ENTRIES)
    moved, start = 0, "-"
    while True:
        entries: Any = await redis.xrange(old, min=start, max="+", count=BATCH)
        if not entries:
            return moved
        by_shard: dict[int, list[str]] = {}
        for entry_id, fields in entries:
            device = _device_of(fields)
            if device is None:
                log.error("left a queued push without a device id on %s: %s", old,
                          _text(entry_id))
                continue
            by_shard.setdefault(keys.device_shard(device, shards), []).append(
                _text(entry_id))
        for shard, ids in by_shard.items():
            moved += int(await move(keys=[old, keys.push_stream(platform, shard)],
                                    args=ids))
        start = "(" + _text(entries[-1][0])


async def _move_schedule(redis: RedisClient, platform: str, shards: int) -> int:
    old = legacy_retry_schedule(platform)
    move = redis.register_script(_MOVE_RETRIES)
    moved = 0
    skipped = 0   # malformed members stay, ahead of those not visited yet
    while True:
        members: Any = await redis.zrange(old, skipped, skipped + BATCH - 1)
        if not members:
            return moved
        by_shard: dict[int, list[str]] = {}
        for member in members:
            device = _device_of(_loads(member))
            if device is None:
                log.error("left a malformed retry on %s", old)
                skipped += 1
                continue
            by_shard.setdefault(keys.device_shard(device, shards), []).append(
                _text(member))
        for shard, group in by_shard.items():
            moved += int(await move(keys=[old, keys.retry_schedule(platform, shard)],
                                    args=group))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _loads(member: str | bytes) -> dict[object, object]:
    try:
        value = json.loads(member)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _device_of(fields: Mapping[Any, Any]) -> str | None:
    """The entry's device id, if it has a well-formed one."""
    for key, value in fields.items():
        if isinstance(key, str | bytes) and _text(key) == "device_id" \
                and isinstance(value, str | bytes):
            try:
                return str(uuid.UUID(_text(value)))
            except ValueError:
                return None
    return None
