"""NUL, CR and LF in any text field, CAD or admin, are a 422 naming the field (not a
500, not a forged log line); admin bodies refuse unknown fields, CAD bodies don't."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN_TOKEN
from tests.helpers import create_agency, incident, post_incident, signed

Client = TestClient[Any, Any]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FORGED = "x\nINFO server.ingest incident agency=other decision=alert"


@pytest.mark.parametrize("bad", ["Fire\x00Dept", "Fire\rDept", "Fire Dept\n", FORGED])
@pytest.mark.parametrize(("field", "body"), [
    ("name", lambda bad: {"name": bad}),
    ("timezone", lambda bad: {"timezone": bad}),
    ("id", lambda bad: {"id": bad}),
    ("call_types", lambda bad: {"call_types": {bad: "structure_fire"}}),
    ("call_types.Fire", lambda bad: {"call_types": {"Fire": bad}}),
])
async def test_control_characters_in_admin_text_are_a_422(
    client: Client, bad: str, field: str, body: Any
) -> None:
    doc = {"id": "fd", "name": "Fire Dept", "timezone": "UTC", **body(bad)}
    r = await client.post("/v1/admin/agencies", json=doc, headers=ADMIN)
    assert r.status == 422, await r.text()
    assert r.content_type == "application/problem+json"
    assert (await r.json())["errors"][0]["field"].startswith(field.split(".")[0])


async def test_control_characters_in_an_agency_patch_are_a_422(client: Client) -> None:
    await create_agency(client)
    for doc in ({"name": "a\x00b"}, {"review_categories": ["a\nb"]}, {"timezone": "a\rb"}):
        r = await client.patch("/v1/admin/agencies/seattle-fire", json=doc, headers=ADMIN)
        assert r.status == 422, (doc, await r.text())


async def test_unknown_fields_in_admin_bodies_are_a_422_naming_them(client: Client) -> None:
    r = await client.post("/v1/admin/agencies", headers=ADMIN, json={
        "id": "fd", "name": "Fire Dept", "reveiw": True})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "reveiw"
    r = await client.post("/v1/admin/agencies/fd/responders", headers=ADMIN,
                          json={"device_id": "x", "agency": "y"})
    assert r.status in (404, 422)


@pytest.mark.parametrize(("field", "change"), [
    ("id", {"id": "F1\x00"}),
    ("id", {"id": "F1\nF2"}),
    ("call_type", {"call_type": "Fire\rin Building"}),
    ("location.address", {"location": {"lat": 47.66707, "lon": -122.301946,
                                       "address": "5300 24th Ave NE\nINFO forged"}}),
    ("narrative", {"narrative": "smoke\x00"}),
])
async def test_control_characters_in_cad_text_are_a_422(
    client: Client, caplog: pytest.LogCaptureFixture, field: str, change: dict[str, Any]
) -> None:
    secret = await create_agency(client)
    caplog.set_level(logging.INFO)
    status, problem = await post_incident(client, secret, incident(**change))
    assert status == 422, problem
    assert problem["errors"][0]["field"] == field
    assert "forged" not in caplog.text and "\x00" not in caplog.text


async def test_cad_bodies_stay_tolerant_and_narratives_may_span_lines(client: Client) -> None:
    secret = await create_agency(client)
    doc = incident(narrative="smoke\nfrom the 2nd floor\r\n", vendor_extension={"x": 1})
    status, accepted = await post_incident(client, secret, doc)
    assert status == 202, accepted
    body = json.dumps(incident("F2", call_type="Fire\x00")).encode()
    r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                          headers=signed(secret, body))
    assert r.status == 422
