"""Alert lifecycle and reach, end to end: updates when an incident ends, severity on
the phone, near-me, neighbourhoods, and responders' answers."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from server import keys
from server.store import positions
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import (
    FAR_POINT,
    FIXTURES,
    POINT,
    circle,
    create_agency,
    create_device,
    create_responder,
    create_user,
    fcm_token,
    fresh_times,
    incident,
    iso,
    sign_in,
    signed,
)
from tests.helpers import post_incident as post

# FCM-shaped tokens (registration refuses any other), one per scenario.
TOKEN_FCM_LIFECYCLE_ANDROID = fcm_token()
TOKEN_FCM_SEVERITY = fcm_token()
TOKEN_FCM_RESPONDER = fcm_token()
TOKEN_FCM_MANUAL = fcm_token()

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SEATTLE_MCPP = (Path(__file__).parents[2] / "server" / "examples"
                / "seattle-police-mcpp-areas.geojson")

SHARDS = keys.DEFAULT_PUSH_STREAM_SHARDS


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _revision(doc: dict[str, Any], seconds: int, **changes: Any) -> dict[str, Any]:
    updated = dt.datetime.fromisoformat(doc["updated_at"].replace("Z", "+00:00"))
    return {**doc, "updated_at": iso(updated + dt.timedelta(seconds=seconds)), **changes}


def _apns_to(stack: Stack, token: str) -> list[dict[str, Any]]:
    return [{"headers": d.headers, **d.payload} for d in stack.apns.deliveries
            if d.token == token]


def _fcm_to(stack: Stack, token: str) -> list[dict[str, Any]]:
    return [d.message for d in stack.fcm.deliveries if d.token == token]


async def _second_pass_now(stack: Stack) -> None:
    """Bring the matcher's delayed second pass of updates forward and wait for it."""
    await stack.pool.execute("UPDATE outbox SET created_at = now() - interval '1 min'")
    await wait_for(lambda: stack.pool.fetchval("SELECT count(*) = 0 FROM outbox"),
                   what="the second pass to be published")
    await stack.drained()


async def test_clear_sends_one_passive_update_to_exactly_the_devices_alerted(
    stack: Stack
) -> None:
    secret = await create_agency(stack.client)
    iphone = secrets.token_hex(32)
    android = TOKEN_FCM_LIFECYCLE_ANDROID
    not_subscribed = secrets.token_hex(32)
    await create_device(stack.client, "apns", iphone, circle(*POINT, 1000))
    await create_device(stack.client, "fcm", android, circle(*POINT, 1000))
    device, key = await create_device(stack.client, "apns", not_subscribed, circle(*POINT, 1000))
    await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                           json={"categories": ["shooting"]})
    doc = incident("LC1")
    _, accepted = await post(stack.client, secret, doc)
    incident_id = accepted["incident_id"]
    await wait_for(lambda: len(stack.apns.deliveries) + len(stack.fcm.deliveries) == 2,
                   what="the two alerts")
    # A device that would match now, but never got the alert, gets no update either.
    late = secrets.token_hex(32)
    await create_device(stack.client, "apns", late, circle(*POINT, 1000))
    # The hourly limit is spent: updates count against nobody's.
    for platform_device in await stack.pool.fetch("SELECT id FROM devices"):
        device_id = str(platform_device["id"])
        await stack.redis.set(keys.device_rate(device_id, keys.device_shard(device_id, SHARDS)),
                              10)

    cleared = _revision(doc, 60, status="cleared")
    status, body = await post(stack.client, secret, cleared)
    assert (status, body["decision"]) == (202, "suppressed:cleared")
    await wait_for(lambda: len(stack.apns.deliveries) + len(stack.fcm.deliveries) == 4,
                   what="the two updates")
    # The CAD repeats the clear: the same revision, a newer one, and a cancel after it.
    await post(stack.client, secret, cleared)
    await post(stack.client, secret, _revision(doc, 90, status="cleared"))
    await post(stack.client, secret, _revision(doc, 120, status="cancelled"))
    await stack.drained()
    await _second_pass_now(stack)

    [alert, update] = _apns_to(stack, iphone)
    assert update["headers"]["apns-collapse-id"] == alert["headers"]["apns-collapse-id"] \
        == incident_id
    assert update["headers"]["apns-priority"] == "5"
    assert update["aps"]["interruption-level"] == "passive"
    assert "sound" not in update["aps"] and alert["aps"]["sound"] == "default"
    # Cleared 90 s after it occurred: "1 minute", singular.
    assert update["aps"]["alert"] == {"title": "Structure fire nearby — cleared",
                                      "body": "Cleared 1 minute after it was reported"}
    assert update["incident"]["status"] == "cleared"

    [fcm_alert, fcm_update] = _fcm_to(stack, android)
    assert fcm_alert["android"]["priority"] == "HIGH"
    assert fcm_update["android"]["priority"] == "NORMAL"
    assert fcm_update["android"]["collapse_key"] == incident_id
    assert fcm_update["android"]["notification"] == {"tag": incident_id,
                                                     "channel_id": "geopush_updates"}
    assert fcm_update["data"]["kind"] == "update" and fcm_update["data"]["status"] == "cleared"

    assert _apns_to(stack, not_subscribed) == [] and _apns_to(stack, late) == []
    assert await stack.pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE kind = 'update' AND outcome = 'sent'") == 2
    # Not counted: the rate counters stay where they were.
    # One GET a key: devices of several shards are in several slots (a cluster's MGET
    # takes one slot's keys).
    assert {int(await stack.redis.get(keys.device_rate(str(r["id"]),
                                                       keys.device_shard(r["id"], SHARDS))))
            for r in await stack.pool.fetch("SELECT id FROM devices")} == {10}


