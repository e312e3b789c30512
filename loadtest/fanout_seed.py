"""A metro's subscribers, for the fan-out benchmark and query-plan checks.

``devices`` phones over greater Seattle, half APNs and half FCM, each with one circle
zone of 300 m to 2 km (stored as the API stores a circle: a 33-vertex polygon buffered
on the sphere, in a GiST-indexed MultiPolygon column); a share of them (``near_me``)
also use "near me": a radius of 300 m to 2 km in their preferences and a current
position in Redis (GEO set), reported now, within its time-to-live.

The box is sized so that a point in the city is covered by about 7,000 zones at 1M
devices, and a 3 km circle downtown by about 80,000: the fan-outs issue 13 measured.

    python -m loadtest.fanout_seed --database-url URL [--redis-url URL]
                                   [--devices 1000000] [--near-me 0.1]

seeds into an existing database (migrated first). The fan-out benchmark keeps a seeded
copy as a template database (``ensure_template``) so a second run copies it in seconds
instead of seeding again.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import subprocess
import sys
import time
from dataclasses import dataclass

import asyncpg

from server.dev.devenv import PrivatePostgres
from server.store import positions
from server.store.migrate import SQL_DIR, migrate
from server.store.redisclient import RedisClient, connect

# min_lat, min_lon, max_lat, max_lon: Seattle and its nearest suburbs (about 33 x 20 km)
AREA = (47.45, -122.45, 47.75, -122.18)
TOKEN_PREFIX = "fanout-"  # noqa: S105 (not a secret: marks the seeded phones)
MIN_RADIUS_M, MAX_RADIUS_M = 300, 2000
CHUNK = 100_000
# The seeded phones: no real registration has this secret hash.
SEEDED = "secret_hash = '\\x00'::bytea"
# Bump when what the SQL below writes changes, so cached templates are not reused.
SEED_VERSION = 1

# Devices and their one zone in one statement, rows $1 .. $2 of the series. APNs tokens
# are 64 hex digits as Apple's are; FCM tokens only need to be distinct.
_SEED_CHUNK = f"""
WITH d AS (
  INSERT INTO devices (platform, token, secret_hash, timezone, near_me_radius_m)
  SELECT CASE WHEN g % 2 = 0 THEN 'apns' ELSE 'fcm' END,
         CASE WHEN g % 2 = 0
              THEN encode(sha256(convert_to('{TOKEN_PREFIX}' || g, 'UTF8')), 'hex')
              ELSE '{TOKEN_PREFIX}' || g || ':APA91b' || md5(g::text) END,
         '\\x00'::bytea, 'America/Los_Angeles',
         CASE WHEN random() < $3
              THEN {MIN_RADIUS_M} + floor(random() * {MAX_RADIUS_M - MIN_RADIUS_M + 1})::int
         END
    FROM generate_series($1::int, $2::int) AS g
  RETURNING id
)
INSERT INTO zones (device_id, name, geom)
SELECT id, 'home',
       ST_Multi(ST_Buffer(
         ST_SetSRID(ST_MakePoint({AREA[1]} + random() * {AREA[3] - AREA[1]:.4f},
                                 {AREA[0]} + random() * {AREA[2] - AREA[0]:.4f}), 4326)::geography,
         {MIN_RADIUS_M} + random() * {MAX_RADIUS_M - MIN_RADIUS_M}, 'quad_segs=8')::geometry)
  FROM d
