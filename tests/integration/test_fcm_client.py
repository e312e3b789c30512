"""geopush's FCM client against the fake gateway: tokens, retries, error parsing."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.fake_fcm import FakeFcm
from server.dev.devenv import free_port
from server.dev.devkeys import ensure_fcm_service_account, ensure_tls, public_key_pem
from tests.fake_fcm_fixtures import PROJECT
from workers.gateways.fcm_client import (
    FcmAuthError,
    FcmClient,
    FcmResponse,
    FcmTransportError,
    parse_response,
    parse_retry_after,
)
from workers.gateways.waiting import result_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sa_file(fake: FakeFcm, key_dir: Path) -> str:
    path = key_dir / "fcm-service-account.json"
    assert json.loads(path.read_text())["token_uri"] == fake.token_uri
    return str(path)


async def send(client: FcmClient, message: dict[str, Any]) -> FcmResponse:
    """``client.start_body`` awaited; the exception it hands on is raised."""
    body = json.dumps({"message": message}).encode()
    return await result_of(functools.partial(client.start_body, body))


@pytest.fixture
async def client(fake: FakeFcm, sa_file: str) -> AsyncIterator[FcmClient]:
    fcm = FcmClient(service_account_file=sa_file, endpoint=fake.url, timeout=5.0)
    try:
        yield fcm
    finally:
        await fcm.close()


def _message(device: str = "device-1") -> dict[str, Any]:
    return {
        "token": device,
        "notification": {"title": "Structure fire nearby", "body": "3 min. ago"},
        "data": {"incident": "F1", "category": "structure_fire"},
        "android": {"priority": "HIGH", "ttl": "3600s", "collapse_key": "F1"},
    }


async def test_send_succeeds_and_is_recorded(client: FcmClient, fake: FakeFcm) -> None:
    response = await send(client, _message("abc"))
    assert response.ok
    assert response.status == 200
    assert response.error_code is None
    assert response.name is not None
    assert response.name.startswith(f"projects/{PROJECT}/messages/")
    assert client.project_id == PROJECT  # taken from the key file
    [delivery] = fake.deliveries
    assert delivery.token == "abc"
    assert delivery.message == _message("abc")
    assert delivery.name == response.name
    assert delivery.headers["authorization"].startswith("Bearer ya29.")


async def test_constructor_does_no_io() -> None:
    fcm = FcmClient(service_account_file="/nonexistent/key.json")
    await fcm.close()
    with pytest.raises(RuntimeError):
        await send(fcm, _message())


async def test_token_fetched_once_for_concurrent_sends(client: FcmClient, fake: FakeFcm) -> None:
    responses = await asyncio.gather(*(send(client, _message(f"d{i}")) for i in range(200)))
    assert all(r.ok for r in responses)
    assert len(fake.deliveries) == 200
    assert fake.stats()["tokens_issued"] == 1
    assert client.token_refreshes == 1
    await send(client, _message())
    assert fake.stats()["tokens_issued"] == 1


async def test_token_refreshed_when_near_expiry(client: FcmClient, fake: FakeFcm) -> None:
    # tokens that live exactly the client's 5-minute margin are stale on arrival
    fake.token_lifetime_s = 300
    await send(client, _message())
    await send(client, _message())
    assert fake.stats()["tokens_issued"] == 2
    fake.token_lifetime_s = 3600
    await send(client, _message())  # refreshes once more, then keeps the long-lived one
    await send(client, _message())
    assert fake.stats()["tokens_issued"] == 3
    tokens = {d.headers["authorization"] for d in fake.deliveries}
    assert len(tokens) == 3


async def test_401_refreshes_and_retries_once(client: FcmClient, fake: FakeFcm) -> None:
    assert (await send(client, _message())).ok
    fake.revoke_tokens()
    results = await asyncio.gather(*(send(client, _message(f"r{i}")) for i in range(20)))
    assert all(r.ok for r in results)
    stats = fake.stats()
    assert stats["tokens_issued"] == 2  # one refresh shared by all twenty 401s
    assert stats["errors"] == {"UNAUTHENTICATED": 20}


async def test_persistent_401_is_returned_after_one_retry(
    client: FcmClient, fake: FakeFcm
) -> None:
    fake.set_faults(rate=1.0, status=401, reason="THIRD_PARTY_AUTH_ERROR")
    response = await send(client, _message())
    assert response.status == 401
    assert response.error_code == "THIRD_PARTY_AUTH_ERROR"
    assert not response.retryable
    assert fake.stats()["tokens_issued"] == 2
    assert fake.stats()["sends"] == 2


async def test_error_parsing(client: FcmClient, fake: FakeFcm) -> None:
    fake.mark_unregistered(["gone"])
    gone = await send(client, _message("gone"))
    assert (gone.status, gone.error_code) == (404, "UNREGISTERED")
    assert gone.message == "Requested entity was not found."
    assert not gone.retryable

    # a protobuf-level rejection has no FcmError detail: error.status is the fallback
    bad = await send(client, {**_message(), "colour": "red"})
    assert (bad.status, bad.error_code) == (400, "INVALID_ARGUMENT")
    assert bad.message is not None and "colour" in bad.message

    fake.set_quota(0)
    quota = await send(client, _message())
    assert (quota.status, quota.error_code) == (429, "QUOTA_EXCEEDED")
    assert quota.retry_after is not None and 1 <= quota.retry_after <= 60
    assert quota.retryable
    fake.set_quota(None)

    for status, code in ((503, "UNAVAILABLE"), (500, "INTERNAL")):
        fake.set_faults(rate=1.0, status=status, reason=code)
        failed = await send(client, _message())
        assert (failed.status, failed.error_code, failed.retryable) == (status, code, True)
    fake.set_faults(rate=0.0)
    assert (await send(client, _message())).ok


def test_parse_response_shapes() -> None:
    body = json.dumps({"error": {"code": 503, "message": "down", "status": "UNAVAILABLE",
                                 "details": [{"@type": "type.googleapis.com/google.rpc.X"},
                                             {"@type": "type.googleapis.com/google.firebase"
                                              ".fcm.v1.FcmError", "errorCode": "UNAVAILABLE"}]}})
    assert parse_response(503, body.encode(), "2.5") == FcmResponse(
        503, "UNAVAILABLE", "down", 2.5, None
    )
    html = parse_response(502, b"<html>Bad Gateway</html>", None)
    assert (html.error_code, html.message) == ("UNAVAILABLE", "<html>Bad Gateway</html>")
    assert parse_response(200, b'{"name": "projects/p/messages/1"}', None).name == (
        "projects/p/messages/1"
    )
    no_details = parse_response(403, b'{"error": {"code": 403, "status": "PERMISSION_DENIED"}}',
                                None)
    assert no_details.error_code == "PERMISSION_DENIED"


def test_parse_retry_after() -> None:
    now = time.time()
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(now + 120, usegmt=True)
    delay = parse_retry_after(date, now=now)
    assert delay is not None and 118 <= delay <= 121
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0


async def test_explicit_project_is_used(fake: FakeFcm, sa_file: str) -> None:
    async with FcmClient(
        service_account_file=sa_file, project_id="another-project", endpoint=fake.url,
    ) as fcm:
        response = await send(fcm, _message())
    assert (response.status, response.error_code) == (403, "PERMISSION_DENIED")


async def test_connection_refused_is_transport_error(
    fake: FakeFcm, sa_file: str
) -> None:
    async with FcmClient(
        service_account_file=sa_file, endpoint=f"http://127.0.0.1:{free_port()}"
    ) as fcm:
        with pytest.raises(FcmTransportError):
            await send(fcm, _message())


async def test_token_endpoint_down_is_transport_error(fake: FakeFcm, sa_file: str) -> None:
    endpoint = fake.url
    await fake.stop()
    async with FcmClient(service_account_file=sa_file, endpoint=endpoint, timeout=2) as fcm:
        with pytest.raises(FcmTransportError):
            await send(fcm, _message())


async def test_timeout_is_transport_error(fake: FakeFcm, sa_file: str) -> None:
    fake.set_faults(rate=0.0, latency_ms=600)
    async with FcmClient(service_account_file=sa_file, endpoint=fake.url, timeout=0.2) as fcm:
        started = time.monotonic()
        with pytest.raises(FcmTransportError):
            await send(fcm, _message())
        assert time.monotonic() - started < 0.5
    fake.set_faults(rate=0.0)


async def test_untrusted_key_is_auth_error(fake: FakeFcm, key_dir: Path, tmp_path: Path) -> None:
    # a second, different key under the same account name
    other = ensure_fcm_service_account(tmp_path, fake.token_uri, PROJECT)
    async with FcmClient(service_account_file=str(other), endpoint=fake.url) as fcm:
        with pytest.raises(FcmAuthError, match="invalid_grant"):
            await send(fcm, _message())


async def test_cancelled_sender_does_not_break_the_shared_refresh(
    client: FcmClient, fake: FakeFcm
) -> None:
    first = asyncio.create_task(send(client, _message("a")))
    others = [asyncio.create_task(send(client, _message(f"b{i}"))) for i in range(5)]
    await asyncio.sleep(0)
    first.cancel()
    results = await asyncio.gather(*others)
    assert all(r.ok for r in results)
    assert fake.stats()["tokens_issued"] == 1
    with pytest.raises(asyncio.CancelledError):
        await first


_WITHOUT_REQUESTS = """
import asyncio, json, sys
sys.modules["requests"] = None  # as if requests were not installed
from pathlib import Path
from server.dev.devkeys import ensure_fcm_service_account, ensure_tls, public_key_pem
from loadtest.fake_fcm import FakeFcm
from workers.gateways.fcm_client import FcmClient
from workers.gateways.waiting import result_of

