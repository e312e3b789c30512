"""What the gateways send for updates, severe and manual alerts, and responders (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from msgspec.structs import replace

from loadtest.apns_rules import check_aps
from loadtest.fake_fcm import validate_message
from workers.apns import ApnsGateway, build_payload, priority
from workers.fcm import build_message
from workers.push import Push

NOW = dt.datetime(2026, 11, 28, 12, 0, 30, tzinfo=dt.UTC)
ALERT = Push(
    incident_id="7d1c5c5e-4a4e-4c55-9c55-0b1c6f5c0a11", device_id="d-1", platform="apns",
    token="t-1", locale="en", category="structure_fire",
    public_location="5300 block of 24th Ave NE", lat=47.667, lon=-122.302,
    occurred_at=NOW.timestamp() - 1500, received_at=NOW.timestamp() - 1490,
    expires_at=NOW.timestamp() + 2100)
UPDATE = replace(ALERT, kind="update", status="cleared", ended_at=NOW.timestamp() - 60)


def test_an_update_replaces_the_alert_silently() -> None:
    payload = build_payload(UPDATE, NOW)
    assert payload["aps"] == {
        "alert": {"title": "Structure fire nearby — cleared",
                  "body": "Cleared 24 minutes after it was reported"},
        "interruption-level": "passive", "relevance-score": 0.1, "thread-id": "structure_fire"}
    assert payload["incident"]["status"] == "cleared"
    assert (priority(ALERT), priority(UPDATE)) == (10, 5)
    message = build_message(UPDATE, NOW)
    assert message["android"]["priority"] == "NORMAL"
    assert message["android"]["notification"]["channel_id"] == "geopush_updates"
    assert message["notification"]["title"] == "Structure fire nearby — cleared"
    assert message["data"]["status"] == "cleared" and message["data"]["kind"] == "update"


def test_an_extreme_manual_alert_is_critical_only_with_the_entitlement() -> None:
    manual = replace(ALERT, severity="extreme", title="Evacuate now", body="Gas leak")
    plain = build_payload(manual, NOW)["aps"]
    assert plain["interruption-level"] == "time-sensitive" and plain["sound"] == "default"
    critical = build_payload(manual, NOW, critical_alerts=True)["aps"]
    assert critical["interruption-level"] == "critical"
    assert critical["sound"] == {"critical": 1, "name": "default", "volume": 1.0}
    assert check_aps({"aps": critical}) is None
    gateway = ApnsGateway(cast(Any, None), critical_alerts=True)
    assert b'"critical"' in gateway.payload(manual, NOW.timestamp())
    assert build_message(manual, NOW)["android"]["notification"]["channel_id"] == "geopush_severe"


def test_a_responder_push_carries_the_answers_the_app_offers() -> None:
    responder = replace(ALERT, category="cardiac_arrest", audience="responder",
                        aeds='[{"name":"Gym","lat":47.6,"lon":-122.3}]')
    payload = build_payload(responder, NOW)
    assert payload["aps"]["category"] == "GEOPUSH_RESPONDER"
    assert payload["incident"]["actions"] == ["responding", "on_scene", "declined"]
    assert build_message(responder, NOW)["data"]["actions"] == "responding,on_scene,declined"
    # A neighbour's alert has no answer buttons.
    assert "category" not in build_payload(ALERT, NOW)["aps"]
    for push in (ALERT, UPDATE, responder):
        assert check_aps(build_payload(push, NOW)) is None
        assert validate_message(build_message(push, NOW)) == push.token   # as Google checks
