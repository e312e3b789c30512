"""What the matcher itself costs per device: one incident, N devices, the real code.

    python -m loadtest.bench_matcher [--devices 80000] [--rounds 3] [--per-hour 0|10]
                                     [--shards 8] [--item 2000]

A private PostgreSQL+PostGIS and Redis (``.geopush/bench-matcher/``, fresh database
each run) unless GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL are set. It seeds
``--devices`` devices (half APNs, half FCM) whose zone covers one point, then, per
round, a new incident at that point matched by ``Matcher.match_incident`` and the
work items it hands out handled by ``Matcher.handle_items`` in the same process (so
the process's CPU is all the matcher's work for the fan-out: the streamed read, the
payloads, the enqueue scripts, the items). The push streams are emptied between
rounds.

It prints per round: devices enqueued, the matcher's CPU per device enqueued
(``time.process_time``), the time from the start to the first push on a stream and to
the last, and PostgreSQL's and Redis's CPU per device (their processes' /proc, when
they are the private ones).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
from pathlib import Path

from loadtest.bench_common import descendants, proc_cpu, start_services

WORKDIR = Path(__file__).resolve().parent.parent / ".geopush" / "bench-matcher"
AGENCY = "bench-matcher"
POINT = (47.66707, -122.301946)


async def _seed(database_url: str, devices: int) -> None:
    import asyncpg

    from server.store.migrate import migrate

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """INSERT INTO agencies (id, name, timezone, signing_secret)
               VALUES ($1, 'Matcher benchmark', 'UTC', 'not-used')
               ON CONFLICT (id) DO NOTHING""", AGENCY)
        await conn.execute(
            """WITH d AS (
                 INSERT INTO devices (platform, token, secret_hash, timezone)
                 SELECT CASE WHEN g % 2 = 0 THEN 'apns' ELSE 'fcm' END,
                        CASE WHEN g % 2 = 0
                             THEN encode(sha256(convert_to('m-' || g, 'UTF8')), 'hex')
                             ELSE 'm-' || g || ':APA91b' || md5(g::text) || md5('x' || g)
                                  || md5('y' || g) || md5('z' || g) END,
                        '\\x00'::bytea, 'America/Los_Angeles'
                   FROM generate_series(1, $1::int) g
                 RETURNING id)
               INSERT INTO zones (device_id, name, geom)
               SELECT d.id, 'home', ST_Multi(ST_Buffer(
                          ST_SetSRID(ST_MakePoint($2, $3), 4326)::geography, 1000,
                          'quad_segs=8')::geometry)
                 FROM d""", devices, POINT[1], POINT[0])
        await conn.execute("VACUUM ANALYZE devices")
        await conn.execute("VACUUM ANALYZE zones")
    finally:
        await conn.close()


async def _incident(database_url: str, n: int) -> str:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return str(await conn.fetchval(
            """INSERT INTO incidents (agency_id, external_id, revision, status, call_type,
                                      category, occurred_at, geom, public_point,
                                      public_geom, public_location, decision)
               VALUES ($1, $2, now(), 'active', 'Fire in Building', 'structure_fire',
                       now() - interval '1 minute',
                       ST_SetSRID(ST_MakePoint($3, $4), 4326),
                       ST_SetSRID(ST_MakePoint($3, $4), 4326),
                       ST_SetSRID(ST_MakePoint($3, $4), 4326),
                       '5300 block of 24th Ave NE', 'alert')
               RETURNING id""", AGENCY, f"bench-{n}-{time.time_ns()}", POINT[1], POINT[0]))
    finally:
        await conn.close()


def _cpu(pid: int | None) -> float:
    return sum(proc_cpu(p) for p in descendants(pid)) if pid else 0.0


async def _round(database_url: str, redis_url: str, args: argparse.Namespace, n: int,
                 pids: dict[str, int]) -> dict[str, float]:
    import redis.asyncio as aioredis

    from server import keys
    from server.store.db import create_pool
    from workers.fanout import FanoutLimits
    from workers.matcher import Matcher
    from workers.streams import StreamConsumer

    pool = await create_pool(database_url, min_size=1, max_size=4)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    streams = [s for p in keys.PLATFORMS for s in keys.push_streams(p, args.shards)]
    try:
        await redis.delete(*streams, keys.FANOUT_WORK_STREAM)
        limits = FanoutLimits(first_page=min(500, args.item), page=args.item,
                              split_after=2 * args.item, backlog=10**9)
        matcher = Matcher(pool, redis, device_pushes_per_hour=args.per_hour,
                          shards=args.shards, limits=limits)
        work = StreamConsumer(redis, keys.FANOUT_WORK_STREAM, keys.MATCHER_GROUP, "bench",
                              batch=1)
        await work.setup()
        incident_id = await _incident(database_url, n)
        await pool.execute("SELECT 1")
        first_push: list[float] = []

        async def watch() -> None:
            # The first entry on any push stream: when the first push could leave.
            while not first_push:
                for stream in streams:
                    if await redis.xlen(stream):
                        first_push.append(time.perf_counter())
                        return
                await asyncio.sleep(0.002)

        watcher = asyncio.create_task(watch())
        pg0, redis0 = _cpu(pids.get("postgres")), _cpu(pids.get("redis"))
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = await matcher.match_incident(incident_id, dt.datetime.now(dt.UTC))
        enqueued = result.enqueued
        while items := await work.read(block=False):
            before = sum([await redis.xlen(s) for s in streams])
            await matcher.handle_items(work, items)
            enqueued += sum([await redis.xlen(s) for s in streams]) - before
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        pg, rcpu = _cpu(pids.get("postgres")) - pg0, _cpu(pids.get("redis")) - redis0
        await asyncio.wait_for(watcher, 5)
        # The watcher's and the counting's own commands are in ``cpu``: a few per item,
        # against thousands of devices.
        return {"devices": result.candidates, "enqueued": enqueued, "items": result.items,
                "cpu_us": cpu / max(1, enqueued) * 1e6, "wall_s": wall,
                "first_ms": (first_push[0] - wall0) * 1000,
                "pg_us": pg / max(1, enqueued) * 1e6, "redis_us": rcpu / max(1, enqueued) * 1e6}
    finally:
        await redis.aclose()
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_matcher",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=80_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-hour", type=int, default=0,
                        help="the devices' hourly limit (0: off, as the issue measured)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--item", type=int, default=2000, help="devices per work item")
    args = parser.parse_args(argv)

    WORKDIR.mkdir(parents=True, exist_ok=True)
    services = start_services(WORKDIR, "geopush_bench_matcher")
    try:
        asyncio.run(_seed(services.database_url, args.devices))
        pids = services.pids()
        print(f"{'round':>5} {'enqueued':>9} {'items':>6} {'matcher CPU':>12} "
              f"{'first push':>11} {'last push':>10} {'PG CPU':>9} {'Redis CPU':>10}")
        for n in range(args.rounds):
            r = asyncio.run(_round(services.database_url, services.redis_url, args, n, pids))
            print(f"{n + 1:>5} {int(r['enqueued']):>9} {int(r['items']):>6} "
                  f"{r['cpu_us']:>9.1f} µs {r['first_ms']:>8.0f} ms {r['wall_s']:>8.2f} s "
                  f"{r['pg_us']:>6.1f} µs {r['redis_us']:>7.1f} µs", flush=True)
    finally:
        services.stop()


if __name__ == "__main__":
    main()
