"""The webhook's dry run against real PostgreSQL/PostGIS and Redis: it answers what the
real call then does, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server import keys
from server.cadvalidate import validate_file
from server.domain.pushtext import language
from server.domain.signing import HEADER, sign
from server.settings import Settings
from server.store.agencies import get_agency
from server.store.redisclient import RedisClient, connect
from server.web.app import create_app
from server.web.appkeys import POOL
from server.web.dryrun import DryRunResult, validate
from server.web.ingest import parser_for
from tests.cad_fixtures import SEATTLE_MAP, Fixture, fixtures
from tests.conftest import ADMIN_TOKEN, Services
from tests.helpers import (
    FAR_POINT,
    POINT,
    circle,
    create_agency,
    create_device,
    fcm_token,
    incident,
    post_incident,
)
from workers.apns import build_payload
from workers.matcher import Matcher
from workers.push import Push

Client = TestClient[Any, Any]
SEATTLE = json.loads(SEATTLE_MAP.read_text())
PER_HOUR = 10

SHARDS = keys.DEFAULT_PUSH_STREAM_SHARDS


async def _post(client: Client, secret: str, content_type: str, body: bytes, *,
                dry_run: bool, agency: str = "seattle-fire", at: int | None = None,
                ) -> tuple[int, str, dict[str, Any]]:
    """Status, content type and JSON of one signed webhook, real or dry."""
    at = int(dt.datetime.now(dt.UTC).timestamp()) if at is None else at
    url = f"/v1/agencies/{agency}/incidents" + ("?dry_run=true" if dry_run else "")
    resp = await client.post(url, data=body, headers={
        HEADER: sign(secret, body, at), "Content-Type": content_type})
    return resp.status, resp.content_type, await resp.json()


@pytest.fixture
async def raw_redis(services: Services) -> AsyncIterator[RedisClient]:
    r = await connect(services.redis_url)
    yield r
    await r.aclose()


async def _state(pool: asyncpg.Pool, redis: RedisClient) -> dict[str, Any]:
    """Every table's rows and every Redis key's value but the dry runs' own rate limit."""
    tables = await pool.fetch(
        """SELECT table_name FROM information_schema.tables
            WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
              AND table_name <> 'spatial_ref_sys'""")
    state: dict[str, Any] = {}
    for t in tables:
        name = t["table_name"]
        state[name] = await pool.fetchval(
            f'SELECT md5(coalesce(string_agg(x::text, \'|\' ORDER BY x::text), \'\')) '  # noqa: S608
            f'FROM "{name}" x')
    skip = {k.encode() for k in (keys.agency_dry_run_rate("seattle-fire"),)}
    for key in sorted([k async for k in redis.scan_iter()]):   # SCAN: every master
        if key not in skip:
            state[f"redis:{key!r}"] = (await redis.dump(key), await redis.pttl(key) > 0)
    return state


