"""The public location of a stored incident: built from the street grammar, else the
imported neighbourhood its public point lies in, else nothing; never the CAD's text."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN_TOKEN
from tests.helpers import POINT, create_agency, incident, post_incident

Client = TestClient[Any, Any]
LAT, LON = POINT


async def _stored(pool: asyncpg.Pool, external_id: str) -> str | None:
    value: str | None = await pool.fetchval(
        "SELECT public_location FROM incidents WHERE external_id = $1", external_id)
    return value


def _located(external_id: str, address: str) -> dict[str, Any]:
    return incident(external_id, location={"lat": LAT, "lon": LON, "address": address})


async def test_withheld_addresses_fall_back_to_the_neighbourhood(
    client: Client, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client)
    planted = "Mary Jones at Green Lake Apartments (206) 555-0147"
    await post_incident(client, secret, _located("BEFORE", planted))
    assert await _stored(pool, "BEFORE") is None  # withheld: no neighbourhoods yet

    ravenna = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"NAME": "Ravenna"},
        "geometry": {"type": "Polygon", "coordinates": [[
            [LON - 0.01, LAT - 0.01], [LON + 0.01, LAT - 0.01], [LON + 0.01, LAT + 0.01],
            [LON - 0.01, LAT + 0.01], [LON - 0.01, LAT - 0.01]]]}}]}
    r = await client.post("/v1/admin/neighbourhoods?name_property=NAME",
                          data=json.dumps(ravenna),
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                   "Content-Type": "application/geo+json"})
    assert r.status in (200, 201), await r.text()

    await post_incident(client, secret, _located("AFTER", planted))
    await post_incident(client, secret, _located("STREET", "5312 24th Ave NE - caller Jane"))
    assert await _stored(pool, "AFTER") == "Ravenna"
    assert await _stored(pool, "STREET") == "5300 block of 24th Ave NE"
    everything = json.dumps([dict(r) for r in await pool.fetch(
        "SELECT public_location FROM incidents")])
    for private in ("Mary", "Jones", "Apartments", "555", "5312", "Jane"):
        assert private not in everything
