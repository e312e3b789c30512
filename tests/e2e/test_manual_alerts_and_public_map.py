"""Manual alerts through the real pipeline, their CAP 1.2 feed (validated against the
OASIS schema), and the public incidents API."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from defusedxml import ElementTree as DefusedET

from server.formats.cap_feed import ATOM_NS, CAP_NS
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import (
    ADMIN_HEADERS,
    FAR_POINT,
    POINT,
    circle,
    create_agency,
    create_device,
    create_user,
    incident,
    post_incident,
    sign_in,
)

CAP_XSD = Path(__file__).resolve().parent.parent / "fixtures" / "cap" / "CAP-v1.2.xsd"

# A 2 km x 2 km square around POINT: its centre is POINT, its corners ~1.4 km away.
LAT, LON = POINT
SQUARE = {"type": "Polygon", "coordinates": [[
    [LON - 0.0133, LAT - 0.009], [LON + 0.0133, LAT - 0.009], [LON + 0.0133, LAT + 0.009],
    [LON - 0.0133, LAT + 0.009], [LON - 0.0133, LAT - 0.009]]]}


def _alert(**changes: Any) -> dict[str, Any]:
    return {"title": "Evacuate: gas leak", "body": "Leave the area north of NE 55th St now.",
            "area": SQUARE, "severity": "extreme", "expires_in_minutes": 90, **changes}


async def _phone(stack: Stack, lat: float, lon: float, radius: float = 150,
                 **extra: Any) -> str:
    token = secrets.token_hex(32)
    await create_device(stack.client, "apns", token, circle(lat, lon, radius), **extra)
    return token


async def test_a_manual_alert_reaches_every_zone_meeting_its_area_and_no_other(
        stack: Stack) -> None:
    await create_agency(stack.client)
    centre = await _phone(stack, LAT, LON)
    # A small zone just inside the square's north-east corner: ~1.3 km from the centre,
    # far past any rounding of a public point; a matcher that used a point instead of
    # the drawn area would miss it.
    corner = await _phone(stack, LAT + 0.0085, LON + 0.0128, 150)
    outside = await _phone(stack, *FAR_POINT)
    near_outside = await _phone(stack, LAT + 0.02, LON, 150)   # ~2.2 km north

    preview = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts/preview",
                                      headers=ADMIN_HEADERS, json={"area": SQUARE})
    assert (await preview.json()) == {"devices": 2}
    sent = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts",
                                   headers=ADMIN_HEADERS, json=_alert())
    assert sent.status == 201, await sent.text()
    body = await sent.json()
    assert body["audience"] == 2

    await wait_for(lambda: len(stack.apns.deliveries) == 2, what="both pushes")
    await stack.drained()
    assert {d.token for d in stack.apns.deliveries} == {centre, corner}
    assert not {outside, near_outside} & {d.token for d in stack.apns.deliveries}
    payload = stack.apns.deliveries[0].payload
    assert payload["aps"]["alert"] == {"title": "Evacuate: gas leak",
                                       "body": "Leave the area north of NE 55th St now."}
    assert payload["aps"]["interruption-level"] == "time-sensitive"
    assert payload["incident"]["severity"] == "extreme"
    assert stack.apns.deliveries[0].headers["apns-collapse-id"] == body["id"]


async def test_a_manual_alert_ignores_category_preferences_and_quiet_hours_unless_moderate(
        stack: Stack) -> None:
    await create_agency(stack.client)
    token = secrets.token_hex(32)
    device, device_secret = await create_device(stack.client, "apns", token,
                                                circle(LAT, LON, 300))
    always_quiet = {"categories": ["burglary"],
                    "quiet_hours": {"start": "00:00", "end": "23:59"}}
    resp = await stack.client.put(f"/v1/devices/{device}/preferences", json=always_quiet,
                                  headers={"Authorization": f"Bearer {device_secret}"})
    assert resp.status == 200, await resp.text()
    await stack.client.post("/v1/admin/agencies/seattle-fire/alerts", headers=ADMIN_HEADERS,
                            json=_alert(severity="moderate", title="Water main repair"))
    await stack.drained()
    assert stack.apns.deliveries == [] or _in_quiet_gap()
    await stack.client.post("/v1/admin/agencies/seattle-fire/alerts", headers=ADMIN_HEADERS,
                            json=_alert(severity="severe"))
    await wait_for(lambda: any(d.payload["aps"]["alert"]["title"] == "Evacuate: gas leak"
                               for d in stack.apns.deliveries), what="the severe alert")
    severe = [d for d in stack.apns.deliveries
              if d.payload["aps"]["alert"]["title"] == "Evacuate: gas leak"]
    assert severe[0].payload["aps"]["interruption-level"] == "time-sensitive"


def _in_quiet_gap() -> bool:
    """The device's quiet hours end at 23:59 local time: in that last minute a moderate
    alert is allowed through."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    return dt.datetime.now(ZoneInfo("America/Los_Angeles")).time() >= dt.time(23, 59)


async def test_alert_requests_are_validated_field_by_field(stack: Stack) -> None:
    await create_agency(stack.client)
    cases = [
        (_alert(severity="catastrophic"), "severity"),
        (_alert(title=""), "title"),
        (_alert(expires_in_minutes=0), "expires_in_minutes"),
        (_alert(area={"type": "Point", "coordinates": [LON, LAT]}), "area.type"),
        (_alert(area={"type": "Polygon", "coordinates": [[[LON, LAT], [LON + 1, LAT + 1],
                                                          [LON + 1, LAT], [LON, LAT + 1],
                                                          [LON, LAT]]]}), "area.coordinates"),
    ]
    for doc, field in cases:
        resp = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts",
                                       headers=ADMIN_HEADERS, json=doc)
        assert resp.status == 422, (field, await resp.text())
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["errors"][0]["field"] == field
    assert await stack.pool.fetchval("SELECT count(*) FROM manual_alerts") == 0


