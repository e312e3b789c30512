"""workers.gateways.apns_client against the fake APNs over TLS. The first two tests are
the scenarios where stock aioapns 4.0 fails (docs/adr/0001-own-http2-client.md has the
recorded evidence): 5,000 error responses over one connection, and a timed-out send
among others on the same connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from loadtest.fake_apns import FakeApns
from server.dev.devkeys import (
    DEV_APNS_KEY_ID,
    DEV_APNS_TEAM_ID,
    DEV_APNS_TOPIC,
    TlsFiles,
    ensure_apns_key,
    ensure_tls,
    public_key_pem,
)
from workers.gateways.apns_client import ApnsClient, ApnsResponse, ApnsTransportError
from workers.gateways.waiting import result_of

GOOD = "a1" * 32
PAYLOAD = {"aps": {"alert": {"title": "Structure fire nearby"}}}


@dataclass(frozen=True)
class Keys:
    tls: TlsFiles
    private_pem: str


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("certs")
    return Keys(ensure_tls(directory), ensure_apns_key(directory).key_file.read_text())


@pytest.fixture
async def fake(keys: Keys) -> AsyncIterator[FakeApns]:
    server = FakeApns(
        tls=keys.tls,
        provider_keys={DEV_APNS_KEY_ID: public_key_pem(keys.private_pem.encode())},
        team_id=DEV_APNS_TEAM_ID, topic=DEV_APNS_TOPIC,
    )
    await server.start(port=0, control_port=None)
    yield server
    await server.stop()


def _context(keys: Keys) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(keys.tls.ca_cert))


async def send(client: ApnsClient, token: str, payload: dict[str, Any] = PAYLOAD,
               **options: Any) -> ApnsResponse:
    """``client.start`` awaited; an ApnsTransportError is raised."""
    options.setdefault("collapse_id", None)
    options.setdefault("expiration", None)
    return await result_of(functools.partial(client.start, token, json.dumps(payload).encode(),
                                             **options))


class Ours:
    def __init__(self, fake: FakeApns, keys: Keys, *, max_connections: int,
                 timeout: float) -> None:
        self.client = ApnsClient(
            key_pem=keys.private_pem, key_id=DEV_APNS_KEY_ID, team_id=DEV_APNS_TEAM_ID,
            topic=DEV_APNS_TOPIC, host="127.0.0.1", port=fake.port, ssl_context=_context(keys),
            max_connections=max_connections, request_timeout=timeout,
        )

    async def send(self, token: str) -> ApnsResponse:
        return await send(self.client, token)

    async def close(self) -> None:
        await self.client.close()


@contextlib.asynccontextmanager
async def sender(fake: FakeApns, keys: Keys, *, max_connections: int = 1,
                 request_timeout: float = 10.0) -> AsyncIterator[Ours]:
    s = Ours(fake, keys, max_connections=max_connections, timeout=request_timeout)
    try:
        yield s
    finally:
        await s.close()


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_5000_error_responses_over_one_connection(fake: FakeApns, keys: Keys) -> None:
    """The receive window is credited back: error bodies never stall the connection
    (stock aioapns never acknowledges DATA, and stalls after ~2,300)."""
    async with sender(fake, keys, max_connections=1) as s:
        assert (await s.send(GOOD)).status == 200  # lifts the one-stream limit
        done = 0
        progress = asyncio.Event()
        in_flight = asyncio.Semaphore(500)

        async def one() -> ApnsResponse:
            nonlocal done
            async with in_flight:
                response = await s.send("not-a-token")
            done += 1
            progress.set()
            return response

        tasks = [asyncio.create_task(one()) for _ in range(5000)]
        try:
            while done < 5000:
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), 2)
                except TimeoutError:
                    pytest.fail(f"connection stalled after {done} of 5000 responses")
            results = await asyncio.gather(*tasks)
        finally:
            await _cancel(tasks)
        assert {(r.status, r.reason) for r in results} == {(400, "BadDeviceToken")}
        assert fake.stats["connections"] == 1


async def test_timed_out_send_leaves_the_connection_alone(fake: FakeApns, keys: Keys) -> None:
    """A timed-out send's stream is reset and its late answer dropped; the other sends
    on the connection carry on (stock aioapns: its connection dies, and every send in
    flight on it is lost, then retried on a new connection: duplicates)."""
    slow = "5e" * 32
    fake.set_faults(rate=1.0, status=200, reason="", latency_ms=500, tokens=[slow])
    async with sender(fake, keys, max_connections=1, request_timeout=0.25) as s:
        assert (await s.send(GOOD)).status == 200
        slow_send = asyncio.create_task(s.send(slow))
        sent: list[str] = []

        def slow_settled() -> bool:  # answered late (stock) or reset by the client (ours)
            answered = any(d.token == slow for d in fake.deliveries)
            return slow_send.done() and (answered or fake.stats["client_resets"] > 0)

        async def worker(n: int) -> list[ApnsResponse]:
            results: list[ApnsResponse] = []
            after = 0
            while after < 25:
                token = f"{n:02x}{len(results):062x}"
                sent.append(token)
                results.append(await s.send(token))
                after += slow_settled()
            return results

        results = [r for rs in await asyncio.gather(*(worker(n) for n in range(8))) for r in rs]
        with pytest.raises(ApnsTransportError):
            await slow_send
        assert {r.status for r in results} == {200}
        delivered = [d.token for d in fake.deliveries if d.token in set(sent)]
        assert sorted(delivered) == sorted(sent)  # each exactly once
        assert fake.stats["connections"] == 1


@pytest.fixture
async def client(fake: FakeApns, keys: Keys) -> AsyncIterator[ApnsClient]:
    c = ApnsClient(
        key_pem=keys.private_pem, key_id=DEV_APNS_KEY_ID, team_id=DEV_APNS_TEAM_ID,
        topic=DEV_APNS_TOPIC, host="127.0.0.1", port=fake.port, ssl_context=_context(keys),
        max_connections=4, request_timeout=5,
    )
    yield c
    await c.close()


async def test_headers_and_absolute_expiration(client: ApnsClient, fake: FakeApns) -> None:
    expires = int(time.time()) + 3600
    response = await send(
        client, GOOD, PAYLOAD, collapse_id="F220009060", expiration=expires, priority=5,
        push_type="alert", apns_id="2f6a3d52-1c7e-4a4e-9c55-0b1c6f5c0a11",
    )
    assert response == ApnsResponse(200, None, None, "2f6a3d52-1c7e-4a4e-9c55-0b1c6f5c0a11")
    [delivery] = fake.deliveries
    assert delivery.payload == PAYLOAD
    assert delivery.headers["apns-expiration"] == str(expires)
    assert delivery.headers["apns-collapse-id"] == "F220009060"
    assert delivery.headers["apns-priority"] == "5"
    assert delivery.headers["apns-push-type"] == "alert"
    assert delivery.headers["apns-topic"] == DEV_APNS_TOPIC
    await send(client, GOOD, PAYLOAD, collapse_id=None, expiration=0)
    assert fake.deliveries[1].headers["apns-expiration"] == "0"
    assert "apns-collapse-id" not in fake.deliveries[1].headers


async def test_one_jwt_across_connections_and_sends(client: ApnsClient, fake: FakeApns) -> None:
    fake.set_faults(rate=1.0, status=200, reason="", latency_ms=50)
    tokens = [f"{i:064x}" for i in range(40)]
    results = await asyncio.gather(
        *(send(client, t) for t in tokens)
    )
    assert {r.status for r in results} == {200}
    assert fake.stats["connections"] > 1
    assert len({d.headers["authorization"] for d in fake.deliveries}) == 1


async def test_unregistered_returns_timestamp(client: ApnsClient, fake: FakeApns) -> None:
    fake.mark_unregistered([GOOD], timestamp_ms=1_764_300_000_000)
    response = await send(client, GOOD)
    assert (response.status, response.reason, response.timestamp_ms) == (
        410, "Unregistered", 1_764_300_000_000)


async def test_error_body_split_across_frames(client: ApnsClient, fake: FakeApns) -> None:
    reason = "R" * 20_000  # > one 16 KB DATA frame
    fake.set_faults(rate=1.0, status=500, reason=reason, latency_ms=0)
    response = await send(client, GOOD)
    assert (response.status, response.reason) == (500, reason)


async def test_timeout_is_a_transport_error(fake: FakeApns, keys: Keys) -> None:
    fake.set_faults(rate=1.0, status=200, reason="", latency_ms=400)
    async with sender(fake, keys, request_timeout=0.1) as s:
        with pytest.raises(ApnsTransportError):
            await s.send(GOOD)


async def test_connection_refused_is_a_transport_error(keys: Keys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ApnsClient(
        key_pem=keys.private_pem, key_id=DEV_APNS_KEY_ID, team_id=DEV_APNS_TEAM_ID,
        topic=DEV_APNS_TOPIC, host="127.0.0.1", port=port, ssl_context=_context(keys),
    )
    try:
        with pytest.raises(ApnsTransportError):
            await send(client, GOOD)
    finally:
        await client.close()


async def test_reconnects_after_goaway(client: ApnsClient, fake: FakeApns) -> None:
    assert (await send(client, GOOD)).status == 200
    [connection] = client.connections
    fake.goaway("Shutdown")
    await asyncio.wait_for(connection.closed, 5)
    assert (await send(client, GOOD)).status == 200
    assert fake.stats["connections"] == 2


async def test_connection_reset_fails_in_flight_sends_and_the_next_one_reconnects(
    client: ApnsClient, fake: FakeApns
) -> None:
    assert (await send(client, GOOD)).status == 200
    fake.set_faults(rate=1.0, reset=True)
    with pytest.raises(ApnsTransportError):
        await send(client, GOOD)
    assert fake.stats["resets"] == 1
    fake.set_faults(rate=0)
    assert (await send(client, GOOD)).status == 200
    assert fake.stats["connections"] == 2


async def test_start_answers_through_a_callback(client: ApnsClient, fake: FakeApns) -> None:
    """The first push (no provider token yet) goes the long way, in a task; then they
    are written at once and answered from the connection's callback; refusals and
    timeouts arrive the same way."""
    loop = asyncio.get_running_loop()

    async def started(token: str, **options: Any) -> ApnsResponse | Exception:
        answer: asyncio.Future[ApnsResponse | Exception] = loop.create_future()
        client.start(token, b'{"aps":{}}', answer.set_result, collapse_id="F1",
                     expiration=None, **options)
        return await asyncio.wait_for(answer, 10)

    first = await started(GOOD, apns_id="2f6a3d52-1c7e-4a4e-9c55-0b1c6f5c0a11")
    assert first == ApnsResponse(200, None, None, "2f6a3d52-1c7e-4a4e-9c55-0b1c6f5c0a11")
    answers = await asyncio.gather(*(started(f"{n:064x}") for n in range(50)))
    assert {a.status for a in answers if isinstance(a, ApnsResponse)} == {200}
    assert len(answers) == 50
    assert len(fake.deliveries) == 51
    assert fake.deliveries[-1].headers["apns-collapse-id"] == "F1"
    bad = await started("not-a-token")
    assert isinstance(bad, ApnsResponse) and (bad.status, bad.reason) == (400, "BadDeviceToken")


async def test_start_hands_over_timeouts(fake: FakeApns, keys: Keys) -> None:
    client = ApnsClient(
        key_pem=keys.private_pem, key_id=DEV_APNS_KEY_ID, team_id=DEV_APNS_TEAM_ID,
        topic=DEV_APNS_TOPIC, host="127.0.0.1", port=fake.port, ssl_context=_context(keys),
        request_timeout=0.3)
    loop = asyncio.get_running_loop()
    assert (await send(client, GOOD)).status == 200
    fake.set_faults(rate=1.0, status=200, reason="", latency_ms=2000)
    answer: asyncio.Future[ApnsResponse | Exception] = loop.create_future()
    client.start(GOOD, b'{"aps":{}}', answer.set_result, collapse_id=None, expiration=None)
    late = await asyncio.wait_for(answer, 5)
    assert isinstance(late, ApnsTransportError) and "within 0.3 s" in str(late)
    fake.set_faults(rate=0.0, status=200, reason="", latency_ms=0)
    await client.close()
