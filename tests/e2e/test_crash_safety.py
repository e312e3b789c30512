"""A sender killed with SIGKILL in the middle of a 5,000-device fan-out loses nothing.

The web app, the matcher and the fake APNs run in the test's event loop (the e2e
``stack``); the APNs senders are real ``geopush worker apns`` processes, so SIGKILL is
a real, unannounced death. The kill is timed from inside the fake: it happens while
the sender has requests waiting for an answer, so there is always a batch read but not
acknowledged, part of it already delivered. A second sender must reclaim that batch
(XAUTOCLAIM) and deliver the rest; the part delivered twice carries the same collapse id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from loadtest.fake_apns import FakeApns
from server import keys
from server.dev.devkeys import ensure_tls, public_key_pem
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, create_agency, incident, post_incident, scheduled_retries
from workers.push import Push

REPO = Path(__file__).resolve().parents[2]
APNS_STREAMS = keys.push_streams("apns", keys.DEFAULT_PUSH_STREAM_SHARDS)
DEVICES = 5_000
CLAIM_IDLE_MS = 2_000


@contextlib.asynccontextmanager
async def own_fake_apns(stack: Stack) -> AsyncIterator[FakeApns]:
    """A fake APNs for the sender processes, trusting the stack's provider key and
    serving its certificate (fresh: no provider token seen yet).

    The fake applies Apple's "a new provider token at most every 20 minutes" per team,
    so a replacement sender is only served because the senders share one token through
    Redis (workers/apns_token.py): these tests check that too."""
    apns = stack.settings.apns
    assert apns is not None and apns.ca_file is not None
    fake = FakeApns(
        tls=ensure_tls(apns.ca_file.parent),
        provider_keys={apns.key_id: public_key_pem(apns.key_file.read_bytes())},
        team_id=apns.team_id, topic=apns.topic,
    )
    await fake.start(port=0, control_port=None)
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def gateway(stack: Stack) -> AsyncIterator[FakeApns]:
    async with own_fake_apns(stack) as fake:
        yield fake


def sender_env(stack: Stack, port: int, consumer: str, **extra: str) -> dict[str, str]:
    """The environment of a ``geopush worker apns`` aimed at the test services and a
    fake APNs on ``port`` (and at nothing the developer's shell may have set)."""
    apns = stack.settings.apns
    assert apns is not None and apns.ca_file is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOPUSH_")}
    env.update({
        "GEOPUSH_DATABASE_URL": stack.settings.database_url,
        "GEOPUSH_REDIS_URL": stack.settings.redis_url,
        "GEOPUSH_APNS_KEY_FILE": str(apns.key_file),
        "GEOPUSH_APNS_KEY_ID": apns.key_id,
        "GEOPUSH_APNS_TEAM_ID": apns.team_id,
        "GEOPUSH_APNS_TOPIC": apns.topic,
        "GEOPUSH_APNS_HOST": "127.0.0.1",
        "GEOPUSH_APNS_PORT": str(port),
        "GEOPUSH_APNS_CA_FILE": str(apns.ca_file),
        "GEOPUSH_APNS_TIMEOUT": "5",
        "GEOPUSH_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
        "GEOPUSH_CONSUMER_NAME": consumer,
        "GEOPUSH_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


@contextlib.asynccontextmanager
async def sender_process(
    stack: Stack, fake: FakeApns, consumer: str, log_dir: Path, **extra: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A ``geopush worker apns`` subprocess; killed on the way out if still running."""
    log_path = log_dir / f"{consumer}.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server.cli", "worker", "apns",
            cwd=REPO, env=sender_env(stack, fake.port, consumer, **extra),
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


def sender_log(log_dir: Path, consumer: str) -> str:
    path = log_dir / f"{consumer}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


async def bulk_apns_devices(pool: asyncpg.Pool, count: int, prefix: str) -> set[str]:
    """``count`` APNs devices (64-hex tokens), each with one 300 m zone around POINT."""
    await pool.execute(
        """INSERT INTO devices (platform, token, secret_hash)
           SELECT 'apns', encode(sha256(convert_to($1 || g, 'UTF8')), 'hex'), '\\x00'
             FROM generate_series(1, $2::int) g""", prefix, count)
    await pool.execute(
        """WITH home AS (SELECT ST_Multi(ST_Buffer(
                   ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, 300)::geometry) AS geom)
           INSERT INTO zones (device_id, name, geom)
           SELECT d.id, 'home', home.geom FROM devices d, home WHERE d.platform = 'apns'""",
        POINT[1], POINT[0])
    await pool.execute("ANALYZE zones")
    return {r["token"] for r in await pool.fetch("SELECT token FROM devices")}


async def consumer_pending(redis: aioredis.Redis, consumer: str) -> int:
    """Entries ``consumer`` read and never acknowledged, on every APNs push shard."""
    pending = 0
    for stream in APNS_STREAMS:
        if not await redis.exists(stream):
            continue
        summary = await redis.xpending(stream, keys.SENDER_GROUP)
        for c in summary.get("consumers") or []:
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name == consumer:
                pending += int(c["pending"])
    return pending


async def orphaned_tokens(redis: aioredis.Redis, consumer: str) -> set[str]:
    """Device tokens of the entries ``consumer`` read and never acknowledged."""
    tokens = set()
    for stream in APNS_STREAMS:
        pending = await redis.xpending_range(stream, keys.SENDER_GROUP, min="-", max="+",
                                             count=10_000, consumername=consumer)
        for p in pending:
            [(_, fields)] = await redis.xrange(stream, p["message_id"], p["message_id"])
            tokens.add(Push.from_fields(fields).token)
    return tokens


async def stream_settled(redis: aioredis.Redis) -> bool:
    """Everything on the APNs push streams was read and acknowledged."""
    for stream in APNS_STREAMS:
        [group] = await redis.xinfo_groups(stream)
        if group["pending"] or group.get("lag"):
            return False
    return True


async def finish_with_new_sender(
    stack: Stack, fake: FakeApns, consumer: str, log_dir: Path, tokens: set[str], *,
    within: float, exit_within: float,
) -> int | None:
    """A new sender process delivers every device's push and acknowledges the stream;
    then SIGTERM. Its exit code."""
    async with sender_process(stack, fake, consumer, log_dir) as sender:
        try:
            await wait_for(lambda: {d.token for d in fake.deliveries} >= tokens,
                           within=within, what="every device's push at the fake")
            await wait_for(lambda: stream_settled(stack.redis), within=10,
                           what="the push stream to be acknowledged")
        except AssertionError as exc:
            report = await progress(stack, fake, tokens)
            raise AssertionError(
                f"{exc}\n{report}\n{sender_log(log_dir, consumer)}") from None
        sender.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(sender.wait(), timeout=exit_within)


async def progress(stack: Stack, fake: FakeApns, tokens: set[str]) -> str:
    delivered = {d.token for d in fake.deliveries}
    groups = [await stack.redis.xinfo_groups(s) for s in APNS_STREAMS]
    pending = [await stack.redis.xpending(s, keys.SENDER_GROUP) for s in APNS_STREAMS]
    retries = await scheduled_retries(stack.redis, "apns")
    return (f"fake: {len(fake.deliveries)} deliveries, {len(delivered & tokens)} of "
            f"{len(tokens)} devices, stats {dict(fake.stats)}; groups {groups}; "
            f"pending {pending}; retries scheduled {retries}")


def in_flight_at(fake: FakeApns) -> int:
    """Requests the fake holds, waiting out its injected latency (white box: the fake
    has no public counter of this)."""
    return sum(len(c.timers) for c in fake._connections)


@pytest.mark.slow
@pytest.mark.workers("matcher")
async def test_sigkilled_sender_loses_no_push_and_duplicates_share_a_collapse_id(
    stack: Stack, gateway: FakeApns, tmp_path: Path
) -> None:
    fake = gateway
    tokens = await bulk_apns_devices(stack.pool, DEVICES, "crash-")
    assert len(tokens) == DEVICES
    secret = await create_agency(stack.client)
    # Half the devices are answered at once, the other half 100 ms late: when the kill
    # comes, the batch in flight is partly delivered (those are re-sent: duplicates)
    # and partly still waiting at the fake (never delivered by the killed sender).
    fake.set_faults(rate=1, status=200, latency_ms=100, tokens=sorted(tokens)[::2])

    async with sender_process(stack, fake, "crash-a", tmp_path) as first:
        status, accepted = await post_incident(stack.client, secret, incident())
        assert (status, accepted["decision"]) == (202, "alert"), accepted
        incident_id = accepted["incident_id"]

        # Kill it once a few hundred went out, at a moment the fake holds some of its
        # requests: checked and killed in one step of this loop, the fake can't answer
        # in between, so the batch those requests belong to is certainly unacknowledged.
        deadline = time.monotonic() + 30
        while not (len(fake.deliveries) >= 300 and in_flight_at(fake) >= 20):
            assert first.returncode is None, sender_log(tmp_path, "crash-a")
            assert time.monotonic() < deadline, (
                f"{await progress(stack, fake, tokens)}\n{sender_log(tmp_path, 'crash-a')}")
            await asyncio.sleep(0.002)
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
    # Requests that reached the fake before the connections dropped still count.
    await wait_for(lambda: not fake._connections, within=5, what="the fake to see the kill")
    delivered_before_kill = {d.token for d in fake.deliveries}
    assert len(delivered_before_kill) < DEVICES, "the kill came too late to prove anything"
    orphaned = await orphaned_tokens(stack.redis, "crash-a")
    assert orphaned, "the killed sender left nothing pending: the kill missed its batch"
    # What the fake already delivered of that batch will be delivered again.
    expect_twice = orphaned & delivered_before_kill
    assert expect_twice, "no push of the orphaned batch had been delivered yet"

    # The survivor delivers the rest, then stops gracefully, for good measure.
    assert await finish_with_new_sender(stack, fake, "crash-b", tmp_path, tokens,
                                        within=40, exit_within=25) == 0

    # Every device got its push; a device got it twice only from the batch the killed
    # sender had read and not acknowledged, and always under the same collapse id.
    by_token: dict[str, list[str | None]] = defaultdict(list)
    for d in fake.deliveries:
        by_token[d.token].append(d.headers.get("apns-collapse-id"))
    assert set(by_token) == tokens
    duplicated = {t: ids for t, ids in by_token.items() if len(ids) > 1}
    assert all(ids == [incident_id] * len(ids) for ids in duplicated.values()), duplicated
    assert all(len(ids) == 2 for ids in duplicated.values()), duplicated
    assert set(duplicated) == expect_twice
    assert fake.stats["200"] == len(fake.deliveries)
    assert set(fake.stats) <= {"200", "connections", "client_resets"}, fake.stats
    assert await consumer_pending(stack.redis, "crash-a") == 0

    # The deliveries table has a 'sent' row for every device and nothing else. A device
    # has two rows only if it was pushed twice: the killed sender may die between
    # recording a batch and acknowledging it (it runs several batches at once), and
    # that batch is then sent and recorded again. Never more rows than pushes.
    rows = await stack.pool.fetch(
        """SELECT outcome, count(*) AS n, count(DISTINCT device_id) AS devices
             FROM deliveries WHERE incident_id = $1::uuid GROUP BY outcome""", incident_id)
    outcomes = {r["outcome"]: (r["n"], r["devices"]) for r in rows}
    assert set(outcomes) == {"sent"} and outcomes["sent"][1] == DEVICES, outcomes
    assert DEVICES <= outcomes["sent"][0] <= len(fake.deliveries), outcomes
    assert await scheduled_retries(stack.redis, "apns") == 0