async def test_an_alert_in_flight_when_the_clear_came_gets_its_update_on_the_second_pass(
    stack: Stack
) -> None:
    secret = await create_agency(stack.client)
    token = secrets.token_hex(32)
    device, _ = await create_device(stack.client, "apns", token, circle(*POINT, 1000))
    doc = incident("LC2")
    await post(stack.client, secret, doc)
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the alert")
    await stack.drained()
    # As if the alert's delivery were recorded only after the first pass looked.
    sent = await stack.pool.fetch("DELETE FROM deliveries RETURNING *")
    await post(stack.client, secret, _revision(doc, 60, status="cancelled"))
    await stack.drained()
    assert len(stack.apns.deliveries) == 1
    await stack.pool.executemany(
        "INSERT INTO deliveries (incident_id, device_id, platform, outcome, kind) "
        "VALUES ($1, $2, $3, $4, $5)",
        [(r["incident_id"], r["device_id"], r["platform"], r["outcome"], r["kind"])
         for r in sent])
    await _second_pass_now(stack)
    [_, update] = _apns_to(stack, token)
    assert update["aps"]["alert"]["title"] == "Structure fire nearby — cancelled"
    assert str(sent[0]["device_id"]) == device


async def test_an_agency_can_turn_updates_off_for_a_category(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    r = await stack.client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN,
                                 json={"no_update_categories": ["structure_fire"]})
    assert r.status == 200 and (await r.json())["no_update_categories"] == ["structure_fire"]
    r = await stack.client.patch("/v1/admin/agencies/seattle-fire", headers=ADMIN,
                                 json={"no_update_categories": ["medical"]})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "no_update_categories"
    token = secrets.token_hex(32)
    await create_device(stack.client, "apns", token, circle(*POINT, 1000))
    doc = incident("LC3")
    await post(stack.client, secret, doc)
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the alert")
    await post(stack.client, secret, _revision(doc, 60, status="cleared"))
    await stack.drained()
    await _second_pass_now(stack)
    assert len(stack.apns.deliveries) == 1


