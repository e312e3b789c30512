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

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from server.store.db import STORE_UNAVAILABLE
from server.store.redisclient import (
    REDIS_UNAVAILABLE,
    RedisClient,
    ScriptCall,
    eval_many,
    xreadgroup,
    xreadgroup_args,
)

log = logging.getLogger(__name__)

Entry = tuple[str, dict[str, str]]
TRANSIENT: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, *STORE_UNAVAILABLE)
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

    def claim_due(self) -> bool:
        """Whether a reclaim pass is due (and, if so, the next one is scheduled)."""
        now = time.monotonic()
        if now < self._next_claim:
            return False
        self._next_claim = now + self.claim_every_s
        return True

    def track(self, entries: list[Entry]) -> None:
        """Entries read for this consumer by someone else (``ShardedConsumer``)."""
        self._inflight.update(eid for eid, _ in entries)

    async def finish(self) -> list[Entry]:
        """Entries already read but not handed out (none: every read hands out all)."""
        return []

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

    async def read(self, count: int | None = None, *, block: bool = True) -> list[Entry]:
        """Up to ``count`` (default: the batch size) entries: reclaimed ones first when
        a claim is due, else new ones (waiting up to ``block_ms`` for them, unless
        ``block`` is false)."""
        count = self.batch if count is None else max(1, min(count, self.batch))
        if self.claim_due():
            claimed = await self._claim()
            if claimed:
                log.info("reclaimed %d idle entries from %s", len(claimed), self.stream)
                return claimed
        response: Any = await xreadgroup(self.redis, self.group, self.consumer, self.stream,
                                         count, self.block_ms if block else None)
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

    def ack_calls(self, ids: list[str]) -> list[ScriptCall]:
        """``ack``'s script calls, for the caller to run with others (``eval_many``),
        then ``release`` the ids, which are no longer in flight."""
        return [([self.stream], [self.group, *ids[start:start + _ACK_CHUNK]])
                for start in range(0, len(ids), _ACK_CHUNK)]

    @property
    def ack_script(self) -> AsyncScript:
        return self._ack_and_delete


