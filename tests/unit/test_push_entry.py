"""A push as a stream entry: what the matcher writes, the sender reads back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.push import Push

TEXT = st.text(max_size=40)
FINITE = st.floats(allow_nan=False, allow_infinity=False)

PUSHES = st.builds(
    Push,
    incident_id=TEXT, device_id=TEXT, platform=st.sampled_from(["apns", "fcm"]),
    token=TEXT, locale=TEXT, category=TEXT, public_location=TEXT,
    lat=FINITE, lon=FINITE, occurred_at=FINITE, received_at=FINITE, expires_at=FINITE,
    attempt=st.integers(1, 1000), title=TEXT, body=TEXT,
    audience=st.sampled_from(["neighbour", "responder"]), aeds=TEXT,
)

PUSH = Push(
    incident_id="0b6f7c4e-0000-4000-8000-000000000001",
    device_id="0b6f7c4e-0000-4000-8000-000000000002", platform="fcm", token="tok",
    locale="en", category="structure_fire", public_location="1200 block of Pine St",
    lat=47.61, lon=-122.33, occurred_at=1_700_000_000.5, received_at=1_700_000_010.25,
    expires_at=1_700_003_600.0,
)


@given(PUSHES)
def test_every_push_comes_back_from_its_entry_unchanged(push: Push) -> None:
    fields = push.to_fields()
    assert set(fields) == {"device_id", "push"}
    assert fields["device_id"] == push.device_id     # erasure finds it undecoded
    assert Push.from_fields(fields) == push


def test_a_retry_is_the_same_push_one_attempt_later() -> None:
    again = PUSH.next_attempt()
    assert again.attempt == 2 and Push.from_fields(again.to_fields()) == again


@pytest.mark.parametrize("fields", [
    {"device_id": "d", "push": "not json"},
    {"device_id": "d", "push": json.dumps({"incident_id": "i"})},            # fields missing
    {"device_id": "d", "push": json.dumps({**json.loads(PUSH.to_fields()["push"]),
                                          "lat": "north"})},               # wrong type
    {"device_id": "d"},                                                    # no push
])
def test_a_malformed_entry_is_a_value_or_key_error(fields: dict[str, str]) -> None:
    """The sender drops (and acknowledges) such an entry rather than crash on it."""
    with pytest.raises((ValueError, KeyError)):
        Push.from_fields(fields)


def test_an_area_push_carries_the_public_area_it_was_matched_on() -> None:
    import datetime as dt
    import json

    import msgspec

    from workers.apns import build_payload
    from workers.fcm import build_message

    area = msgspec.structs.replace(PUSH, bbox=(-122.331, 47.609, -122.329, 47.611))
    assert Push.from_fields(area.to_fields()) == area
    now = dt.datetime.fromtimestamp(1_700_000_100, dt.UTC)
    box = [-122.331, 47.609, -122.329, 47.611]
    assert build_payload(area, now)["incident"]["area"]["bbox"] == box
    assert json.loads(build_message(area, now)["data"]["area"])["bbox"] == box
    # A point incident's push has none.
    assert "bbox" not in build_payload(PUSH, now)["incident"]["area"]
