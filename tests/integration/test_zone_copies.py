"""Zones carry a copy of their device's match columns (migration 0010); the match reads
the copy. Whatever happens to devices, through the store's own functions (preferences,
profile, token rotated, moved to another device, declared gone, zones replaced,
neighbourhood zones, erasure), the copies equal the devices' columns and the match
gives exactly what the join to ``devices`` it replaced gives (real PostGIS).

Also the two races the triggers' row lock settles: a zone inserted while its device is
being updated, in either order, ends with the device's committed values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain.neighbourhood_import import Neighbourhood
from server.domain.zones import Circle, NeighbourhoodZone, Zone
from server.store import devices as store
from server.store import matching
from server.store.migrate import discover, migrate
from server.store.neighbourhoods import import_neighbourhoods
from server.store.positions import Nearby
from tests.conftest import Services
from tests.helpers import SyncWorld

T = TypeVar("T")
LAT, LON = 47.6097, -122.3387
POINT = f"POINT({LON} {LAT})"
AREA = (f"POLYGON(({LON - 0.01} {LAT - 0.01}, {LON + 0.01} {LAT - 0.01}, "
        f"{LON + 0.01} {LAT + 0.01}, {LON - 0.01} {LAT + 0.01}, {LON - 0.01} {LAT - 0.01}))")
DEVICES = 4
TOKENS = [secrets.token_hex(32) for _ in range(5)]

# The match as it was before 0010: the zones found joined to devices for the columns.
# The oracle the copies must reproduce.
_JOINED = """
SELECT DISTINCT ON (d.id) d.id, d.platform, d.token, d.locale, d.timezone,
       d.quiet_start, d.quiet_end
  FROM (
      SELECT z.device_id FROM zones z WHERE ST_Intersects(z.geom, {target})
      UNION ALL
      SELECT p.device_id
        FROM unnest(${ids}::uuid[], ${lons}::float8[], ${lats}::float8[])
             AS p(device_id, lon, lat)
        JOIN devices nd ON nd.id = p.device_id
       WHERE nd.near_me_radius_m IS NOT NULL
         AND ST_DWithin(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)::geography,
                        ({target})::geography, nd.near_me_radius_m)
  ) m
  JOIN devices d ON d.id = m.device_id
 WHERE d.token_disabled_at IS NULL
   AND {categories}
"""
# A structure fire at POINT: $1 geometry, $2 category, $3-$5 positions, $6-$7 public point.
_JOINED_POINT = _JOINED.format(
    target="""geopush_public_geom(ST_SetSRID($1::text::geometry, 4326),
                                  ST_SetSRID(ST_MakePoint($6::float8, $7::float8), 4326))""",
    ids=3, lons=4, lats=5, categories="(d.categories IS NULL OR $2 = ANY (d.categories))")
# A manual alert's AREA, every category: $1 area, $2-$4 positions.
_JOINED_AREA = _JOINED.format(target="ST_SetSRID($1::text::geometry, 4326)",
                              ids=2, lons=3, lats=4, categories="true")

_STALE = """
SELECT count(*) FROM zones z JOIN devices d ON d.id = z.device_id
 WHERE (z.platform, z.token, z.token_disabled_at, z.locale, z.timezone, z.categories,
        z.quiet_start, z.quiet_end)
       IS DISTINCT FROM
       (d.platform, d.token, d.token_disabled_at, d.locale, d.timezone, d.categories,
        d.quiet_start, d.quiet_end)