class ShardedConsumer:
    """One consumer of one group over several streams: a platform's push shards
    (``server.keys``), each stream with its own consumer group, as one source of work.

    No command names two shards' streams (on a Redis Cluster they are in different
    slots): a read asks every shard for its share of ``count`` in one pipelined round
    trip, starting with a different shard each time, so a busy shard never starves
    the others. When every shard is empty it waits on all of them at once, one
    blocking XREADGROUP per shard (their own connections), and hands out whatever
    arrives first; what they read later is handed out by the next reads (it is this
    consumer's, pending, never lost). Entry ids are ``<shard>/<stream id>`` (stream
    ids of different streams may be equal)."""

    def __init__(
        self,
        redis: RedisClient,
        streams: list[str],
        group: str,
        consumer: str,
        *,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        claim_every_s: float = 15.0,
    ) -> None:
        if not streams:
            raise ValueError("a sharded consumer needs at least one stream")
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.streams = list(streams)
        self.stream = streams[0] if len(streams) == 1 else f"{streams[0]} (+{len(streams) - 1})"
        self.shards = [StreamConsumer(redis, stream, group, consumer, batch=batch,
                                      block_ms=block_ms, claim_idle_ms=claim_idle_ms,
                                      claim_every_s=claim_every_s) for stream in streams]
        self._next = 0                      # the shard served first by the next read
        self._ready: list[Entry] = []       # read by a waiter, not handed out yet
        self._arrived = asyncio.Event()
        self._waiters: dict[int, asyncio.Task[None]] = {}

    async def setup(self) -> None:
        for shard in self.shards:
            await shard.setup()

    def _tag(self, index: int, entries: list[Entry]) -> list[Entry]:
        return [(f"{index}/{eid}", fields) for eid, fields in entries]

    def _take(self, count: int) -> list[Entry]:
        taken, self._ready = self._ready[:count], self._ready[count:]
        if not self._ready:
            self._arrived.clear()
        return taken

    def _order(self) -> list[int]:
        n = len(self.shards)
        start = self._next
        self._next = (start + 1) % n
        return [(start + k) % n for k in range(n)]

    async def read(self, count: int | None = None) -> list[Entry]:
        """Up to ``count`` entries (default: the batch size) from all shards: first
        those already read, then entries idle on dead consumers when a reclaim is due,
        then new ones (waiting up to ``block_ms`` when there are none)."""
        count = self.batch if count is None else max(1, min(count, self.batch))
        out = self._take(count)
        if len(out) == count:
            return out
        order = self._order()
        for index in order:
            shard = self.shards[index]
            if shard.claim_due():
                claimed = await shard._claim()
                if claimed:
                    log.info("reclaimed %d idle entries from %s", len(claimed), shard.stream)
                    self._ready.extend(self._tag(index, claimed))
        out += self._take(count - len(out))
        if len(out) < count:
            await self._read_now(order, count - len(out))
            out += self._take(count - len(out))
        if out:
            return out
        self._wait_on_all(count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), self.block_ms / 1000)
        return self._take(count)

    async def _read_now(self, order: list[int], count: int) -> None:
        """Up to ``count`` entries, each shard asked for its share, without blocking,
        in one round trip; if some shards had less than their share, a second round
        asks those that had all of theirs for the rest. Never more than ``count``."""
        wanted = _shares(order, count)
        for _ in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for index, share in wanted:
                    args, options = xreadgroup_args(self.redis, self.group, self.consumer,
                                                    self.streams[index], share)
                    pipe.execute_command(*args, **options)
                responses: list[Any] = await pipe.execute()
            full = []
            for (index, share), response in zip(wanted, responses, strict=True):
                if self._arrived_from(index, response) == share:
                    full.append(index)
            missing = count - len(self._ready)
            if not full or missing <= 0 or len(full) == len(wanted):
                return
            wanted = _shares(full, missing)

    def _arrived_from(self, index: int, response: Any) -> int:
        entries: list[Entry] = [(eid, fields) for _stream, items in response or []
                                for eid, fields in items]
        if entries:
            self.shards[index].track(entries)
            self._ready.extend(self._tag(index, entries))
            self._arrived.set()
        return len(entries)

    def _wait_on_all(self, count: int) -> None:
        share = -(-count // len(self.shards))
        for index in range(len(self.shards)):
            if index not in self._waiters:
                self._waiters[index] = asyncio.create_task(self._wait(index, share))

    async def _wait(self, index: int, count: int) -> None:
        try:
            response = await xreadgroup(self.redis, self.group, self.consumer,
                                        self.streams[index], count, self.block_ms)
            self._arrived_from(index, response)
        except REDIS_UNAVAILABLE as exc:
            # The next read's own pass meets the same trouble and handles it (a lost
            # group is made again); waiting is all this was for.
            log.debug("waiting on %s failed: %s", self.streams[index], exc)
        finally:
            del self._waiters[index]

    async def finish(self) -> list[Entry]:
        """At shutdown: the waits still open end (within ``block_ms``), and what they
        and earlier reads brought is returned to be handled rather than left pending."""
        if self._waiters:
            _, late = await asyncio.wait(list(self._waiters.values()),
                                         timeout=self.block_ms / 1000 + 1)
            for task in late:
                task.cancel()
        return self._take(len(self._ready))

    def _split(self, ids: list[str]) -> dict[int, list[str]]:
        by_shard: dict[int, list[str]] = {}
        for tagged in ids:
            index, _, eid = tagged.partition("/")
            by_shard.setdefault(int(index), []).append(eid)
        return by_shard

    def release(self, ids: list[str]) -> None:
        for index, raw in self._split(ids).items():
            self.shards[index].release(raw)

    async def ack(self, ids: list[str]) -> None:
        """Acknowledge and delete, every shard's ids in one round trip."""
        by_shard = self._split(ids)
        if not by_shard:
            return
        # One script for every shard (the same text): one pipeline, one round trip per
        # master of a cluster, each call in its shard's slot.
        calls = [call for index, raw in by_shard.items()
                 for call in self.shards[index].ack_calls(raw)]
        await eval_many(self.redis, self.shards[0].ack_script, calls)
        for index, raw in by_shard.items():
            self.shards[index].release(raw)


Consumer = StreamConsumer | ShardedConsumer


def _shares(order: list[int], count: int) -> list[tuple[int, int]]:
    """``count`` split over the shards in ``order`` as evenly as it goes, the first
    ones taking the remainder (the order rotates from read to read); shards with a
    share of 0 left out."""
    base, extra = divmod(count, len(order))
    return [(index, base + (1 if k < extra else 0)) for k, index in enumerate(order)
            if base or k < extra]


async def consume(
    consumer: Consumer, handle: BatchHandler, stop: asyncio.Event
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
    consumer: Consumer, stop: asyncio.Event,
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
            break
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
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await consumer.setup()
            continue
        except REDIS_UNAVAILABLE as exc:
            log.warning("reading %s failed: %s; retrying in %.1fs", consumer.stream, exc, backoff)
            await sleep_unless(stop, backoff)
            backoff = min(backoff * 2, 10)
            continue
        backoff = 0.5
        if entries:
            yield entries
    leftover = await consumer.finish()
    if leftover:
        yield leftover


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
