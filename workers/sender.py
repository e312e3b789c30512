"""The sender loop shared by APNs and FCM: read pushes, send, record, then acknowledge.

``Sender.run`` streams: up to ``concurrency`` sends in flight, the next batch read as
soon as it fits, and sends recorded in groups by a task of their own: every
outcome written to ``deliveries`` in one statement, tokens the gateway declared gone
disabled, retries scheduled (exponential backoff with jitter, never past the alert's
expiry) or dead-lettered, and only then XACK. A sender that dies leaves its entries
pending; another sender reclaims them (at worst a device gets the same push twice,
and the collapse id makes the phone show it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg
import msgspec

from server import keys
from server.metrics import PushMetrics
from server.store import deliveries
from server.store.devices import disable_token
from server.store.redisclient import RedisClient, eval_many
from workers.push import Done, Failed, Outcome, Push, Retry, Sent, TokenGone, Withdrawn
from workers.streams import TRANSIENT, Consumer, Entry, batches, sleep_unless

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


class Gateway(Protocol):
    """A push platform: ``start`` sends a push and calls ``done`` once with its
    outcome, from the gateway's own callbacks (no task or future per push)."""

    platform: str

    def start(self, push: Push, now: float, done: Done) -> None: ...

    async def close(self) -> None: ...


async def send(gateway: Gateway, push: Push, now: float) -> Outcome:
    """``gateway.start`` as a coroutine, for whoever needs one push's outcome."""
    outcome: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    gateway.start(push, now, outcome.set_result)
    return await outcome


