"""One incident from a signed CAD webhook to the phones, through every real component."""

from __future__ import annotations

import datetime as dt
import json
import secrets

from tests.e2e.conftest import Stack, wait_for
from tests.helpers import (
    FAR_POINT,
    POINT,
    circle,
    create_agency,
    create_device,
    fcm_token,
    incident,
)
from tests.helpers import post_incident as post

PRIVATE = ("5312", "Apt 4B", "John Q Caller", "555 0147", "Jane Roe", "smoke", "elderly")


async def test_alert_reaches_devices_in_zone_once_and_nothing_else(stack: Stack) -> None:
    client = stack.client
    secret = await create_agency(client)
    apns_token, fcm_tok, far_token = secrets.token_hex(32), fcm_token(), secrets.token_hex(32)
    apns_dev, _ = await create_device(client, "apns", apns_token, circle(*POINT, 800))
    fcm_dev, _ = await create_device(client, "fcm", fcm_tok,
                                     circle(POINT[0] + 0.004, POINT[1], 1000))
    await create_device(client, "apns", far_token, circle(*FAR_POINT, 1000))

    doc = incident()
    status, accepted = await post(client, secret, doc)
    assert (status, accepted["decision"], accepted["duplicate"]) == (202, "alert", False)
    incident_id = accepted["incident_id"]

    await wait_for(lambda: len(stack.apns.deliveries) >= 1 and len(stack.fcm.deliveries) >= 1,
                   what="both pushes")
    await stack.drained()

    # APNs: the contract's headers and payload.
    [apns] = stack.apns.deliveries
    occurred = dt.datetime.fromisoformat(doc["occurred_at"].replace("Z", "+00:00"))
    assert apns.token == apns_token
    assert apns.headers["apns-collapse-id"] == incident_id
    assert apns.headers["apns-push-type"] == "alert"
    assert apns.headers["apns-priority"] == "10"
    assert int(apns.headers["apns-expiration"]) == int(occurred.timestamp()) + 3600
    aps = apns.payload["aps"]
    assert aps["alert"]["title"] == "Structure fire nearby"
    assert aps["alert"]["body"] == "3 min. ago · 5300 block of 24th Ave NE"
    # A structure fire is an alert like most: "active"; the most severe are time-sensitive.
    assert aps["interruption-level"] == "active"
    assert apns.payload["incident"]["id"] == incident_id
    assert apns.payload["incident"]["category"] == "structure_fire"
    assert apns.payload["incident"]["area"] == {"lat": 47.667, "lon": -122.302,
                                                "location": "5300 block of 24th Ave NE"}

    # FCM v1: the same content, high priority, collapse key, TTL to the same expiry.
    [fcm] = stack.fcm.deliveries
    message = fcm.message
    assert message["token"] == fcm_tok
    assert message["notification"] == {"title": "Structure fire nearby",
                                       "body": "3 min. ago · 5300 block of 24th Ave NE"}
    assert message["android"]["priority"] == "HIGH"
    assert message["android"]["collapse_key"] == incident_id
    ttl = int(message["android"]["ttl"].rstrip("s"))
    assert abs((fcm.arrived_at + ttl) - (occurred.timestamp() + 3600)) < 5
    assert message["data"]["incident_id"] == incident_id

    # The far device got nothing; nothing private left the building.
    assert all(d.token != far_token for d in stack.apns.deliveries)
    wire = json.dumps([d.payload for d in stack.apns.deliveries]) + json.dumps(
        [d.message for d in stack.fcm.deliveries])
    for value in PRIVATE:
        assert value not in wire, value

    # Every outcome is recorded, with its latency from arrival to gateway acceptance.
    rows = await stack.pool.fetch(
        "SELECT device_id::text, platform, outcome, latency_ms FROM deliveries ORDER BY platform")
    assert [(r["device_id"], r["platform"], r["outcome"]) for r in rows] == [
        (apns_dev, "apns", "sent"), (fcm_dev, "fcm", "sent")]
    assert all(r["latency_ms"] is not None and r["latency_ms"] >= 0 for r in rows)

    # The same webhook again: a duplicate, and nothing new is sent.
    status, again = await post(client, secret, doc)
    assert (status, again["duplicate"], again["incident_id"]) == (202, True, incident_id)
    # A non-alertable category and a two-hour-old incident at the same point: nothing.
    _, medical = await post(client, secret, incident("F2", call_type="Aid Response"))
    _, stale = await post(client, secret, incident("F3", minutes_ago=120))
    assert (medical["decision"], stale["decision"]) == ("suppressed:category", "suppressed:stale")
    await stack.drained()
    assert len(stack.apns.deliveries) == 1 and len(stack.fcm.deliveries) == 1


async def test_category_preferences_and_token_gone(stack: Stack) -> None:
    client = stack.client
    secret = await create_agency(client)
    burglary_only, key = await create_device(client, "apns", secrets.token_hex(32),
                                             circle(*POINT, 500))
    r = await client.put(f"/v1/devices/{burglary_only}/preferences",
                         json={"categories": ["burglary"]},
                         headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200
    gone_token = secrets.token_hex(32)
    gone_dev, gone_key = await create_device(client, "apns", gone_token, circle(*POINT, 500))
    stack.apns.mark_unregistered([gone_token])

    await post(client, secret, incident())
    await wait_for(lambda: stack.pool.fetchval("SELECT count(*) = 1 FROM deliveries"),
                   what="the delivery record")
    await stack.drained()
    assert stack.apns.deliveries == []  # the unregistered token was refused, not delivered
    row = await stack.pool.fetchrow("SELECT outcome, reason, status_code FROM deliveries")
    assert dict(row) == {"outcome": "token_gone", "reason": "Unregistered", "status_code": 410}
    disabled = await stack.pool.fetchval(
        "SELECT token_disabled_at IS NOT NULL FROM devices WHERE id = $1::uuid", gone_dev)
    assert disabled

    # A disabled token is never used again; a new one brings the device back.
    await post(client, secret, incident("F9"))
    await stack.drained()
    assert await stack.pool.fetchval("SELECT count(*) FROM deliveries") == 1

    new_token = secrets.token_hex(32)
    r = await client.put(f"/v1/devices/{gone_dev}/token", json={"token": new_token},
                         headers={"Authorization": f"Bearer {gone_key}"})
    assert r.status == 204
    await post(client, secret, incident("F10"))
    await wait_for(lambda: len(stack.apns.deliveries) == 1, what="push to the new token")
    assert stack.apns.deliveries[0].token == new_token
