"""The backlog gauges a worker refreshes when scraped: each kind reports the queues it
drains (the matcher its stream, a sender its push stream and retry schedule and the
dead letters, the relay the outbox and the review queue), so one scrape of a kind
answers "is it keeping up?" without every process reading every queue."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from server import keys, metrics
from server.metrics import Refresh
from server.store import backlog
from server.store.redisclient import RedisClient


async def stream_stats(redis: RedisClient, stream: str) -> None:
    """Length, and per consumer group pending and lag (entries not yet delivered to the
    group; Redis 7 reports it, and it is unknown after some XDELs: left as it was)."""
    metrics.STREAM_LENGTH.labels(stream).set(await redis.xlen(stream))
    if not await redis.exists(stream):
        return
    groups: Any = await redis.xinfo_groups(stream)
    for group in groups:
        name = group["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        metrics.STREAM_PENDING.labels(stream, name).set(int(group["pending"]))
        lag = group.get("lag")
        if lag is not None:
            metrics.STREAM_LAG.labels(stream, name).set(int(lag))


def for_kind(kind: str, pool: asyncpg.Pool, redis: RedisClient,
             shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS) -> Refresh:
    async def matcher() -> None:
        await stream_stats(redis, keys.INCIDENTS_STREAM)
        await stream_stats(redis, keys.FANOUT_WORK_STREAM)

    async def sender() -> None:
        for stream in keys.push_streams(kind, shards):
            await stream_stats(redis, stream)
        await stream_stats(redis, keys.DEAD_STREAM)
        scheduled = 0
        for shard in range(shards):
            scheduled += await redis.zcard(keys.retry_schedule(kind, shard))
        metrics.RETRY_SCHEDULED.labels(kind).set(scheduled)

    async def relay() -> None:
        now = dt.datetime.now(dt.UTC)
        out = await backlog.outbox(pool, now)
        metrics.OUTBOX_DEPTH.set(out.size)
        metrics.OUTBOX_OLDEST.set(out.oldest_s)
        review = await backlog.review_queue(pool, now)
        metrics.REVIEW_SIZE.set(review.size)
        metrics.REVIEW_OLDEST.set(review.oldest_s)

    if kind == "matcher":
        return matcher
    if kind == "relay":
        return relay
    return sender
