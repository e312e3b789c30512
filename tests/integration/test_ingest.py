"""The CAD webhook against real PostgreSQL/PostGIS and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from server import keys
from server.domain.signing import HEADER, sign
from tests.helpers import create_agency, incident, post_incident, signed

Client = TestClient[Any, Any]


async def test_alertable_incident_is_stored_published_and_answered_202(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    status, body = await post_incident(client, secret, incident())
    assert status == 202
    assert body["decision"] == "alert" and body["duplicate"] is False
    row = await pool.fetchrow("SELECT * FROM incidents WHERE id = $1::uuid", body["incident_id"])
    assert row["category"] == "structure_fire"
    assert row["public_location"] == "5300 block of 24th Ave NE"
    entries = await redis.xrange(keys.INCIDENTS_STREAM)
    assert [e[1]["incident_id"] for e in entries] == [body["incident_id"]]
    # The outbox row goes with the next batch of deletes (every 50 ms).
    for _ in range(100):
        if await pool.fetchval("SELECT count(*) FROM outbox") == 0:
            break
        await asyncio.sleep(0.02)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_same_revision_twice_is_a_duplicate_with_one_row(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    doc = incident()
    _, first = await post_incident(client, secret, doc)
    status, second = await post_incident(client, secret, doc)
    assert status == 202
    assert second == {**first, "duplicate": True}
    assert await pool.fetchval("SELECT count(*) FROM incidents") == 1
    assert await redis.xlen(keys.INCIDENTS_STREAM) == 1


async def test_older_revision_is_ignored(client: Client, pool: asyncpg.Pool) -> None:
    secret = await create_agency(client)
    doc = incident()
    await post_incident(client, secret, doc)
    older = {**doc, "updated_at": doc["occurred_at"], "status": "cleared"}
    status, body = await post_incident(client, secret, older)
    assert status == 202 and body["decision"] == "suppressed:outdated"
    assert await pool.fetchval("SELECT status FROM incidents") == "active"


async def test_policy_decisions(client: Client, redis: aioredis.Redis) -> None:
    secret = await create_agency(client)
    cases = {
        "suppressed:category": incident("A1", call_type="Aid Response"),
        "suppressed:unmapped": incident("A2", call_type="Rescue Elevator"),
        "suppressed:stale": incident("A3", minutes_ago=120),
        "suppressed:cleared": incident("A4", status="cleared"),
        "alert": incident("A5", call_type="  fire   IN building "),
    }
    for expected, doc in cases.items():
        status, body = await post_incident(client, secret, doc)
        assert (status, body["decision"]) == (202, expected), doc
    assert await redis.xlen(keys.INCIDENTS_STREAM) == 1


async def test_review_agency_holds_alerts(client: Client, redis: aioredis.Redis) -> None:
    secret = await create_agency(client, review=True)
    status, body = await post_incident(client, secret, incident())
    assert (status, body["decision"]) == (202, "review")
    assert await redis.xlen(keys.INCIDENTS_STREAM) == 0


async def test_bad_signature_and_unknown_agency_look_the_same(client: Client) -> None:
    secret = await create_agency(client)
    body = json.dumps(incident()).encode()
    answers = []
    for agency, headers in [
        ("seattle-fire", signed("wrong-secret", body)),
        ("seattle-fire", signed(secret, body, at=int(time.time()) - 301)),
        ("seattle-fire", {"Content-Type": "application/json"}),
        ("no-such-agency", signed(secret, body)),
    ]:
        resp = await client.post(f"/v1/agencies/{agency}/incidents", data=body, headers=headers)
        answers.append((resp.status, resp.content_type, await resp.json()))
    assert all(a == answers[0] for a in answers), answers
    assert answers[0][0] == 401 and answers[0][1] == "application/problem+json"


async def test_signature_within_window_verifies(client: Client) -> None:
    secret = await create_agency(client)
    body = json.dumps(incident()).encode()
    headers = {HEADER: sign(secret, body, int(time.time()) - 290),
               "Content-Type": "application/json"}
    resp = await client.post("/v1/agencies/seattle-fire/incidents", data=body, headers=headers)
    assert resp.status == 202


async def test_missing_field_is_a_422_naming_it(client: Client) -> None:
    secret = await create_agency(client)
    for doc, field in [
        ({k: v for k, v in incident().items() if k != "call_type"}, "call_type"),
        ({**incident(), "location": {"lon": 1.0}}, "location.lat"),
        ({**incident(), "location": {"lat": 91, "lon": 1.0}}, "location.lat"),
        ({**incident(), "occurred_at": "yesterday"}, "occurred_at"),
        ({**incident(), "occurred_at": "2099-01-01T00:00:00Z"}, "occurred_at"),
    ]:
        body = json.dumps(doc).encode()
        resp = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                                 headers=signed(secret, body))
        assert resp.status == 422, (field, await resp.text())
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["errors"][0]["field"] == field, problem


async def test_oversize_body_is_413_and_unknown_type_415(client: Client) -> None:
    secret = await create_agency(client)
    big = b"{" + b" " * (300 * 1024) + b"}"
    resp = await client.post("/v1/agencies/seattle-fire/incidents", data=big,
                             headers=signed(secret, big))
    assert resp.status == 413
    body = json.dumps(incident()).encode()
    resp = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                             headers={**signed(secret, body), "Content-Type": "text/plain"})
    assert resp.status == 415
    assert resp.content_type == "application/problem+json"


async def test_caller_and_narrative_are_never_stored(
    client: Client, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client)
    await post_incident(client, secret, incident())
    dump = await pool.fetchval("SELECT json_agg(i)::text FROM incidents i")
    for secret_value in ("John Q Caller", "555 0147", "Jane Roe", "smoke", "5312", "Apt 4B"):
        assert secret_value not in dump


async def test_openapi_document_describes_the_contract(client: Client) -> None:
    r = await client.get("/openapi.json")
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    ingest = doc["paths"]["/v1/agencies/{agency}/incidents"]["post"]
    assert set(ingest["requestBody"]["content"]) == {
        "application/json", "application/cap+xml", "application/xml", "application/eido+json"}
    assert {"202", "401", "413", "415", "422", "429", "503"} <= set(ingest["responses"])
    native = doc["components"]["schemas"]["NativeIncident"]
    assert set(native["required"]) == {"id", "call_type", "occurred_at", "location"}
    assert "caller" not in native["properties"]
    assert doc["components"]["schemas"]["NativeLocation"]["properties"]["lat"]["maximum"] == 90


async def test_chunked_oversize_body_is_refused(client: Client) -> None:
    secret = await create_agency(client)

    async def body() -> Any:
        for _ in range(64):          # 4 MiB without a Content-Length, 64 KiB at a time
            yield b" " * 65536

    resp = await client.post("/v1/agencies/seattle-fire/incidents", data=body(),
                             headers=signed(secret, b""))
    assert resp.status == 413
    assert (await resp.json())["type"].endswith("/payload-too-large")
