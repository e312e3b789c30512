"""The match query's plan and cost at a metro's scale, against the bare PostGIS count.

    python -m loadtest.bench_match_plans [--devices 1000000] [--runs 5]

A private PostgreSQL+PostGIS (``.geopush/bench-plans/``) unless GEOPUSH_DATABASE_URL
and GEOPUSH_REDIS_URL are set, seeded by ``loadtest.fanout_seed`` (``--devices``
phones over greater Seattle, one 300 m-2 km circle each; the seeded database is kept
as a template, so a second run starts in seconds). Two incidents, matched on their
public geometry as the matcher matches them: a structure fire (a point in the city,
about 7,000 zones at 1M) and a 3 km CAP circle downtown (about 80,000).

For each it prints, warm, the best of ``--runs`` wall times of one round trip:

- ``bare``: ``SELECT count(*) FROM zones WHERE ST_Intersects(geom, <public geom>)``
  (and the count), with the settings the matcher's cursor runs with (custom plan, no
  JIT, no bitmap scan unless ``--bitmap``);
- ``match``: the matcher's query (``server.store.matching``, the streaming form: zones
  and near-me positions, the devices joined, preferences applied), run as the
  matcher runs it, a cursor (so with a cursor's plan), every row produced but none
  sent (``MOVE ALL``); its rows, and the ratio to ``bare`` (issue 13: at most 1.5);
- ``join``: the same before migration 0010, for comparison in the same run: the zones
  found joined to ``devices`` for the device's columns (with 0009's covering index,
  ``devices_match``, which 0010 dropped and this benchmark builds again on its copy);
- ``to client``: the match, read as the matcher reads it (``neighbour_pages``: pages
  of 500, then 2,000 rows, decoded by asyncpg): to the first page, and to the last;

and, with ``--plans``, the plans PostgreSQL chose for both (``EXPLAIN``, custom plans:
the matcher forces them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from loadtest.bench_common import start_services

WORKDIR = Path(__file__).resolve().parent.parent / ".geopush" / "bench-plans"
FIRE = (47.66707, -122.301946)       # 5300 24th Ave NE, the first call of the sample
DOWNTOWN = (47.6097, -122.3387)
AREA_RADIUS_M = 3000

_PUBLIC = """geopush_public_geom(ST_SetSRID($1::text::geometry, 4326),
                                 ST_SetSRID(ST_MakePoint($2::float8, $3::float8), 4326))"""
_BARE = f"SELECT count(*) FROM zones WHERE ST_Intersects(geom, {_PUBLIC})"  # noqa: S608
# What ``matching._pages`` sets for its cursor (--bitmap: without the last).
_AS_THE_MATCHER = ("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off; "
                   "SET LOCAL enable_bitmapscan = off")
# The match before migration 0010 (as the matcher's cursor ran it): each zone found
# joined to devices for the columns zones now carry.
_JOINED = """
SELECT d.id, d.platform, d.token, d.locale, d.timezone, d.quiet_start, d.quiet_end
  FROM (
      SELECT z.device_id FROM zones z
       WHERE ST_Intersects(z.geom, geopush_public_geom(
                 ST_SetSRID($1::text::geometry, 4326),
                 ST_SetSRID(ST_MakePoint($6::float8, $7::float8), 4326)))
      UNION ALL
      SELECT p.device_id
        FROM unnest($3::uuid[], $4::float8[], $5::float8[]) AS p(device_id, lon, lat)
        JOIN devices nd ON nd.id = p.device_id
       WHERE nd.near_me_radius_m IS NOT NULL
         AND ST_DWithin(ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)::geography,
                        geopush_public_geom(
                            ST_SetSRID($1::text::geometry, 4326),
                            ST_SetSRID(ST_MakePoint($6::float8, $7::float8), 4326)
                        )::geography, nd.near_me_radius_m)
  ) m
  JOIN devices d ON d.id = m.device_id
 WHERE d.token_disabled_at IS NULL
   AND (d.categories IS NULL OR $2 = ANY (d.categories))
"""
_DEVICES_MATCH = """
CREATE INDEX IF NOT EXISTS devices_match ON devices (id)
    INCLUDE (platform, token, locale, timezone, quiet_start, quiet_end, categories)
    WHERE token_disabled_at IS NULL;
ANALYZE devices
"""
_CIRCLE = """SELECT ST_AsText(ST_Buffer(ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography,
                                        $3, 'quad_segs=8')::geometry)"""


def _match_args(geometry: str, public: tuple[float, float]) -> tuple[Any, ...]:
    """The matcher's parameters (``matching.neighbour_pages``): no near-me positions."""
    lat, lon = public
    return (geometry, "structure_fire", [], [], [], lon, lat)


def _shape(plan: dict[str, Any], depth: int = 0) -> list[str]:
    node = plan["Node Type"]
    extra = plan.get("Index Name") or plan.get("Relation Name") or ""
    rows = plan.get("Actual Rows", plan.get("Plan Rows"))
    line = f"{'  ' * depth}{node}{' on ' + extra if extra else ''} (rows {rows})"
    return [line] + [s for child in plan.get("Plans", []) for s in _shape(child, depth + 1)]


async def _bare(conn: Any, geometry: str, public: tuple[float, float], setup: str
                ) -> tuple[float, int]:
    """The bare count, with the match's settings (``setup``): wall time of the statement
    (one round trip), and the count."""
    async with conn.transaction(readonly=True):
        await conn.execute(setup)
        start = time.perf_counter()
        count = await conn.fetchval(_BARE, geometry, public[1], public[0])
        return time.perf_counter() - start, int(count)


