"""The gateways build a fan-out's payload once: what goes out for each device must be
exactly what building it for that device would give."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from workers.apns import ApnsGateway, build_payload
from workers.fcm import FcmGateway, build_message
from workers.push import Push

NOW = dt.datetime(2026, 11, 28, 12, 0, 30, tzinfo=dt.UTC).timestamp()
PUSH = Push(
    incident_id="7d1c5c5e-4a4e-4c55-9c55-0b1c6f5c0a11", device_id="d-1", platform="fcm",
    token="t-1", locale="en", category="structure_fire",
    public_location="5300 block of 24th Ave NE", lat=47.667, lon=-122.302,
    occurred_at=NOW - 150, received_at=NOW - 140, expires_at=NOW + 3600)


def _when(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["en", "es-US"]),
       st.sampled_from(["neighbour", "responder"]), st.integers(0, 4000))
def test_fcm_body_is_the_message_built_for_that_device(
    token: str, locale: str, audience: str, later: int
) -> None:
    gateway = FcmGateway(cast(Any, None))
    gateway.body(replace(PUSH, token="someone else", locale=locale), NOW)  # fills the cache
    push = replace(PUSH, token=token, locale=locale, audience=audience,
                   aeds='[{"name":"Gym","lat":47.6,"lon":-122.3}]' if audience == "responder"
                   else "")
    body = gateway.body(push, NOW + later)
    assert json.loads(body) == {"message": build_message(push, _when(NOW + later))}


def test_fcm_bodies_of_one_fan_out_differ_only_by_token() -> None:
    gateway = FcmGateway(cast(Any, None))
    a = gateway.body(replace(PUSH, token="aaa"), NOW)
    b = gateway.body(replace(PUSH, token="bbb", device_id="d-2"), NOW)
    assert a.replace(b'"aaa"', b'"bbb"') == b
    # a minute later the text says so
    c = json.loads(gateway.body(PUSH, NOW + 60))
    assert c["message"]["notification"]["body"].startswith("3 min. ago")


def test_apns_payload_is_the_one_built_for_that_device() -> None:
    gateway = ApnsGateway(cast(Any, None))
    for push, now in [(PUSH, NOW), (replace(PUSH, locale="es-US"), NOW),
                      (replace(PUSH, token="other"), NOW + 61),
                      (replace(PUSH, title="Fire", body="Stay away"), NOW)]:
        assert json.loads(gateway.payload(push, now)) == build_payload(push, _when(now))
