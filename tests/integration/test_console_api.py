"""Named accounts, sessions, CSRF, agency scoping, the audit log and the live queue's
event stream, through the real app on PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.settings import Settings
from server.web.app import create_app
from server.web.appkeys import REVIEW_FEED
from tests.conftest import ADMIN_TOKEN
from tests.helpers import (
    ADMIN_HEADERS,
    PASSWORD,
    create_agency,
    create_user,
    incident,
    post_incident,
    sign_in,
)
from workers.maintenance import maintain_once

Client = TestClient[Any, Any]


async def _queued(client: Client, secret: str, external_id: str = "F1",
                  agency_id: str = "seattle-fire") -> str:
    status, body = await post_incident(client, secret, incident(external_id), agency_id)
    assert (status, body["decision"]) == (202, "review")
    return str(body["incident_id"])


async def _second_client(settings: Settings) -> Client:
    """Another browser: its own cookie jar, the same database and Redis."""
    other = TestClient(TestServer(create_app(settings)))
    await other.start_server()
    return other


async def test_users_are_created_by_the_operator_with_a_memory_hard_hash(
        client: Client, pool: asyncpg.Pool) -> None:
    await create_agency(client)
    await create_user(client, "seattle-fire", "Dana.Editor")
    stored = await pool.fetchrow("SELECT username, password_hash, role FROM users")
    assert stored["username"] == "dana.editor"
    assert stored["password_hash"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert PASSWORD not in stored["password_hash"]

    taken = await client.post("/v1/admin/agencies/seattle-fire/users", headers=ADMIN_HEADERS,
                              json={"username": "dana.editor", "password": PASSWORD})
    assert taken.status == 409
    bad = await client.post("/v1/admin/agencies/seattle-fire/users", headers=ADMIN_HEADERS,
                            json={"username": "x", "password": "short", "role": "root"})
    assert bad.status == 422
    assert {e["field"] for e in (await bad.json())["errors"]} == {"username", "password", "role"}
    nowhere = await client.post("/v1/admin/agencies/nowhere/users", headers=ADMIN_HEADERS,
                                json={"username": "lee", "password": PASSWORD})
    assert nowhere.status == 404


async def test_session_cookie_is_httponly_strict_and_expiring(client: Client) -> None:
    await create_agency(client)
    await create_user(client, "seattle-fire", "dana")
    resp = await client.post("/v1/session", json={"username": "dana", "password": PASSWORD})
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert "Secure" not in cookie   # plain HTTP here; GEOPUSH_SESSION_COOKIE_SECURE=1 or TLS
    me = await client.get("/v1/session")
    assert (await me.json())["username"] == "dana"

    wrong = await client.post("/v1/session", json={"username": "dana", "password": "nope" * 4})
    assert wrong.status == 401
    unknown = await client.post("/v1/session", json={"username": "ghost", "password": "x" * 12})
    assert unknown.status == 401
    assert (await wrong.json())["detail"] == (await unknown.json())["detail"]


async def test_secure_cookie_when_configured(settings: Settings, pool: asyncpg.Pool,
                                             redis: Any) -> None:
    from dataclasses import replace

    async with TestClient(TestServer(create_app(
            replace(settings, session_cookie_secure=True)))) as c:
        await create_agency(c)
        await create_user(c, "seattle-fire", "dana")
        resp = await c.post("/v1/session", json={"username": "dana", "password": PASSWORD})
        assert "Secure" in resp.headers["Set-Cookie"]


async def test_sign_in_from_another_site_is_refused(client: Client) -> None:
    await create_agency(client)
    await create_user(client, "seattle-fire", "dana")
    resp = await client.post("/v1/session", json={"username": "dana", "password": PASSWORD},
                             headers={"Origin": "https://evil.example"})
    assert resp.status == 403


async def test_failed_sign_ins_lock_the_username_then_the_address(client: Client) -> None:
    await create_agency(client)
    await create_user(client, "seattle-fire", "dana")
    for _ in range(5):
        r = await client.post("/v1/session", json={"username": "dana", "password": "w" * 12})
        assert r.status == 401
    locked = await client.post("/v1/session", json={"username": "dana", "password": PASSWORD})
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) > 0
    # Other names from this address still work until the address's own budget is spent.
    await create_user(client, "seattle-fire", "lee")
    await sign_in(client, "lee")
    for i in range(30):
        await client.post("/v1/session", json={"username": f"guess{i}", "password": "w" * 12})
    blocked = await client.post("/v1/session", json={"username": "lee", "password": PASSWORD})
    assert blocked.status == 429


async def test_changes_need_the_csrf_token_and_logout_ends_the_session(
        client: Client) -> None:
    secret = await create_agency(client, review=True)
    await create_user(client, "seattle-fire", "dana")
    csrf = await sign_in(client, "dana")
    item = await _queued(client, secret)

    forged = await client.post(f"/v1/admin/review/{item}/reject")
    assert forged.status == 403
    wrong = await client.post(f"/v1/admin/review/{item}/reject",
                              headers={"X-CSRF-Token": "guess"})
    assert wrong.status == 403
    ok = await client.post(f"/v1/admin/review/{item}/reject", headers=csrf)
    assert ok.status == 200

    assert (await client.delete("/v1/session")).status == 403      # CSRF on logout too
    assert (await client.delete("/v1/session", headers=csrf)).status == 204
    assert (await client.get("/v1/session")).status == 401
    assert (await client.get("/v1/admin/review")).status == 401


async def test_an_editor_sees_and_decides_only_their_agencys_items(
        client: Client, settings: Settings) -> None:
    fire = await create_agency(client, review=True)
    await create_agency(client, "seattle-police", review=True)
    await create_user(client, "seattle-fire", "fire.editor")
    await create_user(client, "seattle-police", "police.editor")
    item = await _queued(client, fire)

    csrf = await sign_in(client, "police.editor")
    assert (await (await client.get("/v1/admin/review")).json())["items"] == []
    assert (await client.get(f"/v1/admin/review/{item}")).status == 404
    assert (await client.post(f"/v1/admin/review/{item}/approve", headers=csrf)).status == 404
    assert (await client.post(f"/v1/admin/review/{item}/reject", headers=csrf)).status == 404
    # ?agency= is the operator's filter; an editor can't widen their view with it.
    widened = await client.get("/v1/admin/review?agency=seattle-fire")
    assert (await widened.json())["items"] == []

    fire_client = await _second_client(settings)
    try:
        await sign_in(fire_client, "fire.editor")
        mine = await (await fire_client.get(f"/v1/admin/review/{item}")).json()
        assert mine["narrative"] and mine["location"]["exact"] == {
            "lat": pytest.approx(47.66707), "lon": pytest.approx(-122.301946)}
    finally:
        await fire_client.close()

    # The operator token works as before: every agency, no exact point.
    operator = await (await client.get("/v1/admin/review", headers=ADMIN_HEADERS)).json()
    assert [i["incident_id"] for i in operator["items"]] == [item]
    assert "exact" not in operator["items"][0]["location"]


async def test_decisions_user_and_call_type_changes_are_audited(client: Client) -> None:
    secret = await create_agency(client, review=True)
    await create_agency(client, "seattle-police")
    await create_user(client, "seattle-fire", "chief", role="agency_admin")
    await create_user(client, "seattle-police", "other.chief", role="agency_admin")
    csrf = await sign_in(client, "chief")
    item = await _queued(client, secret)
    approve = await client.post(f"/v1/admin/review/{item}/approve", headers=csrf,
                                json={"title": "Fire on 24th Ave NE"})
    assert approve.status == 200
    made = await client.post("/v1/admin/agencies/seattle-fire/users", headers=csrf,
                             json={"username": "new.editor", "password": PASSWORD})
    assert made.status == 201
    no_admins = await client.post("/v1/admin/agencies/seattle-fire/users", headers=csrf,
                                  json={"username": "new.admin", "password": PASSWORD,
                                        "role": "agency_admin"})
    assert no_admins.status == 403
    patched = await client.patch("/v1/admin/agencies/seattle-fire", headers=csrf,
                                 json={"call_types": {"459": "burglary"}})
    assert patched.status == 200
    assert (await client.patch("/v1/admin/agencies/seattle-fire", headers=csrf,
                               json={"review": False})).status == 403
    assert (await client.patch("/v1/admin/agencies/seattle-police", headers=csrf,
                               json={"call_types": {"459": "burglary"}})).status == 404

    log = (await (await client.get("/v1/admin/audit")).json())["entries"]
    assert [(e["actor"], e["action"]) for e in log[:3]] == [
        ("chief", "agency.update"), ("chief", "user.create"), ("chief", "review.approve")]
    assert log[0]["details"] == {"call_types": {"459": "burglary"}}
    assert log[2]["target"] == item and log[2]["details"]["edited_title"] == "Fire on 24th Ave NE"
    assert {e["agency_id"] for e in log} == {"seattle-fire"}   # scoped to the admin's agency
    everything = (await (await client.get("/v1/admin/audit", headers=ADMIN_HEADERS)).json())
    assert {e["agency_id"] for e in everything["entries"]} == {"seattle-fire", "seattle-police"}

    await client.delete("/v1/session", headers=csrf)
    await sign_in(client, "new.editor")
    assert (await client.get("/v1/admin/audit")).status == 403


async def test_the_event_stream_announces_own_agency_items_only(
        client: Client, settings: Settings) -> None:
    fire = await create_agency(client, review=True)
    police = await create_agency(client, "seattle-police", review=True)
    await create_user(client, "seattle-fire", "dana")
    await sign_in(client, "dana")
    resp = await client.get("/v1/admin/review/events")
    assert resp.headers["Content-Type"].startswith("text/event-stream")

    async def next_event() -> tuple[str, str]:
        event = data = ""
        while True:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                return event, data

    assert (await next_event())[0] == "ready"
    await client.app[REVIEW_FEED].listening.wait()
    await _queued(client, police, "P1", "seattle-police")
    mine = await _queued(client, fire, "F1")
    event = await asyncio.wait_for(next_event(), 10)
    if event == ("change", "*"):   # the feed (re)connected after we subscribed: resync
        event = await asyncio.wait_for(next_event(), 10)
    assert event == ("change", mine)
    resp.close()


async def test_an_expired_session_is_refused_and_then_deleted(
        client: Client, pool: asyncpg.Pool) -> None:
    await create_agency(client)
    await create_user(client, "seattle-fire", "dana")
    await sign_in(client, "dana")
    await pool.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    assert (await client.get("/v1/session")).status == 401
    await maintain_once(pool, dt.timedelta(hours=24))
    assert await pool.fetchval("SELECT count(*) FROM sessions") == 0


async def test_removing_a_user_ends_their_sessions(client: Client, pool: asyncpg.Pool) -> None:
    await create_agency(client)
    await create_user(client, "seattle-fire", "dana")
    await sign_in(client, "dana")
    gone = await client.delete("/v1/admin/agencies/seattle-fire/users/dana",
                               headers=ADMIN_HEADERS)
    assert gone.status == 204
    assert (await client.get("/v1/session")).status == 401
    assert (await client.delete("/v1/admin/agencies/seattle-fire/users/dana",
                                headers=ADMIN_HEADERS)).status == 404
    audit = await pool.fetch("SELECT actor, action, target FROM audit_log ORDER BY id")
    assert [tuple(r) for r in audit][-1] == ("operator", "user.delete", "dana")


async def test_pages_and_vendored_leaflet_are_served_with_a_strict_policy(
        client: Client, settings: Settings, pool: asyncpg.Pool, redis: Any) -> None:
    moved = await client.get("/console", allow_redirects=False)
    assert (moved.status, moved.headers["Location"]) == (308, "/console/")
    page = await client.get("/console/")
    text = await page.text()
    assert page.status == 200 and "<label for=\"username\">Username</label>" in text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "img-src 'self' data:;" in csp           # no tile server configured
    leaflet = await client.get("/static/vendor/leaflet-1.9.4/leaflet.js")
    assert leaflet.status == 200 and b"Leaflet 1.9.4" in (await leaflet.read())[:200]

    from dataclasses import replace

    tiles = "https://{s}.tiles.example.org/{z}/{x}/{y}.png"
    async with TestClient(TestServer(create_app(
            replace(settings, map_tiles_url=tiles)))) as c:
        page = await c.get("/map/")
        assert "img-src 'self' data: https://*.tiles.example.org;" in \
            page.headers["Content-Security-Policy"]
        assert "tiles.example.org" in await page.text()


async def test_the_openapi_document_lists_the_console_api(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    approve = doc["paths"]["/v1/admin/review/{incident}/approve"]["post"]
    assert approve["security"] == [{"adminToken": []}, {"session": []}]
    assert doc["components"]["securitySchemes"]["session"]["in"] == "cookie"
    alert = doc["components"]["schemas"]["AlertCreate"]
    assert set(alert["required"]) == {"title", "body", "area", "severity"}
    for path in ("/v1/session", "/v1/admin/agencies/{agency}/users", "/v1/admin/audit",
                 "/v1/agencies/{agency}/alerts.atom", "/v1/incidents"):
        assert path in doc["paths"]


async def test_the_demo_gives_a_console_account(client: Client, tmp_path: Any) -> None:
    from server.dev import demo

    base = str(client.make_url("")).rstrip("/")
    state = await asyncio.to_thread(demo.load, tmp_path / "demo.json", base, ADMIN_TOKEN)
    account = state["console"]
    resp = await client.post("/v1/session", json=account)
    assert resp.status == 200
    assert (await resp.json())["role"] == "agency_admin"