async def test_severity_fields_per_category_on_both_platforms(stack: Stack) -> None:
    secret = await create_agency(stack.client, call_types={
        "Scenes Of Violence 7": "shooting", "Fire in Building": "structure_fire",
        "459": "burglary"})
    iphone = secrets.token_hex(32)
    await create_device(stack.client, "apns", iphone, circle(*POINT, 3000))
    await create_device(stack.client, "fcm", TOKEN_FCM_SEVERITY, circle(*POINT, 3000))
    for n, call_type in enumerate(("Scenes Of Violence 7", "Fire in Building", "459")):
        await post(stack.client, secret,
                   incident(f"SV{n}", call_type=call_type, lat=POINT[0] + 0.003 * n))
    await wait_for(lambda: len(stack.apns.deliveries) + len(stack.fcm.deliveries) == 6,
                   what="three alerts on each platform")
    apns = {p["incident"]["category"]: p["aps"] for p in _apns_to(stack, iphone)}
    assert {c: (a["interruption-level"], a["relevance-score"]) for c, a in apns.items()} == {
        "shooting": ("time-sensitive", 0.9), "structure_fire": ("active", 0.6),
        "burglary": ("active", 0.4)}
    fcm = {m["data"]["category"]: m["android"] for m in _fcm_to(stack, TOKEN_FCM_SEVERITY)}
    assert {c: (a["notification"]["channel_id"], a["priority"]) for c, a in fcm.items()} == {
        "shooting": ("geopush_severe", "HIGH"), "structure_fire": ("geopush_alerts", "HIGH"),
        "burglary": ("geopush_alerts", "HIGH")}


async def _near_me_device(stack: Stack, token: str, radius_m: int | None,
                          at: tuple[float, float] | None,
                          zone: dict[str, Any] | None = None) -> tuple[str, str]:
    device, key = await create_device(stack.client, "apns", token, zone)
    prefs: dict[str, Any] = {"near_me": {"radius_m": radius_m} if radius_m else None}
    r = await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                               json=prefs)
    assert r.status == 200, await r.text()
    if at is not None:
        r = await stack.client.put(f"/v1/devices/{device}/location", headers=auth(key),
                                   json={"lat": at[0], "lon": at[1]})
        assert r.status == (204 if radius_m else 409), await r.text()
    return device, key


async def _positioned(stack: Stack, device: str) -> bool:
    """Whether Redis holds a near-me position of the device, in any band."""
    return any([await stack.redis.geopos(key, device) != [None]
                for key in positions.near_me(0).geo_keys])


