"""Hypothesis against the device API: any body gets a 2xx or a 4xx problem document
naming a field, never a 500, and no invalid geometry is ever stored."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server.settings import Settings
from tests.conftest import Services
from tests.helpers import fcm_token
from tests.live import live_app


@pytest.fixture(scope="module")
def device(services: Services) -> Iterator[tuple[str, str, str, str]]:
    """The app on a real port and one registered device."""
    settings = Settings(database_url=services.database_url, redis_url=services.redis_url)
    with live_app(settings) as app:
        status, created = _call("POST", f"{app.url}/v1/devices",
                                json.dumps({"platform": "fcm", "token": fcm_token()}).encode(),
                                "")
        assert status == 201
        yield app.url, created["id"], created["secret"], services.database_url


def _call(method: str, url: str, body: bytes, secret: str) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    request = urllib.request.Request(url, data=body, method=method,  # noqa: S310
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            raw, status, ctype = resp.read(), resp.status, resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        raw, status, ctype = exc.read(), exc.code, exc.headers["Content-Type"]
    assert b"Traceback" not in raw
    if status >= 400:
        assert ctype.startswith("application/problem+json"), (status, raw[:200])
    return status, json.loads(raw) if raw else None


scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=15)
position = st.lists(st.floats(-200, 200) | st.integers(-200, 200), min_size=2, max_size=3)
ring = st.lists(position, min_size=0, max_size=8).map(lambda r: r + r[:1])
geometry = st.one_of(
    st.fixed_dictionaries({"type": st.just("Polygon"), "coordinates": st.lists(ring, max_size=2)}),
    st.fixed_dictionaries({"type": st.just("MultiPolygon"),
                           "coordinates": st.lists(st.lists(ring, max_size=2), max_size=2)}),
    anything,
)
zone = st.fixed_dictionaries({"name": st.text(max_size=10) | scalars}, optional={
    "center": st.fixed_dictionaries({"lat": scalars | st.floats(-100, 100),
                                     "lon": scalars | st.floats(-200, 200)}) | anything,
    "radius_m": scalars | st.floats(0, 30_000),
    "geometry": geometry,
})
valid_circle = st.fixed_dictionaries({
    "name": st.text(min_size=1, max_size=10),
    "center": st.fixed_dictionaries({"lat": st.floats(-80, 80), "lon": st.floats(-179, 179)}),
    "radius_m": st.floats(100, 20_000),
})
zones_body = st.fixed_dictionaries(
    {"zones": st.lists(zone | valid_circle | valid_circle, max_size=3)}) | anything
preferences_body = st.fixed_dictionaries({}, optional={
    "categories": st.lists(st.sampled_from(["burglary", "shooting", "bike_theft", ""])
                           | st.text(max_size=8), max_size=4) | scalars,
    "quiet_hours": st.fixed_dictionaries({"start": st.text(max_size=6) | st.just("22:00"),
                                          "end": st.text(max_size=6) | st.just("07:00")})
    | anything,
    "responder": scalars,
    "timezone": st.sampled_from(["UTC", "Europe/Berlin", "Mars/Base", "../etc"]) | scalars,
    "locale": st.sampled_from(["en", "es-US", "x", ""]) | scalars,
}) | anything
location_body = st.fixed_dictionaries({"lat": scalars, "lon": scalars}) | anything

endpoints = st.one_of(
    st.tuples(st.just("zones"), zones_body),
    st.tuples(st.just("preferences"), preferences_body),
    st.tuples(st.just("location"), location_body),
    st.tuples(st.just("token"), st.fixed_dictionaries({"token": scalars}) | anything),
)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(endpoints, st.sampled_from([False, False, False, True]))
def test_device_endpoints_never_500(device: tuple[str, str, str, str],
                                    case: tuple[str, Any], raw: bool) -> None:
    url, device_id, secret, database_url = device
    endpoint, body = case
    encoded = json.dumps(body).encode()
    if raw:  # sometimes truncated, i.e. malformed JSON
        encoded = encoded[: max(0, len(encoded) - 1)]
    status, answer = _call("PUT", f"{url}/v1/devices/{device_id}/{endpoint}", encoded, secret)
    event(f"{endpoint} {status}")
    assert status < 500, answer
    assert status != 401, "the device's own secret must be accepted"
    if status in (400, 422):
        assert answer["errors"] and all(e["field"] for e in answer["errors"])
    if endpoint == "zones" and status == 200:
        assert asyncio.run(_invalid_zones(database_url)) == 0


async def _invalid_zones(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM zones WHERE NOT ST_IsValid(geom)"))
    finally:
        await conn.close()
