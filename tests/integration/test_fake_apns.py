"""The fake APNs gateway against a small raw HTTP/2 client (so every rule can be hit)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
)
from h2.settings import SettingCodes

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

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a1" * 32
TOPIC = DEV_APNS_TOPIC
ISSUED_AT = int(time.time())  # one iat for the session: a new iat per request would be 429


@dataclass(frozen=True)
class Keys:
    tls: TlsFiles
    private_pem: bytes
    public_pem: bytes


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("certs")
    key = ensure_apns_key(directory)
    private = key.key_file.read_bytes()
    return Keys(ensure_tls(directory), private, public_key_pem(private))


@pytest.fixture
async def fake(keys: Keys) -> AsyncIterator[FakeApns]:
    server = FakeApns(
        tls=keys.tls, provider_keys={DEV_APNS_KEY_ID: keys.public_pem},
        team_id=DEV_APNS_TEAM_ID, topic=TOPIC,
    )
    await server.start(port=0, control_port=0)
    yield server
    await server.stop()


def make_jwt(
    keys: Keys, *, iat: int | None = None, kid: str = DEV_APNS_KEY_ID,
    iss: str = DEV_APNS_TEAM_ID, key: Any = None, alg: str = "ES256",
) -> str:
    claims = {"iss": iss, "iat": ISSUED_AT if iat is None else iat}
    return jwt.encode(claims, key or keys.private_pem, algorithm=alg, headers={"kid": kid})


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    got_headers: asyncio.Event = field(default_factory=asyncio.Event)

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """A bare h2 client: lets tests send any header and choose whether to ack DATA."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: H2Connection, ack: bool) -> None:
        self.reader, self.writer, self.conn, self.ack = reader, writer, conn, ack
        self.responses: dict[int, Response] = {}
        self.changed = asyncio.Condition()
        self.terminated: ConnectionTerminated | None = None
        self.pong = asyncio.Event()
        self.reader_task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, keys: Keys, *, alpn: bool = False, ack: bool = True,
                      initial_window: int | None = None) -> RawClient:
        context = ssl.create_default_context(cafile=str(keys.tls.ca_cert))
        if alpn:
            context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        if initial_window is not None:
            conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        writer.write(conn.data_to_send())
        return cls(reader, writer, conn, ack)

    @property
    def max_streams(self) -> int:
        return self.conn.remote_settings.max_concurrent_streams

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), 5)

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                sid = getattr(event, "stream_id", 0)
                if isinstance(event, ResponseReceived):
                    response = self.responses[sid]
                    response.headers = dict(event.headers)  # type: ignore[arg-type]
                    response.status = int(response.headers[":status"])
                    response.got_headers.set()
                elif isinstance(event, DataReceived):
                    self.responses[sid].body += event.data or b""
                    if self.ack:
                        self.conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                elif isinstance(event, StreamEnded):
                    self.responses[sid].ended.set()
                elif isinstance(event, ConnectionTerminated):
                    self.terminated = event
                elif isinstance(event, PingAckReceived):
                    self.pong.set()
                if isinstance(event, RemoteSettingsChanged | ConnectionTerminated):
                    async with self.changed:
                        self.changed.notify_all()
            self.writer.write(self.conn.data_to_send())
        async with self.changed:
            self.changed.notify_all()

    def start(self, headers: dict[str, str], body: bytes, path: str | None = None) -> Response:
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = response = Response()
        request = [(":method", "POST"), (":scheme", "https"),
                   (":path", path or f"/3/device/{TOKEN}"), (":authority", "127.0.0.1")]
        self.conn.send_headers(sid, request + list(headers.items()), end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        return response

    async def request(self, headers: dict[str, str], body: bytes = b'{"aps":{}}',
                      path: str | None = None) -> Response:
        response = self.start(headers, body, path)
        await asyncio.wait_for(response.ended.wait(), 5)
        return response

    async def ping(self) -> None:
        self.pong.clear()
        self.conn.ping(b"12345678")
        self.writer.write(self.conn.data_to_send())
        await asyncio.wait_for(self.pong.wait(), 5)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
        await self.reader_task


@pytest.fixture
async def client(fake: FakeApns, keys: Keys) -> AsyncIterator[RawClient]:
    raw = await RawClient.connect(fake.port, keys)
    yield raw
    await raw.close()


def good_headers(keys: Keys, **extra: str) -> dict[str, str]:
    headers = {"authorization": f"bearer {make_jwt(keys)}", "apns-topic": TOPIC,
               "apns-push-type": "alert", "apns-priority": "10"}
    headers.update(extra)
    return headers


async def test_accepted_push_is_recorded(client: RawClient, fake: FakeApns, keys: Keys) -> None:
    apns_id = str(uuid.uuid4())
    headers = good_headers(keys, **{"apns-id": apns_id, "apns-collapse-id": "F1",
                                    "apns-expiration": "1900000000"})
    response = await client.request(headers, b'{"aps":{"alert":"hi"}}')
    assert response.status == 200
    assert response.headers["apns-id"] == apns_id
    assert not response.body
    [delivery] = fake.deliveries
    assert delivery.token == TOKEN
    assert delivery.payload == {"aps": {"alert": "hi"}}
    assert delivery.apns_id == apns_id
    assert delivery.headers["apns-collapse-id"] == "F1"
    assert delivery.headers["apns-expiration"] == "1900000000"
    assert abs(delivery.arrived_at - time.time()) < 5


async def test_generates_apns_id_when_absent(client: RawClient, keys: Keys) -> None:
    response = await client.request(good_headers(keys))
    assert response.status == 200
    uuid.UUID(response.headers["apns-id"])


@pytest.mark.parametrize(
    ("change", "body", "path", "status", "reason"),
    [
        ({}, b"{}", "/3/device/abc", 400, "BadDeviceToken"),
        ({}, b"{}", "/3/device/" + "g" * 64, 400, "BadDeviceToken"),
        ({"apns-topic": None}, b"{}", None, 400, "MissingTopic"),
        ({"apns-topic": "com.example.other"}, b"{}", None, 400, "DeviceTokenNotForTopic"),
        ({}, b"", None, 400, "PayloadEmpty"),
        ({}, b'{"a":"' + b"x" * 4100 + b'"}', None, 413, "PayloadTooLarge"),
        ({"apns-collapse-id": "c" * 65}, b"{}", None, 400, "BadCollapseId"),
        ({"apns-priority": "7"}, b"{}", None, 400, "BadPriority"),
        ({"apns-push-type": "shout"}, b"{}", None, 400, "InvalidPushType"),
        ({"apns-expiration": "tomorrow"}, b"{}", None, 400, "BadExpirationDate"),
        ({"apns-id": "not-a-uuid"}, b"{}", None, 400, "BadMessageId"),
        ({}, b"{}", "/4/other", 404, "BadPath"),
        # The aps dictionary as Apple defines it.
        ({}, b'{"aps":{"alert":"x","interruption-level":"urgent"}}', None, 400, "BadPayload"),
        ({}, b'{"aps":{"alert":"x","relevance-score":1.5}}', None, 400, "BadPayload"),
        ({}, b'{"aps":{"alert":"x","relevance-score":"high"}}', None, 400, "BadPayload"),
        ({}, b'{"aps":{"alert":"x","sound":{"critical":1,"volume":2,"name":"default"}}}',
         None, 400, "BadPayload"),
        ({}, b'{"aps":{"alert":"x","sound":{"critical":true,"name":"default"}}}', None, 400,
         "BadPayload"),
        ({}, b'{"aps":{"alert":"x","category":7}}', None, 400, "BadPayload"),
        ({}, b'{"aps":[]}', None, 400, "BadPayload"),
    ],
)
async def test_request_rules(
    client: RawClient, fake: FakeApns, keys: Keys, change: dict[str, str | None], body: bytes,
    path: str | None, status: int, reason: str,
) -> None:
    headers = good_headers(keys)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    response = await client.request(headers, body, path)
    assert (response.status, response.json()) == (status, {"reason": reason})
    assert response.headers["apns-id"]
    assert response.headers["content-type"] == "application/json"
    assert fake.deliveries == []


async def test_every_interruption_level_and_a_critical_sound_are_accepted(
    client: RawClient, fake: FakeApns, keys: Keys
) -> None:
    for level in ("passive", "active", "time-sensitive", "critical"):
        body = {"aps": {"alert": {"title": "t", "body": "b"}, "interruption-level": level,
                        "relevance-score": 0.5,
                        "sound": {"critical": 1, "name": "default", "volume": 1.0}}}
        response = await client.request(good_headers(keys), json.dumps(body).encode())
        assert response.status == 200, response.json()
    assert len(fake.deliveries) == 4


async def test_uppercase_token_and_mixed_case_accepted(client: RawClient, keys: Keys) -> None:
    response = await client.request(good_headers(keys), path="/3/device/" + "Ab" * 32)
    assert response.status == 200


async def test_jwt_missing(client: RawClient, keys: Keys) -> None:
    headers = good_headers(keys)
    del headers["authorization"]
    response = await client.request(headers)
    assert (response.status, response.json()) == (403, {"reason": "MissingProviderToken"})


@pytest.mark.parametrize("variant", ["other-key", "unknown-kid", "wrong-team", "hs256", "junk"])
async def test_jwt_invalid(client: RawClient, keys: Keys, variant: str) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    makers: dict[str, Callable[[], str]] = {
        "other-key": lambda: make_jwt(keys, key=other),
        "unknown-kid": lambda: make_jwt(keys, kid="NOPE"),
        "wrong-team": lambda: make_jwt(keys, iss="OTHERTEAM"),
        "hs256": lambda: make_jwt(keys, key="s" * 32, alg="HS256"),
        "junk": lambda: "not.a.jwt",
    }
    token = makers[variant]()
    headers = good_headers(keys, authorization=f"bearer {token}")
    response = await client.request(headers)
    assert (response.status, response.json()) == (403, {"reason": "InvalidProviderToken"})


async def test_jwt_expired(client: RawClient, keys: Keys) -> None:
    token = make_jwt(keys, iat=int(time.time()) - 3601)
    response = await client.request(good_headers(keys, authorization=f"bearer {token}"))
    assert (response.status, response.json()) == (403, {"reason": "ExpiredProviderToken"})


async def test_jwt_updated_too_often(client: RawClient, keys: Keys) -> None:
    now = int(time.time())
    first = good_headers(keys, authorization=f"bearer {make_jwt(keys, iat=now)}")
    second = good_headers(keys, authorization=f"bearer {make_jwt(keys, iat=now - 30)}")
    assert (await client.request(first)).status == 200
    response = await client.request(second)
    assert (response.status, response.json()) == (429, {"reason": "TooManyProviderTokenUpdates"})
    # a different signature over the same iat is not an update; the first token still works
    assert (await client.request(good_headers(keys, authorization=first["authorization"]))
            ).status == 200
    again = good_headers(keys, authorization=f"bearer {make_jwt(keys, iat=now)}")
    assert (await client.request(again)).status == 200


async def test_jwt_update_after_20_minutes_is_fine(keys: Keys) -> None:
    clock = [time.time()]
    fake = FakeApns(tls=keys.tls, provider_keys={DEV_APNS_KEY_ID: keys.public_pem},
                    team_id=DEV_APNS_TEAM_ID, topic=TOPIC, clock=lambda: clock[0])
    await fake.start(port=0, control_port=None)
    raw = await RawClient.connect(fake.port, keys)
    try:
        now = int(clock[0])
        assert (await raw.request(good_headers(keys))).status == 200
        clock[0] += 21 * 60
        later = make_jwt(keys, iat=now + 21 * 60)
        assert (await raw.request(good_headers(keys, authorization=f"bearer {later}"))
                ).status == 200
    finally:
        await raw.close()
        await fake.stop()


async def test_unregistered_token_gets_410_with_timestamp(
    client: RawClient, fake: FakeApns, keys: Keys
) -> None:
    fake.mark_unregistered([TOKEN], timestamp_ms=1_700_000_000_000)
    response = await client.request(good_headers(keys))
    assert response.status == 410
    assert response.json() == {"reason": "Unregistered", "timestamp": 1_700_000_000_000}
    fake.mark_unregistered(["b2" * 32])
    response = await client.request(good_headers(keys), path="/3/device/" + "b2" * 32)
    assert abs(response.json()["timestamp"] - time.time() * 1000) < 5000


@pytest.mark.parametrize("alpn", [False, True])
async def test_speaks_h2_with_and_without_alpn(fake: FakeApns, keys: Keys, alpn: bool) -> None:
    raw = await RawClient.connect(fake.port, keys, alpn=alpn)
    try:
        selected = raw.writer.get_extra_info("ssl_object").selected_alpn_protocol()
        assert selected == ("h2" if alpn else None)
        assert (await raw.request(good_headers(keys))).status == 200
    finally:
        await raw.close()


async def test_stream_limit_is_one_until_first_success(client: RawClient, keys: Keys) -> None:
    await client.wait_for(lambda: client.max_streams == 1)
    bad = good_headers(keys, authorization="bearer nope")
    assert (await client.request(bad)).status == 403
    assert (await client.request(good_headers(keys), path="/3/device/x")).status == 400
    await client.ping()
    assert client.max_streams == 1
    assert (await client.request(good_headers(keys))).status == 200
    await client.wait_for(lambda: client.max_streams == 1000)
    # and the raised limit is usable: many concurrent streams at once
    responses = [client.start(good_headers(keys), b'{"n":1}') for _ in range(50)]
    await asyncio.wait_for(asyncio.gather(*(r.ended.wait() for r in responses)), 5)
    assert {r.status for r in responses} == {200}


async def test_error_bodies_wait_for_flow_control_credit(fake: FakeApns, keys: Keys) -> None:
    raw = await RawClient.connect(fake.port, keys, ack=False, initial_window=10)
    try:
        await raw.ping()  # our SETTINGS (10-byte stream windows) are in force
        response = raw.start(good_headers(keys), b"{}", "/3/device/bad")
        await asyncio.wait_for(response.got_headers.wait(), 5)
        await raw.ping()  # the server has had every chance to send more
        assert response.status == 400
        assert len(response.body) == 10
        assert not response.ended.is_set()
        sid = max(raw.responses)
        raw.conn.increment_flow_control_window(100, sid)
        raw.writer.write(raw.conn.data_to_send())
        await asyncio.wait_for(response.ended.wait(), 5)
        assert response.json() == {"reason": "BadDeviceToken"}
    finally:
        await raw.close()


async def test_server_acknowledges_received_data(client: RawClient, keys: Keys) -> None:
    assert (await client.request(good_headers(keys))).status == 200
    body = json.dumps({"pad": "x" * 4000}).encode()
    # 40 x 4 KB = 160 KB > the 64 KB initial window: only works if the server acks
    for _ in range(40):
        response = client.start(good_headers(keys), body)
        await asyncio.wait_for(response.ended.wait(), 5)
        assert response.status == 200


async def test_faults(client: RawClient, fake: FakeApns, keys: Keys) -> None:
    fake.set_faults(rate=1.0, status=503, reason="ServiceUnavailable", latency_ms=0)
    response = await client.request(good_headers(keys))
    assert (response.status, response.json()) == (503, {"reason": "ServiceUnavailable"})
    fake.set_faults(rate=1.0, status=200, reason="", latency_ms=150)
    started = time.monotonic()
    assert (await client.request(good_headers(keys))).status == 200
    assert time.monotonic() - started >= 0.14
    fake.set_faults(rate=1.0, status=429, reason="TooManyRequests", latency_ms=0,
                    tokens=["c3" * 32])
    assert (await client.request(good_headers(keys))).status == 200
    other = await client.request(good_headers(keys), path="/3/device/" + "c3" * 32)
    assert (other.status, other.json()) == (429, {"reason": "TooManyRequests"})
    fake.set_faults(rate=0, status=500, reason="x", latency_ms=0)
    assert (await client.request(good_headers(keys))).status == 200
    fake.set_faults(rate=0.5, status=500, reason="InternalServerError", latency_ms=0)
    statuses = {(await client.request(good_headers(keys))).status for _ in range(60)}
    assert statuses == {200, 500}


async def test_control_api(client: RawClient, fake: FakeApns, keys: Keys) -> None:
    base = f"http://127.0.0.1:{fake.control_port}/_fake"
    async with aiohttp.ClientSession() as http:
        assert (await client.request(good_headers(keys), b'{"aps":{"alert":"a"}}')).status == 200
        other = "d4" * 32
        assert (await client.request(good_headers(keys), path=f"/3/device/{other}")).status == 200
        async with http.get(f"{base}/deliveries") as r:
            items = await r.json()
        assert [i["token"] for i in items] == [TOKEN, other]
        assert set(items[0]) == {"token", "headers", "payload", "arrived_at", "apns_id"}
        assert items[0]["payload"] == {"aps": {"alert": "a"}}
        assert items[0]["headers"]["apns-topic"] == TOPIC
        async with http.get(f"{base}/deliveries", params={"token": other}) as r:
            assert [i["token"] for i in await r.json()] == [other]
        async with http.delete(f"{base}/deliveries") as r:
            assert r.status == 204
        assert fake.deliveries == []

        async with http.post(f"{base}/unregistered", json={"tokens": [other]}) as r:
            assert r.status == 200
        gone = await client.request(good_headers(keys), path=f"/3/device/{other}")
        assert gone.status == 410 and gone.json()["reason"] == "Unregistered"

        fault = {"rate": 1, "status": 500, "reason": "InternalServerError", "latency_ms": 0}
        async with http.post(f"{base}/faults", json=fault) as r:
            assert r.status == 200
        failed = await client.request(good_headers(keys))
        assert (failed.status, failed.json()) == (500, {"reason": "InternalServerError"})
        async with http.post(f"{base}/faults", json={"rate": 0}) as r:
            assert r.status == 200
        assert (await client.request(good_headers(keys))).status == 200
        async with http.post(f"{base}/faults", json={"rate": 3}) as r:
            assert r.status == 400

        async with http.get(f"{base}/stats") as r:
            stats = await r.json()
        assert stats["responses"] == {"200": 3, "410": 1, "500": 1}
        assert stats["connections"] == 1

        async with http.post(f"{base}/goaway", json={"reason": "Shutdown"}) as r:
            assert (await r.json()) == {"closed": 1}
        await client.wait_for(lambda: client.terminated is not None)
        assert client.terminated is not None
        assert json.loads(client.terminated.additional_data or b"") == {"reason": "Shutdown"}


async def test_command_line_process(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.fake_apns", "--port", "0", "--control-port", "0",
        "--certs-dir", str(tmp_path / "certs"), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("READY "), line
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        assert (tmp_path / "certs" / f"AuthKey_{DEV_APNS_KEY_ID}.p8").exists()
        port = int(fields["apns"].rsplit(":", 1)[1])
        certs = tmp_path / "certs"
        private = ensure_apns_key(certs).key_file.read_bytes()
        cli_keys = Keys(ensure_tls(certs), private, public_key_pem(private))
        raw = await RawClient.connect(port, cli_keys, alpn=True)
        try:
            assert (await raw.request(good_headers(cli_keys))).status == 200
        finally:
            await raw.close()
        url = f"{fields['control']}/_fake/stats"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert r.status == 200
            assert (await r.json())["deliveries"] == 1
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