@pytest.mark.workers()
async def test_only_the_agencys_admins_send_alerts(stack: Stack) -> None:
    await create_agency(stack.client)
    await create_agency(stack.client, "seattle-police")
    await create_user(stack.client, "seattle-fire", "dana")                 # editor
    await create_user(stack.client, "seattle-police", "pat", "agency_admin")
    csrf = await sign_in(stack.client, "dana")
    refused = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts",
                                      headers=csrf, json=_alert())
    assert refused.status == 403
    await stack.client.delete("/v1/session", headers=csrf)
    csrf = await sign_in(stack.client, "pat")
    elsewhere = await stack.client.post("/v1/admin/agencies/seattle-fire/alerts",
                                        headers=csrf, json=_alert())
    assert elsewhere.status == 404
    own = await stack.client.post("/v1/admin/agencies/seattle-police/alerts",
                                  headers=csrf, json=_alert())
    assert own.status == 201
    audit = (await (await stack.client.get("/v1/admin/audit")).json())["entries"]
    assert (audit[0]["actor"], audit[0]["action"]) == ("pat", "alert.send")


@pytest.mark.workers()
async def test_the_cap_feed_is_valid_cap_1_2(stack: Stack) -> None:
    await create_agency(stack.client)
    for severity in ("extreme", "severe", "moderate"):
        resp = await stack.client.post(
            "/v1/admin/agencies/seattle-fire/alerts", headers=ADMIN_HEADERS,
            json=_alert(severity=severity, title=f"{severity} <&> test"))
        assert resp.status == 201
    feed = await stack.client.get("/v1/agencies/seattle-fire/alerts.atom")
    assert feed.status == 200 and feed.content_type == "application/atom+xml"
    root = DefusedET.fromstring(await feed.read())
    assert root.tag == f"{{{ATOM_NS}}}feed"
    entries = root.findall(f"{{{ATOM_NS}}}entry")
    assert len(entries) == 3
    schema = xmlschema.XMLSchema(str(CAP_XSD))
    severities = []
    for entry in entries:
        alert = entry.find(f"{{{ATOM_NS}}}content/{{{CAP_NS}}}alert")
        assert alert is not None
        schema.validate(ET.tostring(alert).decode())
        severities.append(alert.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}severity"))
        polygon = alert.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}area/{{{CAP_NS}}}polygon")
        assert polygon is not None
        first = polygon.split()[0].split(",")
        assert float(first[0]) == pytest.approx(LAT - 0.009)    # CAP is lat,lon
        link = entry.find(f"{{{ATOM_NS}}}link[@rel='alternate']")
        assert link is not None
        path = "/" + link.attrib["href"].split("/", 3)[3]
        single = await stack.client.get(path)
        assert single.status == 200 and single.content_type == "application/cap+xml"
        schema.validate((await single.read()).decode())
    assert severities == ["Moderate", "Severe", "Extreme"]     # newest first
    assert (await stack.client.get("/v1/agencies/nowhere/alerts.atom")).status == 404


@pytest.mark.workers()
async def test_public_incidents_show_public_points_of_the_last_hour_only(stack: Stack) -> None:
    secret = await create_agency(stack.client, call_types={
        "Fire in Building": "structure_fire", "Aid Response": "medical",
        "Cardiac": "cardiac_arrest"})
    await post_incident(stack.client, secret, incident("F1"))
    await post_incident(stack.client, secret, incident("F2", minutes_ago=90))   # stale
    await post_incident(stack.client, secret, incident("M1", call_type="Aid Response"))
    await post_incident(stack.client, secret, incident("C1", call_type="Cardiac"))
    bbox = f"{LON - 0.05},{LAT - 0.05},{LON + 0.05},{LAT + 0.05}"
    resp = await stack.client.get(f"/v1/incidents?bbox={bbox}")
    assert resp.status == 200
    assert "max-age" in resp.headers["Cache-Control"]
    doc = await resp.json()
    assert [i["category"] for i in doc["incidents"]] == ["structure_fire"]
    shown = doc["incidents"][0]
    assert set(shown) == {"category", "label", "status", "location", "lat", "lon",
                          "occurred_at", "age_minutes"}
    assert shown["location"] == "5300 block of 24th Ave NE"
    assert (shown["lat"], shown["lon"]) != POINT            # the rounded point, not the exact
    text = await resp.text()
    # Whole values: a bare "555" or "5312" may be digits of a timestamp's microseconds.
    for private in ("5312 24th", "Apt 4B", "smoke", "Jane", "John", "555 0147"):
        assert private not in text
    elsewhere = await stack.client.get("/v1/incidents?bbox=-123.9,45.0,-123.8,45.1")
    assert (await elsewhere.json())["incidents"] == []


@pytest.mark.workers()
async def test_public_incidents_reject_bad_boxes_and_rate_limit(stack: Stack) -> None:
    for bbox, in [("1,2,3",), ("a,b,c,d",), ("10,10,0,0",), ("-130,40,-110,50",), ("",)]:
        resp = await stack.client.get("/v1/incidents", params={"bbox": bbox})
        assert resp.status == 422, bbox
        assert (await resp.json())["errors"][0]["field"] == "bbox"
    assert (await stack.client.get("/v1/incidents")).status == 422
    statuses = [(await stack.client.get("/v1/incidents?bbox=-122.4,47.6,-122.3,47.7")).status
                for _ in range(stack.settings.public_requests_per_minute * 2 + 5)]
    assert statuses[0] == 200 and 429 in statuses
