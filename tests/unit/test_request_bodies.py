"""Every device, admin and console request body refuses fields it doesn't know and
text with NUL (one-line fields: CR and LF too), with a 422 naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from server.formats.jsondecode import decode
from server.web.problems import ValidationFailed
from server.web.routes import admin, alerts, devices, review, session, users

BODIES: list[tuple[Any, bytes, str]] = [
    (admin.AgencyCreate, b'{"id": "a", "name": "A", "nmae": "x"}', "nmae"),
    (admin.AgencyCreate, b'{"id": "a", "name": "A\\u0000"}', "name"),
    (admin.AgencyPatch, b'{"timezone": "UTC\\r\\nX"}', "timezone"),
    (admin.ResponderRegistration, b'{"device_id": "x", "extra": 1}', "extra"),
    (review.ReviewDecision, b'{"title": "T", "tilte": "x"}', "tilte"),
    (review.ReviewDecision, b'{"title": "T\\nforged"}', "title"),
    (review.ReviewDecision, b'{"body": "B\\u0000"}', "body"),
    (users.UserCreate, b'{"username": "u\\n", "password": "p"}', "username"),
    (users.UserCreate, b'{"username": "u", "password": "p", "admin": true}', "admin"),
    (session.SignIn, b'{"username": "u", "password": "p", "remember": true}', "remember"),
    (alerts.AlertCreate, b'{"title": "T\\r", "body": "B", "area": {}, "severity": "severe"}',
     "title"),
    (alerts.AlertPreview, b'{"area": {}, "radius": 1}', "radius"),
    (devices.PreferencesPut, b'{"categoreis": []}', "categoreis"),
    (devices.DeviceCreate, b'{"platform": "apns", "token": "t", "timezone": "U\\u0000"}',
     "timezone"),
]


@pytest.mark.parametrize(("typ", "body", "field"), BODIES)
def test_unknown_fields_and_control_characters_are_refused(typ: Any, body: bytes,
                                                           field: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        decode(body, typ)
    assert err.value.errors[0].field == field


def test_multi_line_free_text_stays_allowed() -> None:
    decision = decode(b'{"body": "Evacuate.\\nGo north."}', review.ReviewDecision)
    assert decision.body == "Evacuate.\nGo north."