async def _neighbourhood(client: Client, redis: RedisClient) -> None:
    """Phones around the fixtures' incident, and some the matcher must leave out."""
    await create_device(client, "apns", secrets.token_hex(32), circle(*POINT, 1500))
    await create_device(client, "fcm", fcm_token(), circle(*POINT, 1500),
                        locale="es-US")
    await create_device(client, "apns", secrets.token_hex(32), circle(*FAR_POINT, 1000))
    picky, key = await create_device(client, "apns", secrets.token_hex(32),
                                     circle(*POINT, 1500))
    r = await client.put(f"/v1/devices/{picky}/preferences", json={"categories": ["shooting"]},
                         headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200
    # A phone that had its ten pushes this hour: only the most severe come through.
    tired, _ = await create_device(client, "apns", secrets.token_hex(32), circle(*POINT, 1500))
    await redis.set(keys.device_rate(tired, keys.device_shard(tired, SHARDS)), PER_HOUR,
                    ex=3600)


async def _outbox_cleared(pool: asyncpg.Pool) -> None:
    """The real calls' outbox rows go with the web app's batches (every 50 ms): wait for
    them, so the snapshot around a dry run sees only what the dry run does. (A row due
    later is the matcher's second pass of updates for an ended alert: it stays.)"""
    for _ in range(500):
        if not await pool.fetchval("SELECT count(*) FROM outbox WHERE created_at <= now()"):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("outbox rows were never cleared")


def _place(text: str) -> str:
    """A push body without its relative time, which moves on every minute."""
    return text.split(" · ", 1)[1]


async def _queued(redis: RedisClient, since: dict[str, str]) -> list[Push]:
    out = []
    for platform in keys.PLATFORMS:
        for stream in keys.push_streams(platform, SHARDS):
            start = since.get(stream)
            entries = await redis.xrange(stream, min=f"({start}" if start else "-")
            if entries:
                since[stream] = entries[-1][0]
            out += [Push.from_fields(fields) for _, fields in entries]
    return out


@pytest.mark.parametrize("fmt", ["json", "cap", "eido"])
async def test_dry_run_of_each_fixture_is_what_the_real_call_then_does(
    fmt: str, client: Client, pool: asyncpg.Pool, redis: RedisClient,
    raw_redis: RedisClient,
) -> None:
    secret = await create_agency(client, call_types=SEATTLE)
    await _neighbourhood(client, redis)
    matcher = Matcher(pool, redis, device_pushes_per_hour=PER_HOUR)
    base = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    since: dict[str, str] = {}
    alerted_somebody = False
    for fx in fixtures("accept", fmt):
        body = fx.body(base)
        await _outbox_cleared(pool)
        before = await _state(pool, raw_redis)
        status, ctype, dry = await _post(client, secret, fx.content_type, body, dry_run=True)
        assert (status, ctype) == (200, "application/json"), (fx, dry)
        assert await _state(pool, raw_redis) == before, f"{fx}: the dry run left something"
        for key, value in fx.expected.items():
            assert dry[key] == value, (fx, key, dry)
        assert dry["duplicate"] is False

        # The validator, under the same agency read from the database, agrees.
        agency = await get_agency(client.server.app[POOL], "seattle-fire")
        assert agency is not None
        judged_at = dt.datetime.fromisoformat(dry["judged_at"])
        offline = msgspec.to_builtins(validate(agency, fmt, parser_for(fx.content_type), body,
                                               judged_at))
        assert offline.pop("would_alert") is None
        clocks = [w for w in dry["warnings"] if w["code"] == "clock_skew"]
        assert {**offline, "would_alert": None} == {**dry, "would_alert": None,
                           "warnings": [w for w in dry["warnings"] if w not in clocks]}, fx

        status, _, real = await _post(client, secret, fx.content_type, body, dry_run=False)
        assert status == 202, (fx, real)
        assert (real["decision"], real["duplicate"]) == (dry["decision"], False), fx
        row = await pool.fetchrow(
            """SELECT category, call_type, public_location, ST_Y(public_point) AS lat,
                      ST_X(public_point) AS lon FROM incidents WHERE id = $1""",
            real["incident_id"])
        assert (row["category"], row["call_type"], row["public_location"]) == (
            dry["category"], dry["call_type"], dry["public_location"]), fx
        assert {"lat": row["lat"], "lon": row["lon"]} == dry["public_point"], fx

        # The matcher enqueues exactly as many pushes as the dry run said, with its text.
        result = await matcher.match_incident(real["incident_id"], dt.datetime.now(dt.UTC))
        assert result.enqueued == dry["would_alert"], (fx, result, dry["would_alert"])
        pushes = await _queued(redis, since)
        assert len(pushes) == dry["would_alert"]
        for push in pushes:
            alert = build_payload(push, dt.datetime.now(dt.UTC))["aps"]["alert"]
            lang = language(push.locale)
            assert alert["title"] == dry["title"][lang], fx
            assert _place(alert["body"]) == _place(dry["body"][lang]), fx
        alerted_somebody |= bool(pushes)

        # Sent again, the same revision is a duplicate for the dry run too.
        _, _, again = await _post(client, secret, fx.content_type, body, dry_run=True)
        assert (again["decision"], again["duplicate"], again["would_alert"]) == (
            real["decision"], True, 0), fx
    assert alerted_somebody


@pytest.mark.parametrize("fx", fixtures("refuse"), ids=str)
async def test_a_refused_dry_run_answers_exactly_the_real_calls_problem(
    fx: Fixture, client: Client, pool: asyncpg.Pool, raw_redis: RedisClient,
) -> None:
    secret = await create_agency(client, call_types=SEATTLE)
    body = fx.body(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    before = await _state(pool, raw_redis)
    dry = await _post(client, secret, fx.content_type, body, dry_run=True)
    assert await _state(pool, raw_redis) == before
    real = await _post(client, secret, fx.content_type, body, dry_run=False)
    assert dry == real
    status, ctype, problem = dry
    assert (status, ctype) == (fx.expected["status"], "application/problem+json")
    assert problem["errors"][0]["field"] == fx.expected["field"]
    assert await pool.fetchval("SELECT count(*) FROM incidents") == 0


async def test_bad_requests_are_refused_alike(client: Client) -> None:
    secret = await create_agency(client, call_types=SEATTLE)
    fx = fixtures("accept", "json")[0]
    body = fx.body(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    cases: list[tuple[str, str, str, int | None]] = [
        ("wrong secret", "whsec_wrong", "seattle-fire", None),
        ("unknown agency", secret, "nobody", None),
        ("stale signature", secret, "seattle-fire",
         int(dt.datetime.now(dt.UTC).timestamp()) - 3600),
    ]
    for what, key, agency, at in cases:
        dry = await _post(client, key, fx.content_type, body, dry_run=True, agency=agency, at=at)
        real = await _post(client, key, fx.content_type, body, dry_run=False, agency=agency,
                           at=at)
        assert dry == real and dry[0] == 401, what
    for dry_run in (True, False):
        url = "/v1/agencies/seattle-fire/incidents" + ("?dry_run=true" if dry_run else "")
        resp = await client.post(url, data=body, headers={
            HEADER: sign(secret, body, int(dt.datetime.now(dt.UTC).timestamp())),
            "Content-Type": "text/plain"})
        assert resp.status == 415
    resp = await client.post("/v1/agencies/seattle-fire/incidents?dry_run=perhaps", data=body,
                             headers={HEADER: sign(secret, body, int(
                                 dt.datetime.now(dt.UTC).timestamp())),
                                 "Content-Type": "application/json"})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == "dry_run"


async def test_an_older_revision_is_outdated_in_the_dry_run_too(client: Client) -> None:
    secret = await create_agency(client, call_types=SEATTLE)
    base = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    point, update = fixtures("accept", "json")[:2]
    assert (point.name, update.name) == ("point", "update")
    status, _, _ = await _post(client, secret, update.content_type, update.body(base),
                               dry_run=False)
    assert status == 202
    _, _, dry = await _post(client, secret, point.content_type, point.body(base), dry_run=True)
    _, _, real = await _post(client, secret, point.content_type, point.body(base),
                             dry_run=False)
    assert dry["decision"] == real["decision"] == "suppressed:outdated"
    assert dry["would_alert"] == 0


@pytest.fixture
async def strict_client(settings: Settings, pool: asyncpg.Pool, redis: RedisClient,
                        ) -> AsyncIterator[Client]:
    app: web.Application = create_app(replace(settings, dry_runs_per_minute=2))
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_dry_runs_have_a_rate_limit_of_their_own(
    strict_client: Client, redis: RedisClient,
) -> None:
    client = strict_client
    secret = await create_agency(client, call_types=SEATTLE)
    # The agency's own budget is as small as the dry runs': still they don't spend it.
    r = await client.patch("/v1/admin/agencies/seattle-fire", json={"rate_limit_per_minute": 2},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status == 200, await r.text()
    fx = fixtures("accept", "json")[0]
    body = fx.body(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    # The burst is a minute's worth: two dry runs pass, the third waits.
    answers = [await _post(client, secret, fx.content_type, body, dry_run=True)
               for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    assert answers[2][1] == "application/problem+json"
    assert "dry runs" in answers[2][2]["detail"]
    # ... without spending what the agency's real incidents need.
    assert not await redis.exists(keys.agency_rate("seattle-fire"))
    status, _, _ = await _post(client, secret, fx.content_type, body, dry_run=False)
    assert status == 202


async def test_would_alert_counts_responders_for_a_cardiac_arrest(
    client: Client, pool: asyncpg.Pool, redis: RedisClient,
) -> None:
    secret = await create_agency(client, call_types=SEATTLE)
    responders = []
    for dlat in (0.001, 0.002, 0.05):       # ~110 m, ~220 m, ~5.5 km away
        device, key = await create_device(client, "apns", secrets.token_hex(32))
        auth = {"Authorization": f"Bearer {key}"}
        r = await client.put(f"/v1/devices/{device}/preferences", json={"responder": True},
                             headers=auth)
        assert r.status == 200
        r = await client.put(f"/v1/devices/{device}/location", headers=auth,
                             json={"lat": POINT[0] + dlat, "lon": POINT[1]})
        assert r.status == 204
        responders.append(device)
    doc = json.loads(fixtures("accept", "json")[0].body(
        dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)))
    doc.update(id="CPR-1", call_type="Cardiac Arrest")
    doc["location"]["kind"] = "public"
    body = json.dumps(doc).encode()
    _, _, dry = await _post(client, secret, "application/json", body, dry_run=True)
    assert (dry["decision"], dry["category"], dry["audience"]) == (
        "alert", "cardiac_arrest", "responders")
    status, _, real = await _post(client, secret, "application/json", body, dry_run=False)
    assert status == 202
    result = await Matcher(pool, redis).match_incident(real["incident_id"],
                                                       dt.datetime.now(dt.UTC))
    assert result.enqueued == dry["would_alert"] == 2


async def test_the_validator_reads_the_agency_from_the_database(
    client: Client, services: Services, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await create_agency(client, call_types={"Fire in Building": "structure_fire"},
                        review=True)
    monkeypatch.setenv("GEOPUSH_DATABASE_URL", services.database_url)
    fx = fixtures("accept", "cap")[0]
    code, out = await asyncio.to_thread(
        validate_file, fx.path, fmt="cap", agency_id="seattle-fire",
        now="2026-11-28T04:05:00Z")
    result = json.loads(out)
    assert (code, result["decision"], result["category"]) == (0, "review", "structure_fire")
    with pytest.raises(ValueError, match="no agency"):
        await asyncio.to_thread(validate_file, fx.path, agency_id="nobody")


async def test_openapi_describes_the_dry_run_and_its_answer(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    ingest = doc["paths"]["/v1/agencies/{agency}/incidents"]["post"]
    [dry_run] = [p for p in ingest["parameters"] if p["in"] == "query"]
    assert (dry_run["name"], dry_run["schema"]["type"]) == ("dry_run", "boolean")
    answer = ingest["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/DryRunResult"}
    schema = doc["components"]["schemas"]["DryRunResult"]
    assert set(schema["required"]) == set(DryRunResult.__struct_fields__)
    assert "DryRunWarning" in doc["components"]["schemas"]

    # A real answer is an instance of the type the schema is generated from.
    secret = await create_agency(client, call_types=SEATTLE)
    fx = fixtures("accept", "cap")[0]
    body = fx.body(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    resp = await client.post("/v1/agencies/seattle-fire/incidents?dry_run=true", data=body,
                             headers={HEADER: sign(secret, body, int(
                                 dt.datetime.now(dt.UTC).timestamp())),
                                 "Content-Type": fx.content_type})
    assert resp.status == 200
    msgspec.json.decode(await resp.read(), type=DryRunResult)


async def test_a_drifting_clock_is_warned_before_it_is_refused(client: Client) -> None:
    secret = await create_agency(client, call_types=SEATTLE)
    fx = fixtures("accept", "json")[0]
    body = fx.body(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    two_min_slow = int(dt.datetime.now(dt.UTC).timestamp()) - 120
    status, _, dry = await _post(client, secret, fx.content_type, body, dry_run=True,
                                 at=two_min_slow)
    assert status == 200
    [skew] = [w for w in dry["warnings"] if w["code"] == "clock_skew"]
    assert skew["field"] == "Geopush-Signature" and "behind" in skew["message"]


async def test_would_alert_leaves_out_phones_another_agency_alerted_for_the_same_event(
    client: Client, pool: asyncpg.Pool, redis: RedisClient,
) -> None:
    fire = await create_agency(client)
    police = await create_agency(client, "seattle-police")
    await create_device(client, "apns", secrets.token_hex(32), circle(*POINT, 1500))
    _, alerted = await post_incident(client, fire, incident("F1"))
    assert (await Matcher(pool, redis).match_incident(
        alerted["incident_id"], dt.datetime.now(dt.UTC))).enqueued == 1
    for doc, expected in ((incident("P1", lat=POINT[0] + 0.0005, minutes_ago=1), 0),  # 60 m
                          (incident("P2", lat=POINT[0] + 0.0055), 1)):              # 600 m
        body = json.dumps(doc).encode()
        _, _, dry = await _post(client, police, "application/json", body, dry_run=True,
                                agency="seattle-police")
        assert (dry["decision"], dry["would_alert"]) == ("alert", expected), doc["id"]
        _, _, real = await _post(client, police, "application/json", body, dry_run=False,
                                 agency="seattle-police")
        result = await Matcher(pool, redis).match_incident(real["incident_id"],
                                                           dt.datetime.now(dt.UTC))
        assert result.enqueued == expected
