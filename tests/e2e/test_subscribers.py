"""Phone users: the alert feed, erasure, locale, and CPR responders with AEDs."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from typing import Any
from zoneinfo import ZoneInfo

from server import keys
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Stack, wait_for
from tests.e2e.test_failures_and_privacy import _every_key, _every_table
from tests.helpers import POINT, circle, create_agency, create_device, fcm_token, incident, iso
from tests.helpers import post_incident as post

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_feed_shows_recent_alerts_with_current_status_paginated(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    device, key = await create_device(stack.client, "fcm", fcm_token(), circle(*POINT, 2000))
    docs = [incident(f"F{i}", lat=POINT[0] + 0.004 * i) for i in range(3)]
    for doc in docs:
        await post(stack.client, secret, doc)
    await wait_for(lambda: stack.pool.fetchval(
        "SELECT count(*) = 3 FROM deliveries WHERE outcome = 'sent'"), what="three alerts")
    updated = dt.datetime.fromisoformat(docs[0]["updated_at"]) + dt.timedelta(seconds=10)
    cleared = {**docs[0], "status": "cleared", "updated_at": iso(updated)}
    assert (await post(stack.client, secret, cleared))[0] == 202

    r = await stack.client.get(f"/v1/devices/{device}/alerts?limit=2", headers=auth(key))
    page1 = await r.json()
    assert r.status == 200 and len(page1["alerts"]) == 2 and page1["next"]
    r = await stack.client.get(f"/v1/devices/{device}/alerts?limit=2&before={page1['next']}",
                               headers=auth(key))
    page2 = await r.json()
    alerts = page1["alerts"] + page2["alerts"]
    assert len(alerts) == 3 and page2["next"] is None
    by_external = {a["location"]["lat"]: a for a in alerts}
    assert by_external[round(POINT[0], 3)]["status"] == "cleared"
    assert {a["status"] for a in alerts} == {"active", "cleared"}
    assert all(a["title"] == "Structure fire nearby" for a in alerts)
    assert all("block of" in a["location"]["public"] for a in alerts)
    r = await stack.client.get(f"/v1/devices/{device}/alerts?limit=0", headers=auth(key))
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "limit"


async def test_spanish_locale_gets_spanish_text(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    device, key = await create_device(stack.client, "apns", secrets.token_hex(32),
                                      circle(*POINT, 1000))
    r = await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                               json={"locale": "es-US", "timezone": "America/Chicago"})
    assert r.status == 200
    await post(stack.client, secret, incident())
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the push")
    alert = stack.apns.deliveries[0].payload["aps"]["alert"]
    assert alert == {"title": "Incendio en edificio cerca",
                     "body": "hace 3 min · 5300 block of 24th Ave NE"}


async def test_erasure_leaves_nothing_behind(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    token = secrets.token_hex(32)
    device, key = await create_device(stack.client, "apns", token, circle(*POINT, 1000))
    await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                           json={"categories": ["structure_fire", "cardiac_arrest"],
                                 # set, so that erasure must clear them; never now
                                 "quiet_hours": _quiet_hours_away_from_now(),
                                 "responder": True})
    await stack.client.put(f"/v1/devices/{device}/location", headers=auth(key),
                           json={"lat": POINT[0], "lon": POINT[1]})
    await stack.client.post("/v1/admin/agencies/seattle-fire/responders", headers=ADMIN,
                            json={"device_id": device})
    await post(stack.client, secret, incident())
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="a push")
    await stack.drained()
    # A push still waiting for a retry, and one dead-lettered, also name the device.
    shard = keys.device_shard(device, keys.DEFAULT_PUSH_STREAM_SHARDS)
    await stack.redis.zadd(keys.retry_schedule("apns", shard), {json.dumps(
        {"device_id": device, "token": token, "incident_id": "x"}): time.time() + 3600})
    await stack.redis.xadd(keys.DEAD_STREAM, {"device_id": device, "token": token})

    r = await stack.client.delete(f"/v1/devices/{device}", headers=auth(key))
    assert r.status == 204
    tables, redis_dump = await _every_table(stack.pool), await _every_key(stack.redis)
    for value in (device, token):
        assert value not in tables and value not in redis_dump
    # The delivery record survives, unlinked, for the incident's statistics.
    assert await stack.pool.fetchval("SELECT count(*) FROM deliveries WHERE device_id IS NULL") == 1
    r = await stack.client.get(f"/v1/devices/{device}/alerts", headers=auth(key))
    assert r.status == 401


def _quiet_hours_away_from_now() -> dict[str, str]:
    """Quiet hours that start six hours from now on the devices' clock
    (tests.helpers.create_device: America/Los_Angeles), so the push is never held."""
    local = dt.datetime.now(ZoneInfo("America/Los_Angeles"))
    start, end = local + dt.timedelta(hours=6), local + dt.timedelta(hours=8)
    return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


async def _aeds(stack: Stack) -> None:
    features: list[dict[str, Any]] = []
    for i, (dlat, name) in enumerate([(0.001, "Library"), (0.002, "Gym"), (0.003, "Cafe"),
                                      (0.0035, "School"), (0.02, "Far away")]):
        features.append({"type": "Feature", "properties": {
            "id": f"aed-{i}", "name": name, "description": f"Entrance {i}"},
            "geometry": {"type": "Point", "coordinates": [POINT[1], POINT[0] + dlat]}})
    r = await stack.client.post("/v1/admin/aeds", headers={**ADMIN,
                                "Content-Type": "application/geo+json"},
                                data=json.dumps({"type": "FeatureCollection",
                                                 "features": features}))
    assert r.status == 200 and (await r.json())["imported"] == 5


async def _responder(stack: Stack, lat: float, *, registered: bool = False,
                     report: bool = True) -> str:
    token = secrets.token_hex(32)
    device, key = await create_device(stack.client, "apns", token)
    await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                           json={"responder": True})
    if report:
        r = await stack.client.put(f"/v1/devices/{device}/location", headers=auth(key),
                                   json={"lat": lat, "lon": POINT[1]})
        assert r.status == 204
    if registered:
        r = await stack.client.post("/v1/admin/agencies/seattle-fire/responders",
                                    headers=ADMIN, json={"device_id": device})
        assert r.status == 201
    return token


async def test_cardiac_arrest_alerts_nearby_responders_with_three_nearest_aeds(
    stack: Stack
) -> None:
    secret = await create_agency(stack.client, call_types={"Cardiac Arrest": "cardiac_arrest"})
    await _aeds(stack)
    near = await _responder(stack, POINT[0] + 0.002)          # ~220 m
    registered = await _responder(stack, POINT[0] - 0.002, registered=True)
    far = await _responder(stack, POINT[0] + 0.01)            # ~1.1 km: outside 400 m
    neighbour_token = secrets.token_hex(32)
    await create_device(stack.client, "apns", neighbour_token, circle(*POINT, 2000))

    public = incident("CA1", call_type="Cardiac Arrest")
    public["location"]["kind"] = "public"
    _, accepted = await post(stack.client, secret, public)
    assert accepted["decision"] == "alert"
    await wait_for(lambda: len(stack.apns.deliveries) == 2, what="two responder pushes")
    await stack.drained()
    got = {d.token: d.payload for d in stack.apns.deliveries}
    assert set(got) == {near, registered}            # not the far one, not the neighbour
    payload = got[near]
    assert payload["aps"]["alert"]["title"] == "CPR needed nearby"
    assert payload["incident"]["responder"] is True
    assert payload["incident"]["area"]["lat"] == POINT[0]   # responders get the exact point
    assert [a["name"] for a in payload["incident"]["aeds"]] == ["Library", "Gym", "Cafe"]
    assert payload["incident"]["aeds"][0]["distance_m"] in range(100, 125)

    # In a residence only the responders the agency registered are alerted.
    stack.apns.clear()
    residence = incident("CA2", call_type="Cardiac Arrest", lat=POINT[0] + 0.0001)
    await post(stack.client, secret, residence)
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the registered responder")
    await stack.drained()
    assert [d.token for d in stack.apns.deliveries] == [registered]
    assert far not in {d.token for d in stack.apns.deliveries}


async def test_responder_positions_expire_and_need_opt_in(stack: Stack) -> None:
    device, key = await create_device(stack.client, "fcm", fcm_token())
    r = await stack.client.put(f"/v1/devices/{device}/location", headers=auth(key),
                               json={"lat": POINT[0], "lon": POINT[1]})
    assert r.status == 409
    secret = await create_agency(stack.client, call_types={"Cardiac Arrest": "cardiac_arrest"})
    token = await _responder(stack, POINT[0])
    # Fifteen minutes later the position is forgotten.
    await stack.redis.zadd(keys.RESPONDERS_SEEN, {
        m: time.time() - 16 * 60 for m in await stack.redis.zrange(keys.RESPONDERS_SEEN, 0, -1)})
    doc = incident("CA3", call_type="Cardiac Arrest")
    doc["location"]["kind"] = "public"
    await post(stack.client, secret, doc)
    await stack.drained()
    assert token not in {d.token for d in stack.apns.deliveries}
    assert await stack.redis.zcard(keys.RESPONDERS_GEO) == 0
