from __future__ import annotations

import datetime as dt

from server.domain.pushtext import relative_time, title_and_body
from server.domain.quiet import allowed_now, in_quiet_hours

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def test_title_and_body_in_english_and_spanish() -> None:
    occurred = NOW - dt.timedelta(minutes=3)
    assert title_and_body("structure_fire", "5300 block of 24th Ave NE", occurred, NOW) == (
        "Structure fire nearby", "3 min. ago · 5300 block of 24th Ave NE")
    assert title_and_body("shooting", None, occurred, NOW, "es-US") == (
        "Tiroteo cerca", "hace 3 min · cerca de usted")


def test_relative_time() -> None:
    assert relative_time(NOW - dt.timedelta(seconds=20), NOW) == "just now"
    assert relative_time(NOW - dt.timedelta(minutes=59), NOW) == "59 min. ago"
    assert relative_time(NOW - dt.timedelta(minutes=61), NOW) == "1 hr. ago"


def test_quiet_hours_cross_midnight_in_the_device_time_zone() -> None:
    start, end = dt.time(22, 0), dt.time(7, 0)
    # 12:00 UTC is 04:00 in Los Angeles (PST): quiet.
    assert in_quiet_hours(NOW, "America/Los_Angeles", start, end)
    # ... and 13:00 in Berlin: not quiet.
    assert not in_quiet_hours(NOW, "Europe/Berlin", start, end)
    assert not in_quiet_hours(NOW, "America/Los_Angeles", None, None)


def test_only_the_most_severe_come_through_quiet_hours() -> None:
    start, end = dt.time(22, 0), dt.time(7, 0)
    assert not allowed_now("burglary", NOW, "America/Los_Angeles", start, end)
    assert allowed_now("shooting", NOW, "America/Los_Angeles", start, end)
    assert allowed_now("burglary", NOW, "Europe/Berlin", start, end)


def test_responder_payload_with_long_aed_texts_stays_within_4_kib() -> None:
    import json

    from workers.apns import MAX_PAYLOAD_BYTES, build_payload
    from workers.push import Push

    aeds = [{"name": "N" * 100, "description": "D" * 200, "lat": 47.6, "lon": -122.3,
             "distance_m": 100 * i} for i in range(40)]
    push = Push(incident_id="i", device_id="d", platform="apns", token="t", locale="en",
                category="cardiac_arrest", public_location="X" * 300, lat=47.6, lon=-122.3,
                occurred_at=NOW.timestamp() - 60, received_at=NOW.timestamp(),
                expires_at=NOW.timestamp() + 3600, audience="responder",
                aeds=json.dumps(aeds))
    payload = build_payload(push, NOW)
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= MAX_PAYLOAD_BYTES
    assert payload["incident"]["aeds"], "the nearest AEDs are kept as long as they fit"
    assert payload["aps"]["alert"]["title"] == "CPR needed nearby"