async def test_near_me_alerts_where_the_phone_is_once_and_forgets_after_the_ttl(
    stack: Stack
) -> None:
    secret = await create_agency(stack.client)
    near, far, both, off = (secrets.token_hex(32) for _ in range(4))
    near_id, _ = await _near_me_device(stack, near, 1000, (POINT[0] + 0.005, POINT[1]))  # 560 m
    await _near_me_device(stack, far, 300, (POINT[0] + 0.005, POINT[1]))              # too far
    # Its home zone and its current position both match: one push.
    both_id, both_key = await _near_me_device(stack, both, 2000, (POINT[0] + 0.001, POINT[1]),
                                              zone=circle(*POINT, 1000))
    await _near_me_device(stack, off, None, POINT)          # no near_me: 409, not kept
    r = await stack.client.put(f"/v1/devices/{near_id}/preferences",
                               headers={"Authorization": "Bearer wrong"}, json={})
    assert r.status == 401
    await post(stack.client, secret, incident("NM1"))
    await wait_for(lambda: len(stack.apns.deliveries) == 2, what="two near-me alerts")
    await stack.drained()
    assert sorted(d.token for d in stack.apns.deliveries) == sorted([near, both])
    assert await stack.redis.zscore(keys.NEAR_ME_SEEN, near_id) is not None

    # Two hours without a report (GEOPUSH_LOCATION_TTL_MINUTES=120): forgotten.
    await stack.redis.zadd(keys.NEAR_ME_SEEN, {near_id: time.time() - 121 * 60})
    stack.apns.clear()
    await post(stack.client, secret, incident("NM2", lat=POINT[0] + 0.0002))
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the zone's alert")
    await stack.drained()
    assert [d.token for d in stack.apns.deliveries] == [both]
    assert not await _positioned(stack, near_id)

    # Turning near_me off forgets the position at once.
    assert await stack.redis.zscore(keys.NEAR_ME_SEEN, both_id) is not None
    r = await stack.client.put(f"/v1/devices/{both_id}/preferences", headers=auth(both_key),
                               json={"near_me": None})
    assert r.status == 200 and (await r.json())["near_me"] is None
    assert await stack.redis.zscore(keys.NEAR_ME_SEEN, both_id) is None
    assert not await _positioned(stack, both_id)
    r = await stack.client.put(f"/v1/devices/{both_id}/preferences", headers=auth(both_key),
                               json={"near_me": {"radius_m": 200}})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "near_me.radius_m"

    # Erasing a device forgets its position too.
    r = await stack.client.put(f"/v1/devices/{both_id}/preferences", headers=auth(both_key),
                               json={"near_me": {"radius_m": 300}})
    r = await stack.client.put(f"/v1/devices/{both_id}/location", headers=auth(both_key),
                               json={"lat": POINT[0], "lon": POINT[1]})
    assert r.status == 204 and await stack.redis.zscore(keys.NEAR_ME_SEEN, both_id) is not None
    r = await stack.client.delete(f"/v1/devices/{both_id}", headers=auth(both_key))
    assert r.status == 204
    assert await stack.redis.zscore(keys.NEAR_ME_SEEN, both_id) is None
    assert not await _positioned(stack, both_id)


async def test_a_wider_near_me_radius_reaches_further_without_a_new_report(
    stack: Stack
) -> None:
    """Positions are searched in bands of radii: a device that widens its radius is
    searched for as far as the new one at once, its last position moved to the new
    band (and one that narrows it, no further than the new one)."""
    secret = await create_agency(stack.client)
    token = secrets.token_hex(32)
    device, key = await _near_me_device(stack, token, 500, (POINT[0] + 0.027, POINT[1]))  # 3 km
    await post(stack.client, secret, incident("NMB1"))
    await stack.drained()
    assert stack.apns.deliveries == []
    r = await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                               json={"near_me": {"radius_m": 4000}})
    assert r.status == 200
    await post(stack.client, secret, incident("NMB2", lat=POINT[0] + 0.0002))
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the wider radius's alert")
    assert [d.token for d in stack.apns.deliveries] == [token]
    assert await _positioned(stack, device)
    r = await stack.client.put(f"/v1/devices/{device}/preferences", headers=auth(key),
                               json={"near_me": {"radius_m": 1000}})
    assert r.status == 200
    stack.apns.clear()
    await post(stack.client, secret, incident("NMB3", lat=POINT[0] + 0.0004))
    await stack.drained()
    assert stack.apns.deliveries == []


