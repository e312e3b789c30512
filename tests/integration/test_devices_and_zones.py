"""Devices, zones and preferences on real PostGIS, and the matcher's index use."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from server.store.migrate import discover, migrate
from tests.conftest import Services
from tests.helpers import POINT, circle, create_device, fcm_token

Client = TestClient[Any, Any]


async def test_register_device_and_zones(client: Client, pool: asyncpg.Pool) -> None:
    device_id, secret = await create_device(client, "apns", secrets.token_hex(32),
                                            circle(*POINT, 1000))
    geom = await pool.fetchrow(
        """SELECT GeometryType(geom) AS kind, ST_IsValid(geom) AS valid,
                  ST_Area(geom::geography) AS m2 FROM zones WHERE device_id = $1::uuid""",
        device_id)
    assert geom["kind"] == "MULTIPOLYGON" and geom["valid"]
    assert abs(geom["m2"] - 3.14159 * 1000**2) / (3.14159 * 1000**2) < 0.02
    stored = await pool.fetchval("SELECT secret_hash FROM devices WHERE id = $1::uuid", device_id)
    assert secret.encode() not in bytes(stored)


async def test_device_auth_is_per_device_and_uniform(client: Client) -> None:
    a, a_secret = await create_device(client, "apns", secrets.token_hex(32))
    b, _ = await create_device(client, "fcm", fcm_token())
    zones = {"zones": [circle(*POINT)]}
    answers = []
    for device, key in [(b, a_secret), (a, "dsec_wrong"), ("not-a-uuid", a_secret),
                        ("00000000-0000-0000-0000-000000000000", a_secret), (a, "")]:
        r = await client.put(f"/v1/devices/{device}/zones", json=zones,
                             headers={"Authorization": f"Bearer {key}"})
        answers.append((r.status, await r.json()))
    assert all(x == answers[0] for x in answers) and answers[0][0] == 401


async def test_zone_errors_name_the_field(client: Client) -> None:
    device_id, secret = await create_device(client, "apns", secrets.token_hex(32))
    auth = {"Authorization": f"Bearer {secret}"}
    cases = [
        ({"zones": [{"name": "x", "center": {"lat": 47.6, "lon": -122.3}, "radius_m": 50}]},
         "zones[0].radius_m"),
        ({"zones": [{"name": "x", "geometry": {"type": "Polygon", "coordinates": [
            [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}}]}, "zones[0].geometry.coordinates"),
        ({"zones": [{"name": "x"}]}, "zones[0].center"),
        ({"zones": [circle(*POINT)] * 11}, "zones"),
        ({"zones": "nope"}, "zones"),
        # PostgreSQL text can't hold NUL: refused up front, not a 500 from the INSERT
        ({"zones": [{**circle(*POINT), "name": "home\x00"}]}, "zones[0].name"),
        ({"zones": [{**circle(*POINT), "name": "line\nbreak"}]}, "zones[0].name"),
    ]
    for body, field in cases:
        r = await client.put(f"/v1/devices/{device_id}/zones", json=body, headers=auth)
        problem = await r.json()
        assert r.status == 422 and problem["errors"][0]["field"] == field, problem


async def test_preferences_validate_categories(client: Client) -> None:
    device_id, secret = await create_device(client, "fcm", fcm_token())
    auth = {"Authorization": f"Bearer {secret}"}
    r = await client.put(f"/v1/devices/{device_id}/preferences",
                         json={"categories": ["burglary", "bike_theft"]}, headers=auth)
    problem = await r.json()
    assert r.status == 422 and problem["errors"][0]["field"] == "categories"
    assert "bike_theft" in problem["errors"][0]["message"]
    assert "structure_fire" in problem["errors"][0]["message"]
    r = await client.put(f"/v1/devices/{device_id}/preferences",
                         json={"categories": ["burglary"],
                               "quiet_hours": {"start": "22:00", "end": "07:00"}},
                         headers=auth)
    assert r.status == 200
    r = await client.put(f"/v1/devices/{device_id}/preferences",
                         json={"quiet_hours": {"start": "25:00", "end": "07:00"}}, headers=auth)
    assert (await r.json())["errors"][0]["field"] == "quiet_hours.start"


async def test_bad_device_registration(client: Client) -> None:
    for body, field in [
        ({"platform": "sms", "token": "x"}, "platform"),
        ({"platform": "apns", "token": "xyz"}, "token"),
        ({"platform": "fcm", "token": "t", "timezone": "Mars/Olympus"}, "timezone"),
        ({"platform": "fcm"}, "token"),
    ]:
        r = await client.post("/v1/devices", json=body)
        assert r.status == 422 and (await r.json())["errors"][0]["field"] == field
    r = await client.post("/v1/devices", data=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "body"


async def test_matching_uses_the_gist_index_and_counts_the_boundary(
    client: Client, pool: asyncpg.Pool
) -> None:
    # Enough zones that the planner would rather not scan them all.
    await pool.execute(
        """INSERT INTO devices (platform, token, secret_hash)
           SELECT 'fcm', 'bulk-' || g, '\\x00' FROM generate_series(1, 2000) g""")
    await pool.execute(
        """INSERT INTO zones (device_id, name, geom)
           SELECT d.id, 'bulk', ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(
                  -122.6 + random() * 0.6, 47.3 + random() * 0.6), 4326)::geography, 300)::geometry)
             FROM devices d""")
    await pool.execute("ANALYZE zones")
    plan = "\n".join(r[0] for r in await pool.fetch(
        """EXPLAIN SELECT z.device_id FROM zones z
            WHERE ST_Intersects(z.geom, ST_SetSRID(ST_MakePoint(-122.3, 47.66), 4326))"""))
    assert "zones_geom" in plan, plan

    # A point exactly on a zone's boundary is inside.
    device_id, _ = await create_device(client, "fcm", fcm_token(), {
        "name": "square", "geometry": {"type": "Polygon", "coordinates": [
            [[-122.31, 47.66], [-122.30, 47.66], [-122.30, 47.67], [-122.31, 47.67],
             [-122.31, 47.66]]]}})
    hit = await pool.fetchval(
        """SELECT count(*) FROM zones WHERE device_id = $1::uuid
              AND ST_Intersects(geom, ST_SetSRID(ST_MakePoint(-122.30, 47.665), 4326))""",
        device_id)
    assert hit == 1


async def test_migrations_are_applied_once_even_when_run_concurrently(
    services: Services,
) -> None:
    admin = await asyncpg.connect(services.database_url)
    fresh = f"migrate_race_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{fresh}"')
    url = services.database_url.rsplit("/", 1)[0] + "/" + fresh
    try:
        results = await asyncio.gather(*(migrate(url) for _ in range(4)))
        applied = [m.version for r in results for m in r]
        assert sorted(applied) == sorted(m.version for m in discover())  # each exactly once
        assert await migrate(url) == []
    finally:
        await admin.execute(f'DROP DATABASE "{fresh}" WITH (FORCE)')
        await admin.close()


async def test_health_and_readiness(client: Client) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    r = await client.get("/readyz")
    assert r.status == 200 and (await r.json())["checks"] == {"postgres": "ok", "redis": "ok"}
