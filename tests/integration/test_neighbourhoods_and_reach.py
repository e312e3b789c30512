"""Neighbourhoods (import, the demo, the public-location lookup) and the matcher's
limits on updates, against real PostGIS and Redis."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from server.dev import demo
from server.domain.neighbourhood_import import display_name, parse_geojson
from server.settings import Settings
from server.store import neighbourhoods
from server.web.problems import ValidationFailed
from tests.conftest import _TABLES as TABLES
from tests.conftest import ADMIN_TOKEN, Services
from tests.helpers import (
    POINT,
    circle,
    create_agency,
    create_device,
    fcm_token,
    incident,
    post_incident,
    queued,
)
from tests.live import live_app
from workers.matcher import ALERT_LIFETIME, Matcher

Client = TestClient[Any, Any]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SQUARE = {"type": "Polygon", "coordinates": [[[-122.31, 47.66], [-122.29, 47.66],
                                               [-122.29, 47.675], [-122.31, 47.675],
                                               [-122.31, 47.66]]]}


def _collection(*features: dict[str, Any]) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}).encode()


async def _fetchrow(dsn: str, sql: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(sql)
    finally:
        await conn.close()


def test_make_runs_demo_loads_the_neighbourhoods_and_a_neighbourhood_zone(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    with live_app(settings) as app:
        app.run(_fetchrow(services.database_url, f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        state = demo.load(tmp_path / "demo.json", app.url, ADMIN_TOKEN)
        demo.load(tmp_path / "demo.json", app.url, ADMIN_TOKEN)   # again: nothing doubles
        counts = app.run(_fetchrow(services.database_url,
            """SELECT (SELECT count(*) FROM neighbourhoods) AS hoods,
                      (SELECT count(*) FROM zones WHERE neighbourhood_id IS NOT NULL) AS zones,
                      (SELECT name FROM zones WHERE neighbourhood_id IS NOT NULL) AS name"""))
    assert counts is not None
    assert (counts["hoods"], counts["zones"], counts["name"]) == (61, 1, "University")
    assert [d["name"] for d in state["devices"]][-1] == "university-android"


async def test_the_public_location_fallback_finds_the_neighbourhood_a_point_lies_in(
    client: Client, pool: asyncpg.Pool
) -> None:
    assert await neighbourhoods.neighbourhood_name_at(pool, *POINT) is None
    body = _collection({"type": "Feature", "id": 7, "properties": {"name": "RAVENNA"},
                        "geometry": SQUARE})
    r = await client.post("/v1/admin/neighbourhoods?source=test", data=body,
                          headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status == 200 and (await r.json())["neighbourhoods"][0]["source_id"] == "test:7"
    assert await neighbourhoods.neighbourhood_name_at(pool, *POINT) == "Ravenna"
    assert await neighbourhoods.neighbourhood_name_at(pool, 47.5, -122.3) is None
    r = await client.post("/v1/admin/neighbourhoods", data=body,
                          headers={**ADMIN, "Content-Type": "text/plain"})
    assert r.status == 415
    r = await client.post("/v1/admin/neighbourhoods", data=body,
                          headers={"Content-Type": "application/json"})
    assert r.status == 401


async def test_a_reimport_moves_the_zones_that_are_that_neighbourhood(
    client: Client, pool: asyncpg.Pool
) -> None:
    feature = {"type": "Feature", "properties": {"hood": "Ravenna"}, "geometry": SQUARE}
    url = "/v1/admin/neighbourhoods?name_property=hood"
    headers = {**ADMIN, "Content-Type": "application/geo+json"}
    r = await client.post(url, data=_collection(feature), headers=headers)
    [hood] = (await r.json())["neighbourhoods"]
    await create_device(client, "fcm", fcm_token(), {"name": "Home", "neighbourhood": hood["id"]})
    moved = json.loads(json.dumps(SQUARE))
    for point in moved["coordinates"][0]:
        point[1] -= 0.1
    r = await client.post(url, data=_collection({**feature, "geometry": moved}),
                          headers=headers)
    assert (await r.json())["neighbourhoods"][0]["id"] == hood["id"]
    assert await pool.fetchval(
        "SELECT ST_YMax(geom) FROM zones WHERE neighbourhood_id = $1::uuid", hood["id"]
    ) == pytest.approx(47.575)


def test_bad_neighbourhood_files_name_the_field() -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_geojson(_collection({"type": "Feature", "properties": {}, "geometry": SQUARE}),
                      name_property="NAME")
    assert exc.value.errors[0].field == "features[0].properties.NAME"
    bad = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(ValidationFailed) as exc:
        parse_geojson(_collection({"type": "Feature", "properties": {"name": "x"},
                                   "geometry": bad}), name_property="name")
    assert exc.value.errors[0].field == "features[0].geometry.coordinates"
    with pytest.raises(ValidationFailed):
        parse_geojson(b'{"type": "Feature"}', name_property="name")


@given(st.text(max_size=120))
def test_display_names_are_trimmed_and_never_shouted(raw: str) -> None:
    name = display_name(raw)
    assert len(name) <= 100 and name == name.strip()
    assert not (name.isupper() and any(c.isalpha() and c.lower() != c.upper() for c in name)) \
        or name.title() == name


async def test_no_update_after_the_alerts_lifetime_nor_for_a_never_alerted_incident(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    await create_device(client, "apns", secrets.token_hex(32), circle(*POINT, 1000))
    doc = incident("LT1")
    _, accepted = await post_incident(client, secret, doc)
    matcher = Matcher(pool, redis, device_pushes_per_hour=0)
    now = dt.datetime.now(dt.UTC)
    assert (await matcher.match_incident(accepted["incident_id"], now)).enqueued == 1
    await pool.execute(
        """INSERT INTO deliveries (incident_id, device_id, platform, outcome)
           SELECT $1::uuid, id, platform, 'sent' FROM devices""", accepted["incident_id"])
    await pool.execute("UPDATE incidents SET status = 'cleared', decision = 'suppressed:cleared'")
    occurred = await pool.fetchval("SELECT occurred_at FROM incidents")
    late = await matcher.match_incident(accepted["incident_id"], occurred + ALERT_LIFETIME)
    assert late.enqueued == 0
    in_time = await matcher.match_incident(accepted["incident_id"], now)
    assert in_time.enqueued == 1
    again = await matcher.match_incident(accepted["incident_id"], now)   # a repeated clear
    assert (again.candidates, again.enqueued) == (1, 0)
    assert await queued(redis, "apns") == 2
    # The second pass is due in the outbox, not before.
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE created_at > now()") == 1
