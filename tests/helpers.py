"""Small helpers for tests: signed webhooks, an agency, a device with a zone."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiohttp.test_utils import TestClient

from server import keys
from server.domain.signing import HEADER, sign
from server.store.redisclient import RedisClient, connect
from tests.conftest import ADMIN_TOKEN

SEATTLE_CALL_TYPES = {
    "Fire in Building": "structure_fire",
    "Residential Fire": "residential_fire",
    "Commercial Fire": "commercial_fire",
    "Scenes Of Violence 7": "shooting",
    "Aid Response": "medical",
    "Medic Response": "medical",
    "Explosion": "explosion",
}

# The first call of the Seattle Fire January 2022 sample: 5300 24th Ave NE.
POINT = (47.66707, -122.301946)
FAR_POINT = (47.5301, -122.2701)   # Rainier Beach, ~15 km south


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def incident(
    external_id: str = "F220009060",
    *,
    call_type: str = "Fire in Building",
    minutes_ago: float = 3,
    lat: float = POINT[0],
    lon: float = POINT[1],
    **extra: Any,
) -> dict[str, Any]:
    occurred = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes_ago)
    doc: dict[str, Any] = {
        "id": external_id,
        "updated_at": iso(occurred + dt.timedelta(seconds=30)),
        "status": "active",
        "call_type": call_type,
        "occurred_at": iso(occurred),
        "location": {"lat": lat, "lon": lon, "address": "5312 24th Ave NE Apt 4B",
                     "kind": "residence"},
        "priority": 1,
        "narrative": "caller reports smoke from 2nd floor, elderly resident Jane Roe inside",
        "caller": {"name": "John Q Caller", "phone": "+1 206 555 0147"},
    }
    doc.update(extra)
    return doc


def fcm_token() -> str:
    """A token shaped like FCM's: the instance id, a colon, the token proper."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(105)}"


def apns_token() -> str:
    return secrets.token_hex(32)


def signed(secret: str, body: bytes, *, at: int | None = None) -> dict[str, str]:
    return {HEADER: sign(secret, body, int(time.time()) if at is None else at),
            "Content-Type": "application/json"}