async def _moved(conn: Any, query: str, args: tuple[Any, ...], setup: str
                 ) -> tuple[float, int]:
    """The matcher's query run as its cursor runs it (same plan: a cursor's), every row
    produced and none sent (MOVE ALL): wall time of the MOVE, and the rows."""
    async with conn.transaction(readonly=True):
        await conn.execute(setup)
        await conn.execute(f"DECLARE c NO SCROLL CURSOR FOR {query}", *args)
        start = time.perf_counter()
        status = await conn.execute("MOVE FORWARD ALL IN c")
        return time.perf_counter() - start, int(status.split()[-1])


async def _cursor_wall(pool: Any, geometry: str, public: tuple[float, float]
                       ) -> tuple[float, float, int]:
    """As the matcher reads it, rows to the client: to the first page, to the last."""
    from server.store import matching

    start = time.perf_counter()
    first = 0.0
    rows = 0
    async for page in matching.neighbour_pages(pool, geometry, "structure_fire", public,
                                               first=500, page=2000):
        if not rows:
            first = time.perf_counter() - start
        rows += len(page)
    return first, time.perf_counter() - start, rows


async def _measure(database_url: str, runs: int, show_plans: bool, bitmap: bool) -> None:
    from server.store import matching
    from server.store.db import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET plan_cache_mode = force_custom_plan")
            area = await conn.fetchval(_CIRCLE, DOWNTOWN[0], DOWNTOWN[1], AREA_RADIUS_M)
            fire = f"POINT({FIRE[1]} {FIRE[0]})"
            # The public point as ingest rounds it (three decimals: ~100 m).
            cases = [("structure fire (point)", fire, (round(FIRE[0], 3), round(FIRE[1], 3))),
                     (f"CAP circle {AREA_RADIUS_M / 1000:g} km downtown", area,
                      (round(DOWNTOWN[0], 3), round(DOWNTOWN[1], 3)))]
            query = matching._NEIGHBOUR_ROWS
            setup = _AS_THE_MATCHER.rsplit(";", 1)[0] if bitmap else _AS_THE_MATCHER
            await conn.execute(_DEVICES_MATCH)
            print(f"{'incident':28} {'zones':>7} {'bare':>9} {'match':>9} {'ratio':>6} "
                  f"{'devices':>8} {'join':>9} {'ratio':>6} {'to client: 1st page':>19} "
                  f"{'all':>9}")
            for name, geometry, public in cases:
                args = _match_args(geometry, public)
                # Interleaved, so a neighbour's load on the shared machine falls on all three.
                bare, match, joined = [], [], []
                for _ in range(runs):
                    bare.append(await _bare(conn, geometry, public, setup))
                    match.append(await _moved(conn, query, args, setup))
                    joined.append(await _moved(conn, _JOINED, args, setup))
                cursor = [await _cursor_wall(pool, geometry, public) for _ in range(runs)]
                b, m = min(t for t, _ in bare) * 1000, min(t for t, _ in match) * 1000
                j = min(t for t, _ in joined) * 1000
                if joined[0][1] != match[0][1]:
                    raise SystemExit(f"{name}: the match gives {match[0][1]} rows, "
                                     f"the join {joined[0][1]}")
                print(f"{name:28} {bare[0][1]:>7} {b:>6.1f} ms {m:>6.1f} ms {m / b:>6.2f} "
                      f"{match[0][1]:>8} {j:>6.1f} ms {j / b:>6.2f} "
                      f"{min(c[0] for c in cursor) * 1000:>16.1f} ms "
                      f"{min(c[1] for c in cursor) * 1000:>6.1f} ms", flush=True)
                if show_plans:
                    for label, sql in (("bare count", _BARE),
                                       ("match, as a cursor", f"DECLARE c CURSOR FOR {query}"),
                                       ("join (before 0010), as a cursor",
                                        f"DECLARE c CURSOR FOR {_JOINED}")):
                        params = (geometry, public[1], public[0]) if sql is _BARE else args
                        async with conn.transaction():
                            await conn.execute(setup)
                            [row] = await conn.fetch(f"EXPLAIN (FORMAT JSON) {sql}", *params)
                        print(f"  {label}:")
                        print("\n".join("    " + s
                                        for s in _shape(json.loads(row[0])[0]["Plan"])))
    finally:
        await pool.close()


async def _execute(database_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
        await conn.execute("VACUUM ANALYZE devices")
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_match_plans",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print the plans too")
    parser.add_argument("--try-sql", default="",
                        help="SQL run on the copy before measuring (an index to try)")
    parser.add_argument("--bitmap", action="store_true",
                        help="let the match's cursor use a bitmap scan (the matcher doesn't)")
    args = parser.parse_args(argv)

    from loadtest.fanout_seed import SeedSpec, copy_template, ensure_template, seed_database

    WORKDIR.mkdir(parents=True, exist_ok=True)
    services = start_services(WORKDIR, "geopush_bench_plans")
    try:
        spec = SeedSpec(args.devices, near_me=0.0)
        if services.postgres is not None:
            url = copy_template(services.postgres,
                                ensure_template(services.postgres, spec), "geopush_bench_plans")
        else:
            url = services.database_url
            asyncio.run(seed_database(url, spec))
        if args.try_sql:
            asyncio.run(_execute(url, args.try_sql))
        asyncio.run(_measure(url, args.runs, args.plans, args.bitmap))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