async def test_a_neighbourhood_zone_alerts_and_reimports_keep_ids(stack: Stack) -> None:
    geojson = SEATTLE_MCPP.read_bytes()
    url = "/v1/admin/neighbourhoods?name_property=NAME&source=seattle-mcpp"
    headers = {**ADMIN, "Content-Type": "application/geo+json"}
    r = await stack.client.post(url, data=geojson, headers=headers)
    assert r.status == 200, await r.text()
    first = await r.json()
    assert (first["imported"], first["created"]) == (61, 61)
    r = await stack.client.post(url, data=geojson, headers=headers)
    again = await r.json()
    assert again["created"] == 0
    assert {n["id"] for n in again["neighbourhoods"]} == {n["id"] for n in first["neighbourhoods"]}

    r = await stack.client.get(f"/v1/neighbourhoods?lat={POINT[0]}&lon={POINT[1]}")
    [university] = (await r.json())["neighbourhoods"]
    assert university["name"] == "University"
    r = await stack.client.get(f"/v1/neighbourhoods/{university['id']}")
    assert r.status == 200 and (await r.json())["geometry"]["type"] == "MultiPolygon"
    r = await stack.client.get("/v1/neighbourhoods?lat=91&lon=0")
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "lat"
    assert (await stack.client.get("/v1/neighbourhoods/nope")).status == 404

    secret = await create_agency(stack.client)
    inside, elsewhere = secrets.token_hex(32), secrets.token_hex(32)
    await create_device(stack.client, "apns", inside,
                        {"name": "My neighbourhood", "neighbourhood": university["id"]})
    r = await stack.client.get(f"/v1/neighbourhoods?lat={FAR_POINT[0]}&lon={FAR_POINT[1]}")
    [brighton] = (await r.json())["neighbourhoods"]
    assert brighton["name"] == "Brighton/Dunlap"
    await create_device(stack.client, "apns", elsewhere,
                        {"name": "Work", "neighbourhood": brighton["id"]})
    device, key = await create_device(stack.client, "apns", secrets.token_hex(32))
    r = await stack.client.put(f"/v1/devices/{device}/zones", headers=auth(key), json={
        "zones": [{"name": "x", "neighbourhood": "00000000-0000-0000-0000-000000000000"}]})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "zones[0].neighbourhood"

    await post(stack.client, secret, incident("NB1"))
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the neighbourhood's alert")
    await stack.drained()
    assert [d.token for d in stack.apns.deliveries] == [inside]


@pytest.mark.workers("matcher", "apns", "fcm")
async def test_responders_answers_are_counted_and_their_push_carries_the_actions(
    stack: Stack
) -> None:
    secret = await create_agency(stack.client, call_types={"Cardiac Arrest": "cardiac_arrest"})
    devices = []
    for platform, token in (("apns", secrets.token_hex(32)), ("fcm", TOKEN_FCM_RESPONDER),
                            ("apns", secrets.token_hex(32))):
        device, key = await create_responder(stack.client, platform, token,
                                             (POINT[0] + 0.001, POINT[1]))
        devices.append((device, key, token))
    bystander, bystander_key = await create_device(stack.client, "apns", secrets.token_hex(32),
                                                   circle(*POINT, 1000))
    doc = incident("CPR1", call_type="Cardiac Arrest")
    doc["location"]["kind"] = "public"
    _, accepted = await post(stack.client, secret, doc)
    incident_id = accepted["incident_id"]
    await wait_for(lambda: len(stack.apns.deliveries) + len(stack.fcm.deliveries) == 3,
                   what="three responder pushes")
    await stack.drained()
    ios = stack.apns.deliveries[0].payload
    assert ios["aps"]["category"] == "GEOPUSH_RESPONDER"
    assert ios["aps"]["interruption-level"] == "time-sensitive"
    assert ios["incident"]["actions"] == ["responding", "on_scene", "declined"]
    [android] = _fcm_to(stack, TOKEN_FCM_RESPONDER)
    assert android["data"]["actions"] == "responding,on_scene,declined"
    assert android["android"]["notification"]["channel_id"] == "geopush_severe"

    url = f"/v1/devices/{{}}/alerts/{incident_id}/response"
    answers = ("responding", "on_scene", "declined")
    for (device, key, _), status in zip(devices, answers, strict=True):
        # The latest answer counts.
        for answer in ("declined", status):
            r = await stack.client.post(url.format(device), headers=auth(key),
                                        json={"status": answer})
            assert r.status == 200 and (await r.json())["status"] == answer
    r = await stack.client.post(url.format(bystander), headers=auth(bystander_key),
                                json={"status": "responding"})
    assert r.status == 403
    r = await stack.client.post(url.format(devices[0][0]), headers=auth(devices[0][1]),
                                json={"status": "maybe"})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "status"
    r = await stack.client.post(url.format(devices[0][0]), headers=auth(bystander_key),
                                json={"status": "responding"})
    assert r.status == 401

    r = await stack.client.get(f"/v1/admin/incidents/{incident_id}/responders", headers=ADMIN)
    assert await r.json() == {"incident_id": incident_id, "agency_id": "seattle-fire",
                              "alerted": 3, "responding": 1, "on_scene": 1, "declined": 1}
    r = await stack.client.get(f"/v1/admin/incidents/{incident_id}/responders")
    assert r.status == 401

    # The agency's admins see them in the console; its editors may not, other agencies'
    # users don't even see the incident.
    await create_agency(stack.client, "seattle-police")
    for username, agency, role, expected in (("sfd-editor", "seattle-fire", "editor", 403),
                                             ("spd-admin", "seattle-police", "agency_admin",
                                              404),
                                             ("sfd-admin", "seattle-fire", "agency_admin",
                                              200)):
        stack.client.session.cookie_jar.clear()
        await create_user(stack.client, agency, username, role)
        await sign_in(stack.client, username)
        r = await stack.client.get(f"/v1/admin/incidents/{incident_id}/responders")
        assert r.status == expected, (username, await r.text())
        listed = await stack.client.get(
            f"/v1/admin/agencies/{agency}/responder-answers")
        assert listed.status == (200 if role == "agency_admin" else 403)
    assert (await r.json())["on_scene"] == 1
    # The console's Responders page: the agency's CPR calls of the day, public place only.
    [row] = (await listed.json())["incidents"]
    assert row == {"incident_id": incident_id, "category": "cardiac_arrest",
                   "public_location": row["public_location"],
                   "received_at": row["received_at"], "alerted": 3, "responding": 1,
                   "on_scene": 1, "declined": 1}
    assert "5312" not in json.dumps(row)
    r = await stack.client.get("/v1/admin/agencies/seattle-police/responder-answers")
    assert r.status == 404


