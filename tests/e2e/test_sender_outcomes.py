"""What a sender does with each kind of answer, against the fake gateways: always
through ``Sender.run``, the streaming loop production runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from msgspec.structs import replace

from server import keys
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import queued, scheduled_retries
from workers.push import Push, Sent
from workers.runner import build_gateway
from workers.sender import Result, Sender
from workers.streams import ShardedConsumer


async def _incident(stack: Stack) -> str:
    await stack.pool.execute(
        """INSERT INTO agencies (id, name, timezone, signing_secret)
           VALUES ('a', 'A', 'UTC', 's') ON CONFLICT DO NOTHING""")
    return str(await stack.pool.fetchval(
        """INSERT INTO incidents (agency_id, external_id, revision, status, call_type,
                                  category, occurred_at, geom, public_point, decision)
           VALUES ('a', $1, now(), 'active', 'Fire', 'structure_fire', now(),
                   ST_SetSRID(ST_MakePoint(-122.3, 47.6), 4326),
                   ST_SetSRID(ST_MakePoint(-122.3, 47.6), 4326), 'alert')
           RETURNING id""", uuid.uuid4().hex))


def _push(incident_id: str, platform: str, token: str, expires_in: float = 3600) -> Push:
    now = time.time()
    return Push(incident_id=incident_id, device_id=str(uuid.uuid4()), platform=platform,
                token=token, locale="en", category="structure_fire",
                public_location="5300 block of 24th Ave NE", lat=47.6, lon=-122.3,
                occurred_at=now - 60, received_at=now - 1, expires_at=now + expires_in)


SHARDS = keys.DEFAULT_PUSH_STREAM_SHARDS


async def _enqueue(stack: Stack, push: Push) -> None:
    """As the matcher enqueues: onto the push stream of the device's shard."""
    shard = keys.device_shard(push.device_id, SHARDS)
    await stack.redis.xadd(keys.push_stream(push.platform, shard), push.to_fields())


async def _scheduled(stack: Stack, push: Push) -> list[tuple[str, float]]:
    """The retry schedule of the push's shard, with the times they are due."""
    shard = keys.device_shard(push.device_id, SHARDS)
    return list(await stack.redis.zrange(keys.retry_schedule(push.platform, shard), 0, -1,
                                         withscores=True))


@contextlib.asynccontextmanager
async def _sender(stack: Stack, platform: str, concurrency: int = 200
                  ) -> AsyncIterator[Sender]:
    """A sender on the stack's fake gateway, with seeded jitter."""
    gateway = build_gateway(stack.settings, platform, stack.redis)
    try:
        yield Sender(stack.pool, stack.redis, gateway, concurrency=concurrency,
                     rng=random.Random(1))
    finally:
        await gateway.close()


async def _run_batch(stack: Stack, sender: Sender, platform: str) -> None:
    """``Sender.run`` until every entry on the push stream is sent, recorded and
    acknowledged; then stopped."""
    consumer = ShardedConsumer(stack.redis, sender.streams, keys.SENDER_GROUP, "t",
                               batch=10, block_ms=50)
    await consumer.setup()
    stop = asyncio.Event()
    run = asyncio.create_task(sender.run(consumer, stop, flush_size=10))
    try:
        await wait_for(lambda: stream_drained(stack, platform), within=15,
                       what="the push stream sent, recorded and acknowledged")
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)


async def _outcomes(stack: Stack) -> list[tuple[str, str | None, int]]:
    rows = await stack.pool.fetch(
        "SELECT outcome, reason, attempt FROM deliveries ORDER BY id")
    return [(r["outcome"], r["reason"], r["attempt"]) for r in rows]


@pytest.mark.workers()
async def test_apns_503_is_retried_with_backoff_then_sent(stack: Stack) -> None:
    async with _sender(stack, "apns") as sender:
        incident = await _incident(stack)
        push = _push(incident, "apns", secrets.token_hex(32))
        await _enqueue(stack, push)
        stack.apns.set_faults(rate=1.0, status=503, reason="ServiceUnavailable")
        await _run_batch(stack, sender, "apns")
        assert await _outcomes(stack) == [("retry", "ServiceUnavailable", 1)]
        [(member, due)] = await _scheduled(stack, push)
        assert 0.4 < due - time.time() < 1.6   # attempt 1: 1 s, jittered ×0.5–1.5
        assert Push.from_fields(json.loads(member)).attempt == 2

        stack.apns.set_faults(rate=0)
        assert await sender.promote_due_retries(now=time.time()) == 0   # not due yet
        assert await sender.promote_due_retries(now=time.time() + 2) == 1
        await _run_batch(stack, sender, "apns")
        assert (await _outcomes(stack))[-1] == ("sent", None, 2)
        assert [d.token for d in stack.apns.deliveries] == [push.token]