"""  # noqa: S608 (module constants only)


@dataclass(frozen=True)
class SeedSpec:
    devices: int
    near_me: float      # share of devices using near me, 0..1
    seed: float = 0.42  # PostgreSQL's setseed: the same phones every time

    def digest(self) -> str:
        """What a cached copy depends on: these figures, the SQL and the migrations (their
        text: a migration edited on a branch before it lands makes a new copy)."""
        migrations = ",".join(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}"
                              for p in sorted(SQL_DIR.glob("*.sql")))
        text = f"{SEED_VERSION}|{self.devices}|{self.near_me}|{self.seed}|{AREA}|{migrations}"
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def log(message: str) -> None:
    print(f"[seed] {message}", file=sys.stderr, flush=True)


async def seed_database(database_url: str, spec: SeedSpec) -> None:
    """Migrate ``database_url`` and add ``spec.devices`` devices with one zone each.

    The zones' indexes are dropped while the rows go in and built again after (a GiST
    index built once over 1M polygons takes seconds; kept up row by row it takes
    minutes), with the definitions the migrations gave them."""
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        started = time.monotonic()
        indexes = await conn.fetch(
            """SELECT indexname, indexdef FROM pg_indexes
                WHERE schemaname = 'public' AND tablename = 'zones'
                  AND indexname NOT IN (SELECT conname FROM pg_constraint)""")
        for row in indexes:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        await conn.execute("SELECT setseed($1)", spec.seed)
        for first in range(1, spec.devices + 1, CHUNK):
            last = min(spec.devices, first + CHUNK - 1)
            await conn.execute(_SEED_CHUNK, first, last, spec.near_me)
            log(f"{last:,} of {spec.devices:,} devices ({time.monotonic() - started:.0f} s)")
        for row in indexes:
            await conn.execute(row["indexdef"])
        log(f"indexes rebuilt ({time.monotonic() - started:.0f} s)")
        await conn.execute("VACUUM ANALYZE devices")
        await conn.execute("VACUUM ANALYZE zones")
        log(f"seeded {spec.devices:,} devices in {time.monotonic() - started:.0f} s")
    finally:
        await conn.close()


async def report_positions(database_url: str, redis: RedisClient, spec: SeedSpec,
                           ttl_s: float = 7200.0) -> int:
    """Every near-me device reports a position in the area now, as the app would
    (``PUT /v1/devices/{id}/location``); the number of positions."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            f"""SELECT id::text, near_me_radius_m FROM devices
                WHERE near_me_radius_m IS NOT NULL AND {SEEDED}
                ORDER BY id""")  # noqa: S608 (a constant)
    finally:
        await conn.close()
    near_me = positions.near_me(ttl_s)
    rng = random.Random(spec.seed)
    min_lat, min_lon, max_lat, max_lon = AREA
    now = time.time()
    for start in range(0, len(rows), 5000):
        chunk = rows[start:start + 5000]
        bands: dict[str, list[float | str]] = {}
        for row in chunk:
            # Into the band of the device's radius, as a report through the API does.
            bands.setdefault(near_me.band(row["near_me_radius_m"]), []).extend(
                [rng.uniform(min_lon, max_lon), rng.uniform(min_lat, max_lat), row["id"]])
        async with redis.pipeline(transaction=False) as pipe:
            for key, places in bands.items():
                pipe.geoadd(key, places)
            pipe.zadd(near_me.seen_key, dict.fromkeys((r["id"] for r in chunk), now))
            await pipe.execute()
    return len(rows)


# -- a seeded copy kept as a template ----------------------------------------------------


def _psql(pg: PrivatePostgres, sql: str, database: str = "postgres") -> str:
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", database,
         "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        check=True, capture_output=True, text=True)
    return out.stdout.strip()


def ensure_template(pg: PrivatePostgres, spec: SeedSpec) -> str:
    """The name of a template database seeded to ``spec``, seeding it if there is none
    (or only a half-seeded one from a killed run, which is dropped). Templates for other
    specs or migrations are kept (the code before and after a change can alternate);
    ``DROP DATABASE`` them, or delete ``.geopush/bench-fanout``, to free the disk."""
    name = f"geopush_fanout_tpl_{spec.digest()}"
    done = f"seeded {spec}"
    listed = _psql(pg, "SELECT datname || '|' || coalesce(shobj_description(oid, "
                       "'pg_database'), '') FROM pg_database "
                       "WHERE datname LIKE 'geopush\\_fanout\\_tpl\\_%'")
    for line in listed.splitlines():
        old, comment = line.split("|", 1)
        if old == name and comment == done:
            log(f"using the seeded template {name}")
            return name
        if comment.startswith("seeded "):
            continue
        _psql(pg, f'DROP DATABASE IF EXISTS "{old}"')
    log(f"seeding {spec.devices:,} devices into the template {name} (once; later runs copy it)")
    _psql(pg, f'CREATE DATABASE "{name}"')
    asyncio.run(seed_database(pg.url(name), spec))
    _psql(pg, f"COMMENT ON DATABASE \"{name}\" IS '{done}'")
    return name


def copy_template(pg: PrivatePostgres, template: str, database: str) -> str:
    """A fresh ``database`` copied from ``template`` (files copied, not WAL-logged row
    by row: seconds for a million zones); its URL."""
    _psql(pg, f'DROP DATABASE IF EXISTS "{database}"')
    _psql(pg, f'CREATE DATABASE "{database}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    return pg.url(database)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fanout_seed",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", default=None,
                        help="also report the near-me devices' positions here")
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--near-me", type=float, default=0.1,
                        help="share of devices using near me (default 0.1)")
    args = parser.parse_args(argv)
    spec = SeedSpec(args.devices, args.near_me)

    async def run() -> None:
        await seed_database(args.database_url, spec)
        if args.redis_url:
            redis = await connect(args.redis_url)
            try:
                log(f"{await report_positions(args.database_url, redis, spec):,} positions")
            finally:
                await redis.aclose()

    asyncio.run(run())


if __name__ == "__main__":
    main()