async def main():
    fake = FakeFcm(project_id="p", service_account_public_keys={})
    await fake.start(port=0)
    path = ensure_fcm_service_account(Path(sys.argv[1]), fake.token_uri, "p")
    info = json.loads(path.read_text())
    fake.trust(info["client_email"], public_key_pem(info["private_key"].encode()))
    try:
        async with FcmClient(service_account_file=str(path), endpoint=fake.url) as fcm:
            body = json.dumps({"message": {"token": "t"}}).encode()
            assert (await result_of(lambda done: fcm.start_body(body, done))).ok
    finally:
        await fake.stop()
    print("ok")

asyncio.run(main())
"""


async def test_client_needs_no_requests(key_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", "-c", _WITHOUT_REQUESTS, str(key_dir),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "ok"


async def _started(client: FcmClient, bodies: list[bytes]) -> list[Any]:
    """start_body for each body; the answers, in order."""
    loop = asyncio.get_running_loop()
    answers = [loop.create_future() for _ in bodies]
    for body, answer in zip(bodies, answers, strict=True):
        client.start_body(body, answer.set_result)
    async with asyncio.timeout(10):
        return list(await asyncio.gather(*answers))


def _body(device: str) -> bytes:
    return json.dumps({"message": _message(device)}).encode()


async def test_start_body_answers_through_its_callback(client: FcmClient, fake: FakeFcm) -> None:
    """The first messages (no token yet) go the long way, in a task; once the token is
    fresh they are written at once and answered from the connection's callback; a
    revoked token is refreshed once and the messages sent again, as with send."""
    first = await _started(client, [_body(f"a{i}") for i in range(5)])
    assert all(isinstance(r, FcmResponse) and r.ok for r in first)
    later = await _started(client, [_body(f"b{i}") for i in range(50)])
    assert all(isinstance(r, FcmResponse) and r.ok for r in later)
    fake.revoke_tokens()
    again = await _started(client, [_body(f"c{i}") for i in range(10)])
    assert all(isinstance(r, FcmResponse) and r.ok for r in again)
    stats = fake.stats()
    assert stats["tokens_issued"] == 2
    assert stats["errors"] == {"UNAUTHENTICATED": 10}
    delivered = [d.token for d in fake.deliveries]
    assert sorted(delivered) == sorted(
        [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(50)] + [f"c{i}" for i in range(10)])


async def test_start_body_hands_over_failures(fake: FakeFcm, sa_file: str) -> None:
    fake.set_faults(rate=0.0, latency_ms=600)
    async with FcmClient(service_account_file=sa_file, endpoint=fake.url, timeout=0.2) as fcm:
        [slow] = await _started(fcm, [_body("x")])      # the token, then a timeout
        assert isinstance(slow, FcmTransportError)
        assert "within 0.2 s" in str(slow)
        [fast] = await _started(fcm, [_body("y")])      # token fresh: the callback path
        assert isinstance(fast, FcmTransportError)
    fake.set_faults(rate=0.0)
    [closed] = await _started(fcm, [_body("z")])
    assert isinstance(closed, RuntimeError)             # as send would raise


async def test_http2_carries_a_hundred_sends_a_connection(fake: FakeFcm, sa_file: str) -> None:
    """FCM's ~100 streams a connection: 300 sends in flight take 3 connections, not
    300, and a connection's stream limit queues sends rather than failing them."""
    async with FcmClient(service_account_file=sa_file, endpoint=fake.url,
                         max_connections=5) as fcm:
        results = await asyncio.gather(*(send(fcm, _message(f"m{i}")) for i in range(300)))
        assert all(r.ok for r in results)
        assert 1 <= fcm.open_connections <= 3
        bodies = [_body(f"s{i}") for i in range(300)]
        answers = await _started(fcm, bodies)        # the callback path, the same way
        assert all(isinstance(a, FcmResponse) and a.ok for a in answers)
        assert fcm.open_connections <= 3
    assert len({d.token for d in fake.deliveries}) == 600


