"""SIGTERM stops a sender from reading, lets its in-flight sends finish within a bound,
acknowledges what finished and exits 0; what it never read is left for the next one.

The senders are real ``geopush worker apns`` processes (see test_crash_safety.py for
the harness); the fake APNs answers every push a second late, so a SIGTERM sent while
the fake holds a whole batch lands in the middle of sending.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster

from loadtest.fake_apns import FakeApns
from tests.e2e.conftest import Stack, wait_for
from tests.e2e.test_crash_safety import (
    APNS_STREAMS,
    bulk_apns_devices,
    consumer_pending,
    finish_with_new_sender,
    in_flight_at,
    own_fake_apns,
    progress,
    sender_log,
    sender_process,
)
from tests.helpers import create_agency, incident, post_incident

DEVICES = 400
BATCH = 50
LATENCY_S = 1.0
# The gateway's latency, recording and acknowledging, and the interpreter's exit; far
# below the runner's SHUTDOWN_GRACE_S (20 s), after which in-flight work is abandoned.
EXIT_BOUND_S = LATENCY_S + 4.0


@pytest.fixture
async def slow_gateway(stack: Stack) -> AsyncIterator[FakeApns]:
    async with own_fake_apns(stack) as fake:
        fake.set_faults(rate=1, status=200, latency_ms=int(LATENCY_S * 1000))
        yield fake


async def blocked_in_xreadgroup(stack: Stack) -> bool:
    """Some Redis client waits in XREADGROUP: the sender is up and idle. (Redis 7.0
    lists a consumer only once it was handed an entry, so XINFO can't tell.)"""
    if isinstance(stack.redis, RedisCluster):   # every master's clients
        by_node = await stack.redis.client_list(target_nodes=RedisCluster.PRIMARIES)
        clients = [c for listed in by_node.values() for c in listed]
    else:
        clients = await stack.redis.client_list()
    return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in clients)


@pytest.mark.slow
@pytest.mark.workers("matcher")
async def test_sigterm_finishes_in_flight_sends_acks_them_and_leaves_the_rest(
    stack: Stack, slow_gateway: FakeApns, tmp_path: Path
) -> None:
    fake = slow_gateway
    tokens = await bulk_apns_devices(stack.pool, DEVICES, "grace-")
    secret = await create_agency(stack.client)

    # As many sends in flight as a batch holds: the sender reads the next batch only
    # once the whole previous one is done, so exactly one is in flight when SIGTERM
    # lands.
    async with sender_process(stack, fake, "grace-a", tmp_path,
                              GEOPUSH_STREAM_BATCH=str(BATCH),
                              GEOPUSH_SEND_CONCURRENCY=str(BATCH)) as first:
        status, accepted = await post_incident(stack.client, secret, incident())
        assert (status, accepted["decision"]) == (202, "alert"), accepted
        incident_id = accepted["incident_id"]

        # The first batch went through; the second is entirely at the fake, waiting
        # out the latency. SIGTERM now, in the same step of this loop as the check.
        deadline = time.monotonic() + 20
        while not (len(fake.deliveries) == BATCH and in_flight_at(fake) == BATCH):
            assert first.returncode is None, sender_log(tmp_path, "grace-a")
            assert time.monotonic() < deadline, (
                f"{await progress(stack, fake, tokens)}\n{sender_log(tmp_path, 'grace-a')}")
            await asyncio.sleep(0.002)
        first.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.wait_for(first.wait(), timeout=EXIT_BOUND_S + 5)
        took = time.monotonic() - signalled
    log = sender_log(tmp_path, "grace-a")
    assert code == 0, log
    assert took < EXIT_BOUND_S, f"exit took {took:.1f} s\n{log}"
    assert took >= LATENCY_S * 0.5, "it exited without waiting for its in-flight sends"

    # The batch in flight finished (not cancelled: no stream was reset) and nothing
    # was read after SIGTERM.
    assert len(fake.deliveries) == 2 * BATCH
    assert fake.stats["client_resets"] == 0
    delivered = {d.token for d in fake.deliveries}
    assert len(delivered) == 2 * BATCH

    # Whatever reached the fake is recorded and acknowledged.
    rows = await stack.pool.fetch(
        """SELECT d.token, x.outcome FROM deliveries x JOIN devices d ON d.id = x.device_id
            WHERE x.incident_id = $1::uuid""", incident_id)
    assert Counter(r["outcome"] for r in rows) == {"sent": 2 * BATCH}
    assert {r["token"] for r in rows} == delivered
    assert await consumer_pending(stack.redis, "grace-a") == 0

    # The rest is still on the stream, unread: nothing was lost, a new sender gets it.
    groups = [g for s in APNS_STREAMS for g in await stack.redis.xinfo_groups(s)]
    assert (sum(g["pending"] for g in groups), sum(g["lag"] for g in groups)) == (
        0, DEVICES - 2 * BATCH), groups

    fake.set_faults(rate=0)
    assert await finish_with_new_sender(stack, fake, "grace-b", tmp_path, tokens,
                                        within=30, exit_within=EXIT_BOUND_S + 5) == 0

    # A graceful stop duplicates nothing.
    assert sorted(d.token for d in fake.deliveries) == sorted(tokens)
    sent = await stack.pool.fetchval(
        """SELECT count(DISTINCT device_id) FROM deliveries
            WHERE incident_id = $1::uuid AND outcome = 'sent'""", incident_id)
    total = await stack.pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE incident_id = $1::uuid", incident_id)
    assert (sent, total) == (DEVICES, DEVICES)


@pytest.mark.slow
@pytest.mark.workers()
async def test_sigterm_while_idle_exits_promptly(
    stack: Stack, slow_gateway: FakeApns, tmp_path: Path
) -> None:
    async with sender_process(stack, slow_gateway, "idle-a", tmp_path) as proc:
        try:
            await wait_for(lambda: blocked_in_xreadgroup(stack), within=15,
                           what="the sender to read from its stream")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sender_log(tmp_path, 'idle-a')}") from None
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), timeout=10)
        took = time.monotonic() - signalled
    assert code == 0, sender_log(tmp_path, "idle-a")
    # One blocked XREADGROUP (1 s) at most, plus closing up.
    assert took < 3, f"{took:.1f} s"
