"""Dry runs through the whole pipeline: no push reaches the fake gateways, and the
real call afterwards pushes the text the dry run showed."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from server.domain.signing import HEADER, sign
from tests.cad_fixtures import SEATTLE_MAP, fixtures
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import (
    POINT,
    circle,
    create_agency,
    create_device,
    fcm_token,
    incident,
    post_incident,
)


async def _post(stack: Stack, secret: str, content_type: str, body: bytes, *, dry_run: bool,
                ) -> tuple[int, dict[str, Any]]:
    url = "/v1/agencies/seattle-fire/incidents" + ("?dry_run=true" if dry_run else "")
    resp = await stack.client.post(url, data=body, headers={
        HEADER: sign(secret, body, int(dt.datetime.now(dt.UTC).timestamp())),
        "Content-Type": content_type})
    return resp.status, await resp.json()


def _place(text: str) -> str:
    return text.split(" · ", 1)[1]


async def test_dry_runs_push_nothing_and_the_real_call_pushes_what_they_showed(
    stack: Stack,
) -> None:
    secret = await create_agency(stack.client, call_types=json.loads(SEATTLE_MAP.read_text()))
    await create_device(stack.client, "apns", secrets.token_hex(32), circle(*POINT, 1500))
    await create_device(stack.client, "fcm", fcm_token(),
                        circle(*POINT, 1500), locale="es-MX")
    base = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    shown: dict[str, dict[str, Any]] = {}
    for fx in fixtures("accept"):
        status, dry = await _post(stack, secret, fx.content_type, fx.body(base), dry_run=True)
        assert status == 200, (fx, dry)
        shown[str(fx)] = dry
    assert max(d["would_alert"] for d in shown.values()) == 2

    # A real incident afterwards: once its pushes are out and every stream is drained,
    # the gateways have seen its two pushes and nothing else.
    status, sentinel = await post_incident(stack.client, secret, incident("SENTINEL"))
    assert (status, sentinel["decision"]) == (202, "alert")
    await wait_for(lambda: len(stack.apns.deliveries) + len(stack.fcm.deliveries) >= 2,
                   what="the sentinel's pushes")
    await stack.drained()
    assert len(stack.apns.deliveries) == len(stack.fcm.deliveries) == 1
    assert stack.apns.deliveries[0].payload["incident"]["id"] == sentinel["incident_id"]
    assert stack.fcm.deliveries[0].message["data"]["incident_id"] == sentinel["incident_id"]
    assert await stack.pool.fetchval("SELECT count(*) FROM incidents") == 1

    # The CAP circle for real: the phones read what its dry run showed.
    fx = next(f for f in fixtures("accept", "cap") if f.name == "circle")
    status, real = await _post(stack, secret, fx.content_type, fx.body(base), dry_run=False)
    assert (status, real["decision"]) == (202, shown[str(fx)]["decision"])
    await wait_for(lambda: len(stack.apns.deliveries) + len(stack.fcm.deliveries) >= 4,
                   what="the circle's pushes")
    await stack.drained()
    dry = shown[str(fx)]
    apns = stack.apns.deliveries[-1].payload["aps"]["alert"]
    fcm = stack.fcm.deliveries[-1].message["notification"]
    assert apns["title"] == dry["title"]["en"] and fcm["title"] == dry["title"]["es"]
    assert _place(apns["body"]) == _place(dry["body"]["en"])
    assert _place(fcm["body"]) == _place(dry["body"]["es"])
    assert dry["would_alert"] == 2
