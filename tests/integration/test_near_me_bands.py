"""Near-me positions are kept in bands by the device's radius (``NearMePositions``), and
an incident's search reaches each band only as far as that band's radius. Property:
whatever the devices' radii and positions (many right at their radius, where Redis'
sphere and PostGIS' spheroid disagree) and whatever the incident (a point, or an area
reaching out from it), the matcher's near-me audience equals the one found by searching
every position within the widest radius (one set, as before the bands). Real PostGIS
and Redis."""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import keys
from server.domain.zones import MAX_NEAR_ME_RADIUS_M
from server.store import audience, matching, positions
from tests.conftest import Services
from tests.helpers import SyncRedisWorld

LAT, LON = 47.6097, -122.3387
NEAR_ME = positions.near_me(7200)
_M_PER_DEG_LAT = 111_320.0


@pytest.fixture(scope="module")
def world(services: Services) -> Iterator[SyncRedisWorld]:
    w = SyncRedisWorld(services.database_url, services.redis_url)
    yield w
    w.close()


def _offset(lat: float, lon: float, bearing: float, metres: float) -> tuple[float, float]:
    """A point ``metres`` from (lat, lon) towards ``bearing`` (radians), flat-earth: near
    enough at these distances, and the property doesn't depend on it."""
    dlat = metres * math.cos(bearing) / _M_PER_DEG_LAT
    dlon = metres * math.sin(bearing) / (_M_PER_DEG_LAT * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


# A device: its radius, and where it is relative to its radius (0.98-1.02: at the edge).
_DEVICE = st.tuples(st.integers(300, MAX_NEAR_ME_RADIUS_M),
                    st.one_of(st.floats(0.0, 1.5), st.floats(0.98, 1.02)),
                    st.floats(0, 2 * math.pi))


async def _setup(w: SyncRedisWorld, devices: list[tuple[int, float, float]], extent_m: float
                 ) -> list[str]:
    await w.pool.execute("TRUNCATE deliveries, erased_device_tags, zones, devices "
                         "RESTART IDENTITY CASCADE")
    await w.redis.delete(*NEAR_ME.geo_keys, NEAR_ME.seen_key)
    ids = []
    for radius, reach, bearing in devices:
        device = str(await w.pool.fetchval(
            """INSERT INTO devices (platform, token, secret_hash, near_me_radius_m)
               VALUES ('fcm', $1, '\\x00', $2) RETURNING id""", secrets.token_hex(16), radius))
        lat, lon = _offset(LAT, LON, bearing, (radius + extent_m) * reach)
        await NEAR_ME.report(w.redis, device, lat, lon, radius_m=radius)
        ids.append(device)
    return ids


async def _audience(w: SyncRedisWorld, near_me: positions.NearMePositions, geometry: str
                    ) -> set[str]:
    near = await audience.near_positions(w.pool, w.redis, near_me, geometry, (LAT, LON),
                                         forget=False)
    rows = await matching.neighbours(w.pool, geometry, "structure_fire", (LAT, LON), near)
    return {str(r["id"]) for r in rows}


def _square(half_m: float, shift: tuple[float, float]) -> str:
    """A square area of half-side ``half_m`` (about), its centre moved off the point by
    ``shift`` (fractions of the half-side): the point stays inside, not in the middle,
    as a CAP area's public point may be."""
    dlat = half_m / _M_PER_DEG_LAT
    dlon = half_m / (_M_PER_DEG_LAT * math.cos(math.radians(LAT)))
    lat, lon = LAT + shift[0] * dlat, LON + shift[1] * dlon
    return (f"POLYGON(({lon - dlon} {lat - dlat}, {lon + dlon} {lat - dlat}, "
            f"{lon + dlon} {lat + dlat}, {lon - dlon} {lat + dlat}, {lon - dlon} {lat - dlat}))")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(devices=st.lists(_DEVICE, min_size=1, max_size=12),
       area=st.one_of(st.none(), st.floats(50, 1500)),
       shift=st.tuples(st.floats(-0.9, 0.9), st.floats(-0.9, 0.9)))
def test_the_bands_find_every_near_me_device_one_set_would(
        world: SyncRedisWorld, devices: list[tuple[int, float, float]], area: float | None,
        shift: tuple[float, float]) -> None:
    """Against every position within twice the widest radius (``in_full``): nothing
    the bands' searches leave out, nor the reach of an area measured from its point."""
    geometry = f"POINT({LON} {LAT})" if area is None else _square(area, shift)
    extent = 0.0 if area is None else area * math.sqrt(2) * (1 + max(map(abs, shift)))
    ids = world.run(_setup(world, devices, extent))
    banded = world.run(_audience(world, NEAR_ME, geometry))
    in_full = world.run(_audience(world, NEAR_ME.in_full(), geometry))
    assert banded == in_full
    assert banded <= set(ids)


def test_a_position_is_kept_in_the_band_of_its_radius_and_moves_with_it(
        world: SyncRedisWorld) -> None:
    async def scenario() -> list[Any]:
        await world.redis.delete(*NEAR_ME.geo_keys, NEAR_ME.seen_key)
        await NEAR_ME.report(world.redis, "d", LAT, LON, radius_m=300)
        where = [await world.redis.geopos(k, "d") != [None] for k in NEAR_ME.geo_keys]
        await NEAR_ME.move(world.redis, "d", 4500)
        moved = [await world.redis.geopos(k, "d") != [None] for k in NEAR_ME.geo_keys]
        await NEAR_ME.report(world.redis, "d", LAT, LON, radius_m=2000)
        again = [await world.redis.geopos(k, "d") != [None] for k in NEAR_ME.geo_keys]
        await NEAR_ME.forget(world.redis, ["d"])
        gone = [await world.redis.geopos(k, "d") != [None] for k in NEAR_ME.geo_keys]
        return [where, moved, again, gone]

    where, moved, again, gone = world.run(scenario())
    names = NEAR_ME.geo_keys
    assert [n for n, w in zip(names, where, strict=True) if w] == [NEAR_ME.band(300)]
    assert NEAR_ME.band(300) == keys.NEAR_ME_BANDS[0][1]
    assert [n for n, w in zip(names, moved, strict=True) if w] == [keys.NEAR_ME_GEO]
    assert [n for n, w in zip(names, again, strict=True) if w] == [NEAR_ME.band(2000)]
    assert not any(gone)
