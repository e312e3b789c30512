"""Incident lifecycle, cross-agency dedup and editorial review, end to end."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, circle, create_agency, create_device, incident, iso, queued
from tests.helpers import post_incident as post

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _phone(stack: Stack) -> str:
    token = secrets.token_hex(32)
    await create_device(stack.client, "apns", token, circle(*POINT, 1000))
    return token


def _revision(doc: dict[str, Any], seconds: int, **changes: Any) -> dict[str, Any]:
    updated = dt.datetime.fromisoformat(doc["updated_at"].replace("Z", "+00:00"))
    return {**doc, "updated_at": iso(updated + dt.timedelta(seconds=seconds)), **changes}


@pytest.mark.workers("matcher")
async def test_clearing_before_the_push_went_out_drops_it(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    await _phone(stack)
    doc = incident()
    await post(stack.client, secret, doc)
    await wait_for(lambda: queued(stack.redis, "apns"), what="a queued push")

    status, cleared = await post(stack.client, secret, _revision(doc, 30, status="cleared"))
    assert (status, cleared["decision"]) == (202, "suppressed:cleared")

    stack.start_worker("apns")  # the sender only now gets to the queued push
    await wait_for(lambda: stack.pool.fetchval("SELECT count(*) = 1 FROM deliveries"),
                   what="the withdrawn delivery record")
    await stack.drained()
    assert stack.apns.deliveries == []
    assert await stack.pool.fetchval("SELECT outcome FROM deliveries") == "withdrawn"


async def test_update_into_an_alertable_category_alerts_then(stack: Stack) -> None:
    secret = await create_agency(stack.client)
    await _phone(stack)
    doc = incident(call_type="Aid Response")
    _, first = await post(stack.client, secret, doc)
    assert first["decision"] == "suppressed:category"
    _, raised = await post(stack.client, secret,
                           _revision(doc, 45, call_type="Scenes Of Violence 7"))
    assert raised["decision"] == "alert" and raised["incident_id"] == first["incident_id"]
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the raised alert")
    assert stack.apns.deliveries[0].payload["aps"]["alert"]["title"] == "Shooting nearby"


async def test_two_agencies_reporting_one_event_alert_each_device_once(stack: Stack) -> None:
    fire = await create_agency(stack.client)
    police = await create_agency(stack.client, "seattle-police")
    await _phone(stack)
    await post(stack.client, fire, incident("F1"))
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the first alert")
    # 60 m away, 2 minutes later, same category: the same fire.
    await post(stack.client, police, incident("P1", lat=POINT[0] + 0.0005, minutes_ago=1),
               agency_id="seattle-police")
    # 600 m away: another fire.
    await post(stack.client, police, incident("P2", lat=POINT[0] + 0.0055),
               agency_id="seattle-police")
    await stack.drained()
    await wait_for(lambda: len(stack.apns.deliveries) == 2, what="the second, distinct fire")
    await stack.drained()
    assert len(stack.apns.deliveries) == 2


async def test_review_approve_with_edits_reject_and_expiry(stack: Stack) -> None:
    secret = await create_agency(stack.client, review=True)
    token = await _phone(stack)
    narrative = "Caller Ann Example 206-555-0199 ann@example.com reports flames"
    _, a = await post(stack.client, secret, incident("A1", narrative=narrative))
    _, b = await post(stack.client, secret, incident("B1"))
    _, c = await post(stack.client, secret, incident("C1"))
    assert a["decision"] == b["decision"] == "review"

    r = await stack.client.get("/v1/admin/review", headers=ADMIN)
    items = {i["incident_id"]: i for i in (await r.json())["items"]}
    assert set(items) == {a["incident_id"], b["incident_id"], c["incident_id"]}
    item = items[a["incident_id"]]
    assert item["narrative"] == "Caller Ann Example [phone] [email] reports flames"
    assert item["proposed"]["title"] == "Structure fire nearby"
    assert item["location"]["public"] == "5300 block of 24th Ave NE"
    await stack.drained()
    assert stack.apns.deliveries == []  # nothing goes out while under review

    r = await stack.client.post(f"/v1/admin/review/{a['incident_id']}/approve", headers=ADMIN,
                                json={"title": "Fire on 24th Ave NE",
                                      "body": "Crews on scene, avoid the area"})
    assert r.status == 200
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="the approved alert")
    [push] = stack.apns.deliveries
    assert push.token == token
    assert push.payload["aps"]["alert"] == {"title": "Fire on 24th Ave NE",
                                            "body": "Crews on scene, avoid the area"}
    # The narrative leaves with the decision.
    assert await stack.pool.fetchval(
        "SELECT narrative FROM review_items WHERE incident_id = $1::uuid", a["incident_id"]
    ) is None

    r = await stack.client.post(f"/v1/admin/review/{b['incident_id']}/reject", headers=ADMIN)
    assert r.status == 200
    r = await stack.client.post(f"/v1/admin/review/{b['incident_id']}/approve", headers=ADMIN)
    assert r.status == 409

    # Past the staleness window an item expires and can no longer be approved.
    await stack.pool.execute(
        "UPDATE review_items SET expires_at = now() - interval '1 s' WHERE incident_id = $1::uuid",
        c["incident_id"])
    from workers.maintenance import Retention, maintain_once

    await maintain_once(stack.pool, Retention())
    r = await stack.client.post(f"/v1/admin/review/{c['incident_id']}/approve", headers=ADMIN)
    assert r.status == 409
    assert await stack.pool.fetchval(
        "SELECT decision FROM incidents WHERE id = $1::uuid", c["incident_id"]
    ) == "suppressed:stale"
    await stack.drained()
    assert len(stack.apns.deliveries) == 1
    r = await stack.client.post("/v1/admin/review/not-a-uuid/approve", headers=ADMIN)
    assert r.status == 404
