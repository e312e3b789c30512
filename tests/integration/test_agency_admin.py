"""Operators: agency policy, call-type maps, secrets, rate limits."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from server.web.appkeys import AGENCIES
from tests.conftest import ADMIN_TOKEN
from tests.helpers import create_agency, incident, post_incident, signed

Client = TestClient[Any, Any]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_admin_api_needs_the_token(client: Client) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = await client.post("/v1/admin/agencies", json={"id": "x", "name": "X"},
                              headers=headers)
        assert r.status == 401 and r.content_type == "application/problem+json"


async def test_duplicate_agency_is_a_conflict_and_bad_maps_are_422(client: Client) -> None:
    await create_agency(client)
    r = await client.post("/v1/admin/agencies", json={"id": "seattle-fire", "name": "Again"},
                          headers=ADMIN)
    assert r.status == 409
    r = await client.post("/v1/admin/agencies", headers=ADMIN, json={
        "id": "bad", "name": "Bad", "timezone": "Nowhere/City",
        "call_types": {"459": "burgalry"}})
    problem = await r.json()
    assert r.status == 422
    assert {e["field"] for e in problem["errors"]} == {"timezone", "call_types['459']"}


async def test_call_type_map_is_merge_patched_and_unmapped_are_listed(client: Client) -> None:
    secret = await create_agency(client)
    for i, call_type in enumerate(["Rescue Elevator", "rescue  elevator", "Wires Down"]):
        await post_incident(client, secret, incident(f"U{i}", call_type=call_type))
    r = await client.get("/v1/admin/agencies/seattle-fire/unmapped", headers=ADMIN)
    listed = (await r.json())["call_types"]
    assert [(x["call_type"], x["incidents"]) for x in listed] == [
        ("Rescue Elevator", 1), ("Wires Down", 1), ("rescue  elevator", 1)]

    r = await client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN, json={
        "call_types": {"RESCUE ELEVATOR": "rescue", "Aid Response": None}})
    assert r.status == 200, await r.text()
    agency = await r.json()
    assert agency["call_types"]["rescue elevator"] == "rescue"
    assert "aid response" not in agency["call_types"]
    assert agency["call_types"]["fire in building"] == "structure_fire"  # untouched
    assert "secret" not in json.dumps(agency)

    r = await client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN,
                           json={"staleness_minutes": 0})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "staleness_minutes"
    r = await client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN,
                           json={"alertable_categories": ["medical"]})
    assert r.status == 422 and "burglary" in (await r.json())["errors"][0]["message"]
    r = await client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN,
                           json={"colour": "red"})
    assert r.status == 422


async def test_agencies_narrow_categories_and_change_staleness(client: Client) -> None:
    secret = await create_agency(client)
    r = await client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN, json={
        "alertable_categories": ["shooting"], "staleness_minutes": 10})
    assert r.status == 200
    _, fire = await post_incident(client, secret, incident("N1"))
    _, shooting = await post_incident(
        client, secret, incident("N2", call_type="Scenes Of Violence 7"))
    _, old = await post_incident(
        client, secret, incident("N3", call_type="Scenes Of Violence 7", minutes_ago=11))
    assert (fire["decision"], shooting["decision"], old["decision"]) == (
        "suppressed:category", "alert", "suppressed:stale")


async def test_secret_rotation_keeps_the_old_secret_for_24_hours(
    client: Client, pool: asyncpg.Pool
) -> None:
    old = await create_agency(client)
    r = await client.post("/v1/admin/agencies/seattle-fire/secret", headers=ADMIN)
    new = (await r.json())["secret"]
    assert new != old
    for i, secret in enumerate([old, new]):
        status, _ = await post_incident(client, secret, incident(f"R{i}"))
        assert status == 202
    await pool.execute(
        "UPDATE agencies SET previous_secret_expires_at = now() - interval '1 second'")
    client.app[AGENCIES].invalidate("seattle-fire")  # the DB was changed behind its back
    status, _ = await post_incident(client, old, incident("R3"))
    assert status == 401
    r = await client.post("/v1/admin/agencies/nobody/secret", headers=ADMIN)
    assert r.status == 404


async def test_per_agency_rate_limit_answers_429_with_retry_after(client: Client) -> None:
    secret = await create_agency(client)
    other = await create_agency(client, "other-agency")
    await client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN,
                       json={"rate_limit_per_minute": 5})
    answers = [(await post_incident(client, secret, incident(f"L{i}")))[0] for i in range(8)]
    # A minute's budget is the burst: five pass, the rest wait.
    assert answers[:5] == [202] * 5 and set(answers[5:]) == {429}
    body = json.dumps(incident("L9")).encode()
    r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                          headers=signed(secret, body))
    assert r.status == 429 and 1 <= int(r.headers["Retry-After"]) <= 12
    assert (await r.json())["type"].endswith("/rate-limited")
    # Other agencies are not affected, and unsigned requests don't spend the budget.
    status, _ = await post_incident(client, other, incident("O1"), agency_id="other-agency")
    assert status == 202
