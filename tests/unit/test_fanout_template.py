"""A fan-out's pushes are built from one template per incident: each device's push must
be exactly what ``Push.to_fields`` writes for it, whatever the token or locale holds."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.fanout import Fanout
from workers.push import Push

TEMPLATE = Push(
    incident_id=str(uuid.uuid4()), device_id="", platform="", token="", locale="",
    category="structure_fire", public_location='5300 block of "24th" Ave NE \\ east',
    lat=47.667, lon=-122.302, occurred_at=1_700_000_000.5, received_at=1_700_000_010.25,
    expires_at=1_700_003_600.0, title="Fire — évacuez", body="", audience="neighbour",
    severity="", bbox=(-122.31, 47.66, -122.29, 47.67),
)


@given(st.uuids(), st.sampled_from(["apns", "fcm"]), st.text(), st.text(max_size=35))
def test_a_rendered_push_is_the_push_itself(
    device: uuid.UUID, platform: str, token: str, locale: str
) -> None:
    fanout = Fanout.of(TEMPLATE, "event", 10)
    rendered = fanout.render(str(device), platform, token, locale)
    expected = Push(**{**{f: getattr(TEMPLATE, f) for f in TEMPLATE.__struct_fields__},
                       "device_id": str(device), "platform": platform, "token": token,
                       "locale": locale})
    assert Push.from_fields({"push": rendered}) == expected


def test_an_update_renders_as_an_update() -> None:
    update = Push(incident_id="i", device_id="", platform="", token="", locale="",
                  category="shooting", public_location="", lat=1.0, lon=2.0, occurred_at=1.0,
                  received_at=2.0, expires_at=3.0, kind="update", status="cleared",
                  ended_at=2.5)
    fanout = Fanout.of(update, "update:i", 0)
    push = Push.from_fields({"push": fanout.render("d", "fcm", "t", "vi")})
    assert (push.kind, push.status, push.device_id, push.locale) == ("update", "cleared", "d", "vi")
    assert fanout.kind == "update" and fanout.expires_at == 3.0


def test_a_template_with_a_device_in_it_is_refused() -> None:
    with pytest.raises(ValueError, match="device"):
        Fanout.of(Push(**{**{f: getattr(TEMPLATE, f) for f in TEMPLATE.__struct_fields__},
                          "token": "x"}), "event", 0)