async def test_http2_waits_for_the_servers_stream_limit(key_dir: Path) -> None:
    server = FakeFcm(project_id=PROJECT, service_account_public_keys={},
                     max_concurrent_streams=10)
    await server.start(port=0)
    path = ensure_fcm_service_account(key_dir, server.token_uri, PROJECT)
    info = json.loads(path.read_text())
    server.trust(info["client_email"], public_key_pem(info["private_key"].encode()))
    try:
        async with FcmClient(service_account_file=str(path), endpoint=server.url,
                             max_connections=1) as fcm:
            assert (await send(fcm, _message("first"))).ok   # SETTINGS received
            server.set_faults(rate=0.0, latency_ms=20)
            results = await asyncio.gather(*(send(fcm, _message(f"q{i}")) for i in range(60)))
            assert all(r.ok for r in results)
            assert fcm.open_connections == 1
    finally:
        await server.stop()
    assert len(server.deliveries) == 61


async def test_the_default_https_path_over_tls_and_alpn_h2(key_dir: Path, tmp_path: Path) -> None:
    """The production default: ``https://``, TLS with ALPN ``h2``, the token endpoint
    over TLS too (HTTP/1.1, as google-auth's request goes)."""
    tls = ensure_tls(tmp_path / "certs")
    fake = FakeFcm(project_id=PROJECT, service_account_public_keys={}, tls=tls)
    await fake.start(port=0)
    try:
        assert fake.url.startswith("https://")
        path = ensure_fcm_service_account(key_dir, fake.token_uri, PROJECT)
        info = json.loads(path.read_text())
        fake.trust(info["client_email"], public_key_pem(info["private_key"].encode()))
        async with FcmClient(service_account_file=str(path), endpoint=fake.url,
                             ca_file=str(tls.ca_cert)) as fcm:
            responses = await asyncio.gather(*(send(fcm, _message(f"t{i}")) for i in range(20)))
            assert {r.status for r in responses} == {200}
            assert fcm.open_connections == 1
            [connection] = fcm._pool.connections
            assert connection.transport is not None
            assert connection.transport.get_extra_info("ssl_object").selected_alpn_protocol() \
                == "h2"
        assert fake.stats()["tokens_issued"] == 1
        assert sorted(d.token or "" for d in fake.deliveries) == sorted(f"t{i}" for i in range(20))
    finally:
        await fake.stop()


async def test_an_untrusted_certificate_is_a_transport_error(
    key_dir: Path, tmp_path: Path
) -> None:
    tls = ensure_tls(tmp_path / "certs")
    fake = FakeFcm(project_id=PROJECT, service_account_public_keys={}, tls=tls)
    await fake.start(port=0)
    try:
        path = ensure_fcm_service_account(key_dir, fake.token_uri, PROJECT)
        async with FcmClient(service_account_file=str(path), endpoint=fake.url) as fcm:
            with pytest.raises(FcmTransportError):
                await send(fcm, _message())
    finally:
        await fake.stop()