@pytest.mark.workers()
async def test_retries_end_in_the_dead_letter_stream_at_expiry(stack: Stack) -> None:
    async with _sender(stack, "apns") as sender:
        incident = await _incident(stack)
        push = _push(incident, "apns", secrets.token_hex(32), expires_in=0.3)
        await _enqueue(stack, push)
        stack.apns.set_faults(rate=1.0, status=500, reason="InternalServerError")
        await _run_batch(stack, sender, "apns")
        assert await _outcomes(stack) == [("dead", "InternalServerError", 1)]
        [(_, dead)] = await stack.redis.xrange(keys.DEAD_STREAM)
        assert dead["reason"] == "InternalServerError"
        assert Push.from_fields(dead) == push
        assert await scheduled_retries(stack.redis, "apns") == 0


@pytest.mark.workers()
async def test_payload_errors_fail_without_retry_and_gone_tokens_are_not_retried(
    stack: Stack
) -> None:
    async with _sender(stack, "apns") as sender:
        incident = await _incident(stack)
        stack.apns.set_faults(rate=1.0, status=400, reason="BadTopic")
        await _enqueue(stack, _push(incident, "apns", secrets.token_hex(32)))
        await _run_batch(stack, sender, "apns")
        stack.apns.set_faults(rate=1.0, status=400, reason="BadDeviceToken")
        await _enqueue(stack, _push(incident, "apns", secrets.token_hex(32)))
        await _run_batch(stack, sender, "apns")
        assert await _outcomes(stack) == [("failed", "BadTopic", 1),
                                          ("token_gone", "BadDeviceToken", 1)]
        assert await scheduled_retries(stack.redis, "apns") == 0
        assert await queued(stack.redis, "apns") == 0  # acknowledged, gone