"""


class World(SyncWorld):
    def __init__(self, services: Services) -> None:
        super().__init__(services.database_url, max_size=3)
        self.neighbourhood = ""


@pytest.fixture(scope="module")
def world(services: Services) -> Iterator[World]:
    w = World(services)
    yield w
    w.close()


def _square(lat: float, lon: float, d: float) -> str:
    ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d],
            [lon - d, lat - d]]
    return json.dumps({"type": "MultiPolygon", "coordinates": [[ring]]})


async def _reset(w: World) -> list[str]:
    await w.pool.execute("TRUNCATE deliveries, zones, devices, neighbourhoods "
                         "RESTART IDENTITY CASCADE")
    [imported] = await import_neighbourhoods(w.pool, [Neighbourhood(
        "downtown", "Downtown", _square(LAT, LON, 0.005))])
    w.neighbourhood = imported.id
    ids = []
    for i in range(DEVICES):
        ids.append(await store.create_device(
            w.pool, platform="apns", token=TOKENS[i], timezone="UTC", locale="en",
            secret="s"))
        await store.replace_zones(w.pool, ids[-1], _zones(w, i % 3))
    return ids


def _zones(w: World, kind: int) -> list[Zone]:
    """Zone sets: none, one circle on the point, or two zones (a circle and the
    neighbourhood) that both meet it, so a device is found twice."""
    sets: list[list[Zone]] = [
        [], [Circle("home", LAT, LON, 300)],
        [Circle("work", LAT + 0.001, LON, 500), NeighbourhoodZone("downtown", w.neighbourhood)]]
    return sets[kind]


# One step: what a device's owner, a gateway or an erasure does to it.
_STEP = st.one_of(
    st.tuples(st.just("preferences"), st.integers(0, DEVICES - 1),
              st.sampled_from([None, ["structure_fire"], ["medical", "flood"], []]),
              st.sampled_from([None, (dt.time(22), dt.time(7))]),
              st.sampled_from([None, 500])),
    st.tuples(st.just("profile"), st.integers(0, DEVICES - 1),
              st.sampled_from([None, "Europe/Paris", "America/Los_Angeles"]),
              st.sampled_from([None, "fr", "es"])),
    st.tuples(st.just("token"), st.integers(0, DEVICES - 1), st.sampled_from(TOKENS)),
    st.tuples(st.just("gone"), st.integers(0, DEVICES - 1),
              st.sampled_from(["Unregistered", "BadDeviceToken"])),
    st.tuples(st.just("zones"), st.integers(0, DEVICES - 1), st.integers(0, 2)),
    st.tuples(st.just("erase"), st.integers(0, DEVICES - 1)),
    st.tuples(st.just("register"), st.integers(0, DEVICES - 1), st.sampled_from(TOKENS),
              st.integers(0, 2)),
)


async def _apply(w: World, ids: list[str], step: tuple[Any, ...]) -> None:
    kind, i = step[0], step[1]
    device = ids[i]
    try:
        if kind == "preferences":
            quiet = step[3] or (None, None)
            await store.set_preferences(w.pool, device, categories=step[2],
                                        quiet_start=quiet[0], quiet_end=quiet[1],
                                        responder=False, near_me_radius_m=step[4])
        elif kind == "profile":
            await store.update_profile(w.pool, device, timezone=step[2], locale=step[3])
        elif kind == "token":
            await store.set_token(w.pool, device, "apns", step[2])
        elif kind == "gone":
            token = await w.pool.fetchval("SELECT token FROM devices WHERE id = $1::uuid",
                                          device)
            if token is not None:
                await store.disable_token(w.pool, device, token, step[2])
        elif kind == "zones":
            if await w.pool.fetchval("SELECT 1 FROM devices WHERE id = $1::uuid", device):
                await store.replace_zones(w.pool, device, _zones(w, step[2]))
        elif kind == "erase":
            await store.delete_device(w.pool, device)
        elif kind == "register":
            ids[i] = await store.create_device(w.pool, platform="apns", token=step[2],
                                               timezone="UTC", locale="en", secret="s")
            await store.replace_zones(w.pool, ids[i], _zones(w, step[3]))
    except store.TokenGone:
        pass  # refused, as the API refuses it: nothing changed


async def _point_match(w: World, near: list[Nearby], category: str) -> list[Any]:
    public = (round(LAT, 3), round(LON, 3))
    rows = await matching.neighbours(w.pool, POINT, category, public, near)
    streamed = []
    async with aclosing(matching.neighbour_pages(w.pool, POINT, category, public, near,
                                                 first=2, page=3)) as pages:
        async for page in pages:
            streamed.extend(page)
    # The streaming form may give a device twice; it is the same device's same row.
    assert sorted(set(map(tuple, streamed))) == sorted(map(tuple, rows))
    return sorted(map(tuple, rows))


async def _joined(w: World, near: list[Nearby], category: str | None) -> list[Any]:
    positions = ([n.device_id for n in near], [n.lon for n in near], [n.lat for n in near])
    if category is None:
        rows = await w.pool.fetch(_JOINED_AREA, AREA, *positions)
    else:
        rows = await w.pool.fetch(_JOINED_POINT, POINT, category, *positions,
                                  round(LON, 3), round(LAT, 3))
    return sorted(map(tuple, rows))


async def _check(w: World) -> None:
    assert await w.pool.fetchval(_STALE) == 0
    live = [r["id"] for r in await w.pool.fetch("SELECT id::text FROM devices")]
    near = [Nearby(d, 10.0, LAT + 0.002, LON) for d in live[:2]]
    for category in ("structure_fire", "medical"):
        assert await _point_match(w, near, category) == await _joined(w, near, category)
    area = []
    async with aclosing(matching.area_neighbour_pages(w.pool, AREA, near, first=2,
                                                      page=3)) as pages:
        async for page in pages:
            area.extend(page)
    expected = await _joined(w, near, None)
    assert sorted(set(map(tuple, area))) == expected
    assert await matching.area_audience_size(w.pool, AREA, near) == len(expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, max_size=12))
def test_the_match_on_copies_equals_the_join_after_any_device_changes(
        world: World, steps: list[tuple[Any, ...]]) -> None:
    ids = world.run(_reset(world))
    for step in steps:
        world.run(_apply(world, ids, step))
    world.run(_check(world))


def test_a_match_finds_someone_in_the_checks_above(world: World) -> None:
    """The equality above is not vacuous: the starting devices are matched."""
    ids = world.run(_reset(world))
    found = {r[0] for r in world.run(_point_match(world, [], "structure_fire"))}
    assert {str(d) for d in found} == {ids[1], ids[2]}  # ids[0] and ids[3]: no zone
    # A token declared gone drops out, through its zones' copies.
    world.run(store.disable_token(world.pool, ids[1], TOKENS[1], "Unregistered"))
    found = {str(r[0]) for r in world.run(_point_match(world, [], "structure_fire"))}
    assert found == {ids[2]}


def test_a_zone_for_a_missing_device_is_refused_as_the_foreign_key_refuses_it(
        world: World) -> None:
    world.run(_reset(world))
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        world.run(world.pool.execute(
            """INSERT INTO zones (device_id, name, geom)
               VALUES (gen_random_uuid(), 'x', ST_Multi(ST_Buffer(
                   ST_SetSRID(ST_MakePoint(0, 0), 4326), 0.01)))"""))


async def _blocked(pool: asyncpg.Pool, pid: int) -> None:
    """Until backend ``pid`` waits for a lock (PostgreSQL has no event to await)."""
    waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
    while True:
        if await pool.fetchval(waiting, pid):
            return
        await asyncio.sleep(0.01)


_ZONE = """INSERT INTO zones (device_id, name, geom)
           VALUES ($1::uuid, 'race', ST_Multi(ST_Buffer(
               ST_SetSRID(ST_MakePoint($2, $3), 4326), 0.001)))"""
_FRENCH = "UPDATE devices SET locale = 'fr' WHERE id = $1::uuid"


async def _zone_first(w: World, device: str) -> None:
    """A zone's transaction reads the device; an update of it waits for the commit,
    then updates the new zone too."""
    async with w.pool.acquire() as zone_conn, w.pool.acquire() as device_conn:
        tx = zone_conn.transaction()
        await tx.start()
        await zone_conn.execute(_ZONE, device, LON, LAT)
        update = asyncio.ensure_future(device_conn.execute(_FRENCH, device))
        await _blocked(w.pool, device_conn.get_server_pid())
        await tx.commit()
        await update


async def _device_first(w: World, device: str) -> None:
    """A device being updated: a zone inserted meanwhile waits, then copies the
    update."""
    async with w.pool.acquire() as zone_conn, w.pool.acquire() as device_conn:
        tx = device_conn.transaction()
        await tx.start()
        await device_conn.execute(_FRENCH, device)
        insert = asyncio.ensure_future(zone_conn.execute(_ZONE, device, LON, LAT))
        await _blocked(w.pool, zone_conn.get_server_pid())
        await tx.commit()
        await insert


@pytest.mark.parametrize("race", [_zone_first, _device_first])
def test_a_zone_written_while_its_device_changes_ends_with_the_committed_values(
        world: World, race: Any) -> None:
    ids = world.run(_reset(world))
    world.run(race(world, ids[1]))
    locales = world.run(world.pool.fetch(
        "SELECT locale FROM zones WHERE device_id = $1::uuid", ids[1]))
    assert [r["locale"] for r in locales] == ["fr", "fr"]
    assert world.run(world.pool.fetchval(_STALE)) == 0



async def test_migration_0010_fills_the_copies_of_existing_zones(
        services: Services, tmp_path: Path) -> None:
    """A database with devices and zones from before 0010 gets them copied."""
    for migration in discover():
        if migration.version < 10:
            (tmp_path / migration.path.name).symlink_to(migration.path)
    admin = await asyncpg.connect(services.database_url)
    fresh = f"zone_copies_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{fresh}"')
    url = services.database_url.rsplit("/", 1)[0] + "/" + fresh
    try:
        await migrate(url, tmp_path)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                """INSERT INTO devices (platform, token, secret_hash, locale, categories,
                                        quiet_start, quiet_end, token_disabled_at)
                   VALUES ('apns', 'a', '\\x00', 'fr', '{medical}', '22:00', '07:00', NULL),
                          ('fcm', 'b', '\\x00', 'en', NULL, NULL, NULL, now())""")
            await conn.execute(
                """INSERT INTO zones (device_id, name, geom)
                   SELECT id, n, ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint(0, 0), 4326), 0.01))
                     FROM devices, (VALUES ('home'), ('work')) AS v(n)""")
            assert [m.version for m in await migrate(url)] == [
                m.version for m in discover() if m.version >= 10]
            assert await conn.fetchval(_STALE) == 0
            assert await conn.fetchval("SELECT count(*) FROM zones WHERE token IS NOT NULL") == 4
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE "{fresh}" WITH (FORCE)')
        await admin.close()
