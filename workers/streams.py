"""Redis Streams consumer-group plumbing shared by the matcher and the senders.

An entry is acknowledged only after its handler has recorded the outcome; entries a
dead consumer left pending are reclaimed with XAUTOCLAIM once idle long enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError, ResponseError

from server.store.db import STORE_UNAVAILABLE
from server.store.redisclient import RedisClient

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
TRANSIENT: tuple[type[BaseException], ...] = (RedisError, OSError, *STORE_UNAVAILABLE)
BatchHandler = Callable[[list[Entry]], Awaitable[None]]


async def ensure_group(redis: RedisClient, stream: str, group: str) -> None:
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


_ACK_CHUNK = 1000     # ids per script call (Lua's unpack stops near 8,000)
_ACK_AND_DELETE = """
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""


class StreamConsumer:
    """One consumer of a group. ``redis`` must decode replies (``decode_responses``):
    entries come back as ``str`` ids and fields."""

    def __init__(
        self,
        redis: RedisClient,
        stream: str,
        group: str,
        consumer: str,
        *,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        claim_every_s: float = 15.0,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_every_s = claim_every_s
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        # Entries this process is working on: never claimed back from ourselves while
        # still in flight (several loops may share one consumer).
        self._inflight: set[str] = set()
        self._ack_and_delete = redis.register_script(_ACK_AND_DELETE)

    async def setup(self) -> None:
        await ensure_group(self.redis, self.stream, self.group)

    async def _claim(self) -> list[Entry]:
        """Entries pending on any consumer for longer than claim_idle_ms (ours included,
        which is how a restarted consumer with the same name picks up its own)."""
        # Entries in flight now may be acknowledged while XAUTOCLAIM runs (by another
        # task of this process): Redis may still hand them over, but they are done.
        busy = set(self._inflight)
        result: Any = await self.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor, count=self.batch,
        )
        cursor = str(result[0])
        self._claim_cursor = cursor
        if cursor != "0-0":
            self._next_claim = 0.0   # more to scan: claim again on the next read
        claimed = [(eid, fields) for eid, fields in result[1]
                   if fields is not None and eid not in busy and eid not in self._inflight]
        self._inflight.update(eid for eid, _ in claimed)
        return claimed

    async def read(self, count: int | None = None) -> list[Entry]:
        """Up to ``count`` (default: the batch size) entries: reclaimed ones first when
        a claim is due, else new ones (blocking up to ``block_ms``)."""
        count = self.batch if count is None else max(1, min(count, self.batch))
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.claim_every_s
            claimed = await self._claim()
            if claimed:
                log.info("reclaimed %d idle entries from %s", len(claimed), self.stream)
                return claimed
        response: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=self.block_ms
        )
        entries: list[Entry] = [(eid, fields) for _stream, items in response or []
                                for eid, fields in items]
        self._inflight.update(eid for eid, _ in entries)
        return entries

    def release(self, ids: list[str]) -> None:
        """Give up entries without acknowledging them: they stay pending, to be claimed."""
        self._inflight.difference_update(ids)

    async def ack(self, ids: list[str]) -> None:
        """Acknowledge and delete: a handled entry's record is in PostgreSQL, so the
        stream keeps only work in progress (bounded memory, and a device's erasure
        finds its pending pushes by scanning a short stream). One script call, atomic
        as MULTI/XACK/XDEL/EXEC was, with the ids sent once (cheaper for the client:
        docs/BENCHMARKS.md)."""
        for start in range(0, len(ids), _ACK_CHUNK):
            chunk = ids[start:start + _ACK_CHUNK]
            await self._ack_and_delete(keys=[self.stream], args=[self.group, *chunk])
            self._inflight.difference_update(chunk)


async def consume(
    consumer: StreamConsumer, handle: BatchHandler, stop: asyncio.Event
) -> None:
    """Read batches and hand them to ``handle`` until ``stop`` is set.

    ``handle`` acknowledges what it finished. A batch in progress when ``stop`` is set
    is finished before returning (bounded by the caller's shutdown timeout).
    """
    backoff = 0.5
    async for entries in batches(consumer, stop):
        try:
            await handle(entries)
            backoff = 0.5
        except TRANSIENT as exc:
            # A PostgreSQL or Redis blip while recording: the entries stay pending
            # (unacknowledged) and are claimed again once idle; carry on reading.
            log.warning("handling %d entries of %s failed: %s", len(entries),
                        consumer.stream, exc)
            consumer.release([eid for eid, _ in entries])
            await sleep_unless(stop, backoff)
            backoff = min(backoff * 2, 10)


async def batches(
    consumer: StreamConsumer, stop: asyncio.Event,
    count: Callable[[], Awaitable[int]] | None = None,
) -> AsyncIterator[list[Entry]]:
    """Batches of entries until ``stop`` is set, riding out Redis blips (and a Redis
    that lost the group). ``count``, when given, is awaited before each read for how
    many entries to ask for (the reader's free capacity)."""
    await consumer.setup()
    backoff = 0.5
    while not stop.is_set():
        want = await count() if count is not None else None
        if stop.is_set():
            return
        try:
            entries = await consumer.read(want)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the stream or group (restarted without persistence): make it
            # again and carry on; the outbox relay republishes what was lost.
            log.warning("consumer group %s on %s is gone; recreating it",
                        consumer.group, consumer.stream)
            await sleep_unless(stop, backoff)
            with contextlib.suppress(RedisError, OSError):
                await consumer.setup()
            continue
        except (RedisError, OSError) as exc:
            log.warning("reading %s failed: %s; retrying in %.1fs", consumer.stream, exc, backoff)
            await sleep_unless(stop, backoff)
            backoff = min(backoff * 2, 10)
            continue
        backoff = 0.5
        if entries:
            yield entries


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