@pytest.mark.workers()
async def test_fcm_quota_retry_after_is_honoured(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _sender(stack, "fcm") as sender:
        incident = await _incident(stack)
        # The fake's clock stands at the first second of a minute, so both sends fall in
        # one of its quota windows and the second one waits 59 s for the next.
        minute = time.time() // 60 * 60
        monkeypatch.setattr(stack.fcm, "clock", lambda: minute + 1)
        stack.fcm.set_quota(1)   # one message a minute: the second gets QUOTA_EXCEEDED
        for token in ("fcm-token-a", "fcm-token-b"):
            await _enqueue(stack, _push(incident, "fcm", token))
        await _run_batch(stack, sender, "fcm")
        outcomes = sorted(o for o, _, _ in await _outcomes(stack))
        assert outcomes == ["retry", "sent"]
        [(_, due)] = [m for s in range(SHARDS) for m in await stack.redis.zrange(
            keys.retry_schedule("fcm", s), 0, -1, withscores=True)]
        # The fake's Retry-After (59 s to its next window) is the floor of the backoff.
        assert due - time.time() >= 59 - 1.5


@pytest.mark.workers()
async def test_streaming_sender_sends_again_what_it_could_not_record_and_loses_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL drops the connection while the first outcomes are being recorded: those
    entries stay pending, are claimed again and sent again (same collapse id), every
    push ends up recorded exactly once, and the stream drains."""
    incident_id = await _incident(stack)
    tokens = {secrets.token_hex(32) for _ in range(40)}
    for token in tokens:
        await _enqueue(stack, _push(incident_id, "apns", token))
    async with _sender(stack, "apns") as sender:
        record, failures = sender.record, []

        async def flaky(results: Any) -> None:
            if not failures:
                failures.append(len(results))
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
            await record(results)

        monkeypatch.setattr(sender, "record", flaky)
        consumer = ShardedConsumer(stack.redis, sender.streams, keys.SENDER_GROUP, "t",
                                   batch=10, block_ms=50, claim_idle_ms=300,
                                   claim_every_s=0.1)
        stop = asyncio.Event()
        run = asyncio.create_task(sender.run(consumer, stop, flush_size=10))

        async def all_recorded() -> bool:
            return await stack.pool.fetchval("SELECT count(*) FROM deliveries") == len(tokens)

        try:
            await wait_for(all_recorded, within=15, what="every outcome recorded")
            await wait_for(lambda: stream_drained(stack, "apns"), within=5,
                           what="the stream drained")
        finally:
            stop.set()
            await asyncio.wait_for(run, 5)
    assert failures and failures[0] > 0
    delivered = [d.token for d in stack.apns.deliveries]
    assert set(delivered) == tokens
    resent = len(delivered) - len(tokens)
    assert 0 < resent <= failures[0]      # the unrecorded ones, and only those, twice
    assert {d.headers["apns-collapse-id"] for d in stack.apns.deliveries} == {incident_id}
    outcomes = await _outcomes(stack)
    assert [o for o, _, _ in outcomes] == ["sent"] * len(tokens)


async def stream_drained(stack: Stack, platform: str) -> bool:
    """Every shard's push stream of the platform read, acknowledged and emptied."""
    for stream in keys.push_streams(platform, SHARDS):
        for group in await stack.redis.xinfo_groups(stream):
            if group["pending"] or group.get("lag"):
                return False
    return await queued(stack.redis, platform) == 0


@pytest.mark.workers()
async def test_outcomes_of_erased_devices_and_deleted_incidents_are_recorded_as_before(
    stack: Stack,
) -> None:
    """A batch is written with one COPY; the table's trigger (migration 0011) writes
    the row of a device erased after its push was queued unlinked, and drops the row
    of an incident deleted meanwhile (its older rows went with it); every other row
    as it was."""
    kept, gone = await _incident(stack), await _incident(stack)
    devices = [str(await stack.pool.fetchval(
        """INSERT INTO devices (platform, token, secret_hash) VALUES ('fcm', $1, '\\x00')
           RETURNING id""", secrets.token_hex(32))) for _ in range(3)]
    pushes = [replace(_push(kept, "fcm", secrets.token_hex(32)), device_id=d) for d in devices]
    async with _sender(stack, "fcm") as sender:
        now = time.time()
        await sender.record([Result(f"{n}-0", p, Sent("m", 200), now)
                             for n, p in enumerate(pushes[:2])])
        assert await stack.pool.fetchval("SELECT count(*) FROM deliveries") == 2

        await stack.pool.execute("DELETE FROM devices WHERE id = $1", devices[2])
        late = [replace(pushes[0], incident_id=gone), *pushes]
        await stack.pool.execute("DELETE FROM incidents WHERE id = $1", gone)
        await sender.record([Result(f"{n}-1", p, Sent("m", 200), now)
                             for n, p in enumerate(late)])
    rows = await stack.pool.fetch(
        "SELECT incident_id::text, device_id::text FROM deliveries ORDER BY id")
    written = [(r["incident_id"], r["device_id"] or "") for r in rows]
    assert written[:2] == [(kept, devices[0]), (kept, devices[1])]
    assert sorted(written[2:]) == sorted([(kept, devices[0]), (kept, devices[1]), (kept, "")])


async def _stream_all(stack: Stack, sender: Sender, platform: str, count: int) -> None:
    """The streaming sender until ``count`` outcomes are recorded, then stopped."""
    consumer = ShardedConsumer(stack.redis, sender.streams, keys.SENDER_GROUP, "t",
                               batch=10, block_ms=50)
    stop = asyncio.Event()
    run = asyncio.create_task(sender.run(consumer, stop, flush_size=10))

    async def recorded() -> bool:
        return await stack.pool.fetchval("SELECT count(*) FROM deliveries") == count

    try:
        await wait_for(recorded, within=10, what=f"{count} outcomes recorded")
    finally:
        stop.set()
        await asyncio.wait_for(run, 5)


@pytest.mark.workers()
@pytest.mark.parametrize("platform", ["apns", "fcm"])
async def test_a_start_that_raises_is_retried(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, platform: str,
) -> None:
    """Both gateways' start() carries the sends; a start() that raises (a bug) ends in
    a retry, and the sender carries on."""
    incident = await _incident(stack)
    tokens = [f"{n:064x}" if platform == "apns" else f"fcm-token-{n}" for n in range(30)]
    fake = stack.apns if platform == "apns" else stack.fcm
    for token in tokens:
        await _enqueue(stack, _push(incident, platform, token))
    async with _sender(stack, platform) as sender:
        await _run_batch(stack, sender, platform)
        assert sorted(d.token for d in fake.deliveries) == sorted(tokens)

        def broken(*_: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(sender.gateway, "start", broken)
        await _enqueue(stack, _push(incident, platform, "f" * 64))
        await _run_batch(stack, sender, platform)
    outcomes = await _outcomes(stack)
    assert outcomes[:-1] == [("sent", None, 1)] * len(tokens)
    assert outcomes[-1] == ("retry", "RuntimeError", 1)
    assert await scheduled_retries(stack.redis, platform) == 1


@pytest.mark.workers()
@pytest.mark.parametrize("platform", ["apns", "fcm"])
async def test_a_response_callback_that_raises_leaks_no_send_slot(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, platform: str,
) -> None:
    """The gateway's answer reaches code that raises (a bug in classifying it): the
    push is retried and its send slot freed. With two slots and ten pushes, a leaked
    slot would stop the sender after the second."""
    incident = await _incident(stack)
    for n in range(10):
        token = f"{n:064x}" if platform == "apns" else f"fcm-token-{n}"
        await _enqueue(stack, _push(incident, platform, token))

    def choke(response: object) -> None:
        raise RuntimeError("a bug in classify")

    monkeypatch.setattr(f"workers.{platform}.classify", choke)
    async with _sender(stack, platform, concurrency=2) as sender:
        await _run_batch(stack, sender, platform)
    assert await _outcomes(stack) == [("retry", "RuntimeError", 1)] * 10
    assert await scheduled_retries(stack.redis, platform) == 10