def backoff_delay(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter in [0.5, 1.5) x base; a gateway's
    Retry-After is a floor."""
    base = min(MAX_BACKOFF_S, 2.0 ** (attempt - 1))
    delay = base * rng.uniform(0.5, 1.5)
    return max(delay, retry_after or 0.0)


_PROMOTE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local fields = cjson.decode(member)
  local args = {}
  for k, v in pairs(fields) do
    table.insert(args, k)
    table.insert(args, v)
  end
  redis.call('XADD', KEYS[2], '*', unpack(args))
end
return #due
"""


class Result(msgspec.Struct, frozen=True):
    entry_id: str
    push: Push
    outcome: Outcome
    done_at: float


class Sender:
    def __init__(
        self, pool: asyncpg.Pool, redis: RedisClient, gateway: Gateway, *,
        concurrency: int = 200, rng: random.Random | None = None,
        metrics: PushMetrics | None = None, shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.gateway = gateway
        self.shards = shards
        self.streams = keys.push_streams(gateway.platform, shards)
        self.schedules = [keys.retry_schedule(gateway.platform, shard)
                          for shard in range(shards)]
        self.concurrency = max(1, concurrency)
        self._rng = rng or random.Random()
        self._promote = redis.register_script(_PROMOTE_DUE)
        self.metrics = metrics or PushMetrics(gateway.platform)

    async def _withdrawn(self, pushes: list[Push]) -> set[str]:
        """Incidents of this batch that were cleared, cancelled or re-decided since they
        were matched: their pending pushes are dropped."""
        return await deliveries.withdrawn(self.pool, {p.incident_id for p in pushes})

    def _unforeseen(self, exc: BaseException) -> Outcome:
        """A send that raised (a bug or an unforeseen transport error): retried."""
        log.error("send to %s failed unexpectedly", self.gateway.platform, exc_info=exc)
        return Retry(type(exc).__name__)

    async def _prepare(self, entries: list[Entry]) -> tuple[list[tuple[str, Push, bool]],
                                                             list[str]]:
        """Parse a batch and look up which of its incidents were withdrawn: (entry id,
        push, withdrawn) to send, and the ids of malformed entries (acknowledged unsent)."""
        readable: list[tuple[str, Push]] = []
        unreadable: list[str] = []
        for entry_id, fields in entries:
            try:
                readable.append((entry_id, Push.from_fields(fields)))
            except (KeyError, ValueError):
                log.error("dropping malformed push entry %s", entry_id)
                unreadable.append(entry_id)
        alerts = [p for _, p in readable if p.kind == "alert"]
        withdrawn = await self._withdrawn(alerts) if alerts else set()
        # An update is about the incident having ended: it is never withdrawn for that.
        return [(eid, p, p.kind == "alert" and p.incident_id in withdrawn)
                for eid, p in readable], unreadable

    async def run(self, consumer: Consumer, stop: asyncio.Event, *,
                  flush_size: int = 100, flush_interval_s: float = 0.02) -> None:
        """The sender's main loop, streaming: up to ``concurrency`` sends in flight all
        the time, new entries read as room frees up, and the outcomes of sends recorded and
        acknowledged in groups (every ``flush_size`` results or ``flush_interval_s``)
        by a task of their own, so neither reading nor recording holds the gateway
        connections idle. An entry is acknowledged only after its outcome is recorded.

        On ``stop``: nothing more is read; the sends in flight finish, are recorded and
        acknowledged, then it returns (the caller bounds how long that may take).
        """
        await _Streaming(self, consumer, stop, flush_size, flush_interval_s).run()

    async def record(self, results: Sequence[Result]) -> None:
        """Write outcomes; then act on them (disable tokens, retry, dead-letter)."""
        if not results:
            return
        rows = []
        retries: list[tuple[Push, float]] = []
        dead: list[tuple[Push, str]] = []
        for r in results:
            outcome_name, reason, status, gateway_id, latency = _describe(r)
            if isinstance(r.outcome, Retry):
                due = r.done_at + backoff_delay(r.push.attempt, r.outcome.after, self._rng)
                if due < r.push.expires_at:
                    retries.append((r.push.next_attempt(), due))
                else:
                    outcome_name = "dead"
                    dead.append((r.push, reason or "retries exhausted"))
            rows.append((r.push.incident_id, r.push.device_id, r.push.platform, outcome_name,
                         reason, status, gateway_id, r.push.attempt, latency, r.push.kind))
        await deliveries.record(self.pool, rows)
        self.metrics.recorded((row[3], row[8]) for row in rows)
        for r in results:
            if isinstance(r.outcome, TokenGone):
                await disable_token(self.pool, r.push.device_id, r.push.token, r.outcome.reason)
                log.info("token disabled device=%s reason=%s", r.push.device_id, r.outcome.reason)
            elif isinstance(r.outcome, Failed):
                log.warning("push failed incident=%s device=%s reason=%s", r.push.incident_id,
                            r.push.device_id, r.outcome.reason)
        if retries or dead:
            # Not one transaction: the shards' retry schedules and the dead stream are
            # in different slots (keys.DEAD_STREAM). Nothing needs it: the batch is
            # acknowledged only after this, and a batch handled again re-adds the same
            # schedule members (ZADD of an equal member is a no-op); a dead push may be
            # recorded twice, as it could be after a crash between EXEC and the ack. A
            # retry is in its push's shard, so on the master of the entry whose
            # acknowledgement follows: replicated before it, in order.
            async with self.redis.pipeline(transaction=False) as pipe:
                for push, due in retries:
                    schedule = self.schedules[keys.device_shard(push.device_id, self.shards)]
                    pipe.zadd(schedule, {json.dumps(push.to_fields(), sort_keys=True): due})
                for push, reason in dead:
                    entry: dict[Any, Any] = {**push.to_fields(), "reason": reason}
                    pipe.xadd(keys.DEAD_STREAM, entry, maxlen=100_000, approximate=True)
                await pipe.execute()

    async def promote_due_retries(self, now: float | None = None, limit: int = 500) -> int:
        """Move retries that are due back onto their push streams: each shard's schedule
        onto the same shard's stream (one slot a call), all in one round trip."""
        now = now or time.time()
        moved = await eval_many(self.redis, self._promote, [
            ([schedule, stream], [now, limit])
            for schedule, stream in zip(self.schedules, self.streams, strict=True)])
        return sum(int(n) for n in moved)


class _Streaming:
    """One run of ``Sender.run``: a reader task and a recorder task around the sends.

    Sends are started from the reader with the gateway's ``start`` and are done in
    its callbacks (``_done``). Each send's slot is held until its outcome arrives,
    which arrives once: a second call for the same entry is ignored."""

    def __init__(self, sender: Sender, consumer: Consumer, stop: asyncio.Event,
                 flush_size: int, flush_interval_s: float) -> None:
        self.sender = sender
        self.consumer = consumer
        self.stop = stop
        self.flush_size = flush_size
        self.flush_interval_s = flush_interval_s
        self.in_flight: set[str] = set()   # entries started, outcome not yet known
        self.results: list[Result] = []
        self.unreadable: list[str] = []
        self.room = asyncio.Event()     # a send is done: the reader may read again
        self.flush = asyncio.Event()    # enough results to record now
        self.reading = True
        self.over = False               # run() returned: outcomes coming now are dropped

    async def run(self) -> None:
        reader = asyncio.create_task(self.read())
        waker = asyncio.create_task(self._wake_on_stop())
        try:
            await asyncio.gather(reader, self.record())
        finally:
            # Cancelled at the shutdown bound: what is still in flight stays pending
            # in the stream, to be claimed again.
            self.over = True
            reader.cancel()
            waker.cancel()

    async def _wake_on_stop(self) -> None:
        await self.stop.wait()
        self.room.set()       # a reader waiting for room stops waiting

    def _launch(self, entry_id: str, push: Push, withdrawn: bool) -> None:
        now = time.time()
        outcome = _unsent_outcome(push, withdrawn, now)
        if outcome is not None:
            self._add_result(entry_id, push, outcome)
            return
        self.in_flight.add(entry_id)
        done = functools.partial(self._done, entry_id, push)
        try:
            self.sender.gateway.start(push, now, done)
        except Exception as exc:
            done(self.sender._unforeseen(exc))

    def _done(self, entry_id: str, push: Push, outcome: Outcome) -> None:
        if self.over or entry_id not in self.in_flight:
            return
        self.in_flight.discard(entry_id)
        self.room.set()
        self._add_result(entry_id, push, outcome)

    def _add_result(self, entry_id: str, push: Push, outcome: Outcome) -> None:
        self.results.append(Result(entry_id, push, outcome, time.time()))
        if len(self.results) >= self.flush_size:
            self.flush.set()

    async def _capacity(self) -> int:
        """How many entries to read: waits until a whole batch fits."""
        limit = self.sender.concurrency
        want = min(self.consumer.batch, limit)
        while limit - len(self.in_flight) < want and not self.stop.is_set():
            self.room.clear()
            await self.room.wait()
        return limit - len(self.in_flight)

    async def read(self) -> None:
        backoff = 0.5
        try:
            async for entries in batches(self.consumer, self.stop, self._capacity):
                try:
                    sends, bad = await self.sender._prepare(entries)
                except TRANSIENT as exc:
                    log.warning("looking up %d pushes failed: %s", len(entries), exc)
                    self.consumer.release([eid for eid, _ in entries])
                    await sleep_unless(self.stop, backoff)
                    backoff = min(backoff * 2, 10)
                    continue
                backoff = 0.5
                self.unreadable.extend(bad)
                for send in sends:
                    self._launch(*send)
        finally:
            self.reading = False
            self.flush.set()

    async def record(self) -> None:
        backoff = 0.5
        while self.reading or self.in_flight or self.results or self.unreadable:
            await self._wait_for_results()
            results, self.results = self.results, []
            ids = [r.entry_id for r in results] + self.unreadable
            self.unreadable = []
            if not ids:
                continue
            try:
                await self.sender.record(results)
                await self.consumer.ack(ids)
                backoff = 0.5
            except TRANSIENT as exc:
                # Sent but not recorded: the entries stay pending and are claimed again
                # once idle (a device may get the push twice, under one collapse id).
                log.warning("recording %d outcomes failed: %s", len(results), exc)
                self.consumer.release(ids)
                await sleep_unless(self.stop, backoff)
                backoff = min(backoff * 2, 10)

    async def _wait_for_results(self) -> None:
        """Until a group is full, ``flush_interval_s`` has passed, or (no more to read
        or send) at once."""
        if len(self.results) < self.flush_size and (self.reading or self.in_flight):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush.wait(), self.flush_interval_s)
        self.flush.clear()


def _unsent_outcome(push: Push, withdrawn: bool, now: float) -> Outcome | None:
    """The outcome of a push that is not to be sent at all, else None."""
    if withdrawn:
        return Withdrawn("Incident no longer active")
    if now >= push.expires_at:
        return Failed("Expired before it could be sent")
    return None


def _describe(r: Result) -> tuple[str, str | None, int | None, str | None, int | None]:
    o = r.outcome
    if isinstance(o, Sent):
        latency = int(max(0.0, r.done_at - r.push.received_at) * 1000)
        return "sent", None, o.status, o.gateway_id, latency
    if isinstance(o, TokenGone):
        return "token_gone", o.reason, o.status, None, None
    if isinstance(o, Retry):
        return "retry", o.reason, o.status, None, None
    if isinstance(o, Withdrawn):
        return "withdrawn", o.reason, None, None, None
    return "failed", o.reason, o.status, None, None