async def _recorded(stack: Stack, sent: int) -> None:
    async def done() -> bool:
        return bool(await stack.pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE outcome = 'sent'") >= sent)

    await wait_for(done, what=f"{sent} sent pushes recorded")


async def _post_as(stack: Stack, secret: str, body: str, content_type: str
                   ) -> dict[str, Any]:
    data = body.encode()
    r = await stack.client.post("/v1/agencies/seattle-fire/incidents", data=data,
                                headers={**signed(secret, data), "Content-Type": content_type})
    assert r.status == 202, await r.text()
    answer: dict[str, Any] = await r.json()
    return answer


async def test_cap_all_clear_and_eido_cancel_send_the_update(stack: Stack) -> None:
    secret = await create_agency(stack.client, call_types={
        "Fire in Building": "structure_fire", "Law-Shooting": "shooting"})
    near_cap = secrets.token_hex(32)
    near_eido = secrets.token_hex(32)
    await create_device(stack.client, "apns", near_cap, circle(*POINT, 1000))
    await create_device(stack.client, "apns", near_eido, circle(47.61085, -122.33857, 1000))
    alert, all_clear = fresh_times(*((FIXTURES / "cap" / f).read_text()
                                for f in ("fire_circle.xml", "all_clear.xml")))
    first = await _post_as(stack, secret, alert, "application/cap+xml")
    await wait_for(lambda: len(_apns_to(stack, near_cap)) == 1, what="the CAP alert")
    # Recorded as delivered, so the clear's first pass finds it (an alert still in
    # flight gets its update on the second pass, 30 s later: another test).
    await _recorded(stack, 1)
    cleared = await _post_as(stack, secret, all_clear, "application/cap+xml")
    assert cleared["incident_id"] == first["incident_id"]
    assert cleared["decision"] == "suppressed:cleared"
    await wait_for(lambda: len(_apns_to(stack, near_cap)) == 2, what="the CAP update")
    update = _apns_to(stack, near_cap)[1]
    # onset 04:18, all clear sent 04:50 (the fixtures' times, moved to now).
    assert update["aps"]["alert"] == {"title": "Structure fire nearby — cleared",
                                      "body": "Cleared 32 minutes after it was reported"}

    [shooting] = fresh_times((FIXTURES / "eido" / "circle.json").read_text())
    doc = json.loads(shooting)
    await _post_as(stack, secret, json.dumps(doc), "application/eido+json")
    await wait_for(lambda: len(_apns_to(stack, near_eido)) == 1, what="the EIDO alert")
    await _recorded(stack, 3)
    doc["lastUpdateTimeStamp"] = iso(dt.datetime.now(dt.UTC))
    doc["incidentComponent"][0]["incidentStatusCommonRegistryText"] = "Cancelled"
    await _post_as(stack, secret, json.dumps(doc), "application/eido+json")
    await wait_for(lambda: len(_apns_to(stack, near_eido)) == 2, what="the EIDO update")
    eido_update = _apns_to(stack, near_eido)[1]
    assert eido_update["aps"]["alert"]["title"] == "Shooting nearby — cancelled"
    assert eido_update["aps"]["interruption-level"] == "passive"
    await stack.drained()
    assert len(stack.apns.deliveries) == 4


# A 2 km x 2 km square around POINT.
SQUARE = {"type": "Polygon", "coordinates": [[
    [POINT[1] - 0.0133, POINT[0] - 0.009], [POINT[1] + 0.0133, POINT[0] - 0.009],
    [POINT[1] + 0.0133, POINT[0] + 0.009], [POINT[1] - 0.0133, POINT[0] + 0.009],
    [POINT[1] - 0.0133, POINT[0] - 0.009]]]}


@pytest.mark.apns_critical_alerts
async def test_an_extreme_manual_alert_is_critical_with_the_entitlement_and_reaches_near_me(
    stack: Stack
) -> None:
    await create_agency(stack.client)
    # No zone: only its current position, in the square's north-east corner, ~1.3 km
    # from the centre, 300 m radius.
    inside, _ = await _near_me_device(stack, secrets.token_hex(32), 300,
                                      (POINT[0] + 0.0085, POINT[1] + 0.0128))
    await _near_me_device(stack, secrets.token_hex(32), 300, (POINT[0] + 0.02, POINT[1]))
    await create_device(stack.client, "fcm", TOKEN_FCM_MANUAL, circle(*POINT, 500))
    # The editor's preview counts the phone inside by where it is, as delivery reaches it.
    r = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts/preview",
                                headers=ADMIN, json={"area": SQUARE})
    assert (await r.json()) == {"devices": 2}
    for severity, n in (("extreme", 2), ("moderate", 4)):
        r = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts", headers=ADMIN,
                                    json={"title": "Gas leak", "body": "Leave the area now.",
                                          "area": SQUARE, "severity": severity,
                                          "expires_in_minutes": 60})
        assert r.status == 201, await r.text()
        assert (await r.json())["audience"] == 2
        await wait_for(lambda n=n: len(stack.apns.deliveries) + len(stack.fcm.deliveries) == n,
                       what=f"the {severity} alert on both phones")
    await stack.drained()
    [extreme, moderate] = [d.payload["aps"] for d in stack.apns.deliveries]
    assert stack.apns.deliveries[0].token == \
        await stack.pool.fetchval("SELECT token FROM devices WHERE id = $1::uuid", inside)
    assert extreme["interruption-level"] == "critical"
    assert extreme["sound"] == {"critical": 1, "name": "default", "volume": 1.0}
    assert moderate["interruption-level"] == "active" and moderate["sound"] == "default"
    channels = [m.message["android"]["notification"]["channel_id"]
                for m in stack.fcm.deliveries]
    assert channels == ["geopush_severe", "geopush_alerts"]