async def create_agency(
    client: TestClient[Any, Any], agency_id: str = "seattle-fire", **extra: Any
) -> str:
    body = {"id": agency_id, "name": "Seattle Fire Department",
            "timezone": "America/Los_Angeles", "call_types": SEATTLE_CALL_TYPES, **extra}
    resp = await client.post("/v1/admin/agencies", json=body,
                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 201, await resp.text()
    secret: str = (await resp.json())["secret"]
    return secret


async def post_incident(
    client: TestClient[Any, Any], secret: str, doc: dict[str, Any],
    agency_id: str = "seattle-fire",
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(doc).encode()
    resp = await client.post(f"/v1/agencies/{agency_id}/incidents", data=body,
                             headers=signed(secret, body))
    return resp.status, await resp.json()


async def create_device(
    client: TestClient[Any, Any], platform: str, token: str,
    zone: dict[str, Any] | None = None, **extra: Any,
) -> tuple[str, str]:
    resp = await client.post("/v1/devices", json={"platform": platform, "token": token,
                                                  "timezone": "America/Los_Angeles", **extra})
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    if zone is not None:
        r = await client.put(f"/v1/devices/{created['id']}/zones", json={"zones": [zone]},
                             headers={"Authorization": f"Bearer {created['secret']}"})
        assert r.status == 200, await r.text()
    return created["id"], created["secret"]


async def create_responder(client: TestClient[Any, Any], platform: str, token: str,
                           at: tuple[float, float]) -> tuple[str, str]:
    """A device in CPR-responder mode that reported its position ``at`` (lat, lon)."""
    device, key = await create_device(client, platform, token)
    headers = {"Authorization": f"Bearer {key}"}
    r = await client.put(f"/v1/devices/{device}/preferences", headers=headers,
                         json={"responder": True})
    assert r.status == 200, await r.text()
    r = await client.put(f"/v1/devices/{device}/location", headers=headers,
                         json={"lat": at[0], "lon": at[1]})
    assert r.status == 204, await r.text()
    return device, key


def circle(lat: float, lon: float, radius_m: float = 1000, name: str = "Home") -> dict[str, Any]:
    return {"name": name, "center": {"lat": lat, "lon": lon}, "radius_m": radius_m}


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PASSWORD = "correct horse battery staple"


async def create_user(
    client: TestClient[Any, Any], agency_id: str, username: str, role: str = "editor",
    password: str = PASSWORD,
) -> None:
    resp = await client.post(f"/v1/admin/agencies/{agency_id}/users", headers=ADMIN_HEADERS,
                             json={"username": username, "password": password, "role": role})
    assert resp.status == 201, await resp.text()


async def sign_in(client: TestClient[Any, Any], username: str,
                  password: str = PASSWORD) -> dict[str, str]:
    """Signs the client in (its cookie jar keeps the session); the CSRF header to send."""
    resp = await client.post("/v1/session", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    return {"X-CSRF-Token": (await resp.json())["csrf_token"]}


FIXTURES = Path(__file__).resolve().parent / "fixtures"


_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")


def fresh_times(*texts: str) -> list[str]:
    """Move the fixtures' timestamps together so the newest is two minutes ago: fresh
    enough to alert, and their order (alert < update < cancel) kept."""
    # Anchor on when the messages were sent (not on expiry times further ahead).
    stamps = [s for t in texts for s in re.findall(
        r"(?:<sent>|lastUpdateTimeStamp\"\s*:\s*\")([^<\"]+)", t)]
    stamps = stamps or [s for t in texts for s in _STAMP.findall(t)]
    if not stamps:
        return list(texts)
    newest = max(dt.datetime.fromisoformat(s.replace("Z", "+00:00")) for s in stamps)
    shift = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2) - newest

    def moved(m: re.Match[str]) -> str:
        when = dt.datetime.fromisoformat(m.group(0).replace("Z", "+00:00")) + shift
        return when.isoformat(timespec="seconds")

    return [_STAMP.sub(moved, t) for t in texts]


async def push_entries(redis: Any, platform: str,
                       shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS
                       ) -> list[tuple[str, dict[str, str]]]:
    """Every entry on a platform's push streams (all shards), oldest first."""
    entries: list[tuple[str, dict[str, str]]] = []
    for stream in keys.push_streams(platform, shards):
        entries.extend(await redis.xrange(stream))
    return sorted(entries, key=lambda e: tuple(int(n) for n in e[0].split("-")))


async def queued(redis: Any, platform: str,
                 shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS) -> int:
    """Entries on a platform's push streams, all shards together."""
    total = 0
    for stream in keys.push_streams(platform, shards):
        total += int(await redis.xlen(stream))
    return total


async def scheduled_retries(redis: Any, platform: str,
                            shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS) -> int:
    """Pushes waiting in a platform's retry schedules, all shards together."""
    total = 0
    for shard in range(shards):
        total += int(await redis.zcard(keys.retry_schedule(platform, shard)))
    return total


_T = TypeVar("_T")


class SyncWorld:
    """An event loop and a pool of the suite's PostgreSQL for a hypothesis test, whose
    examples run synchronously (hypothesis drives them) against module-scoped state."""

    def __init__(self, database_url: str, *, max_size: int = 2) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.pool: asyncpg.Pool = self.run(asyncpg.create_pool(database_url, min_size=1,
                                                               max_size=max_size))

    def run(self, coro: Awaitable[_T]) -> _T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.pool.close())
        self.loop.close()
        asyncio.set_event_loop(None)


class SyncRedisWorld(SyncWorld):
    """A ``SyncWorld`` with a client of the suite's Redis (a cluster's, on a cluster)."""

    def __init__(self, database_url: str, redis_url: str, *, max_size: int = 2) -> None:
        super().__init__(database_url, max_size=max_size)
        self.redis: RedisClient = self.run(connect(redis_url, decode_responses=True))

    def close(self) -> None:
        self.run(self.redis.aclose())
        super().close()
