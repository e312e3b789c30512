"""The match query's plan and cost at a metro's scale, against the bare PostGIS count.

    python -m loadtest.bench_match_plans [--devices 1000000] [--runs 5]

A private PostgreSQL+PostGIS (``.geopush/bench-plans/``) unless GEOPUSH_DATABASE_URL
and GEOPUSH_REDIS_URL are set, seeded by ``loadtest.fanout_seed`` (``--devices``
phones over greater Seattle, one 300 m-2 km circle each; the seeded database is kept
as a template, so a second run starts in seconds). Two incidents, matched on their
public geometry as the matcher matches them: a structure fire (a point in the city,
about 7,000 zones at 1M) and a 3 km CAP circle downtown (about 80,000).

For each it prints, warm, the best of ``--runs``:

- ``bare``: ``SELECT count(*) FROM zones WHERE ST_Intersects(geom, <public geom>)``,
  PostgreSQL's execution time (EXPLAIN ANALYZE);
- ``match``: the matcher's query (``server.store.matching``, the streaming form: zones
  and near-me positions, the devices joined, preferences applied), its execution
  time and rows, and the ratio to ``bare`` (issue 13: at most 1.5);
- ``cursor``: the same query as the matcher reads it (a server-side cursor in a
  read-only transaction, pages of 500 then 2,000 rows), wall time to the first page
  and to the last, on the client;

and the plans (``--plans``) PostgreSQL chose for the match, as a statement and as a
cursor (which plans for a fast start).
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
_CIRCLE = """SELECT ST_AsText(ST_Buffer(ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography,
                                        $3, 'quad_segs=8')::geometry)"""


def _match_args(geometry: str, public: tuple[float, float]) -> tuple[Any, ...]:
    """The matcher's parameters (``matching.neighbour_pages``): no near-me positions."""
    lat, lon = public
    return (geometry, "structure_fire", [], [], [], lon, lat)


async def _explain(conn: Any, query: str, *args: Any) -> tuple[float, int, dict[str, Any]]:
    [row] = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", *args)
    plan = json.loads(row[0])[0]
    return float(plan["Execution Time"]), int(plan["Plan"]["Actual Rows"]), plan["Plan"]


def _shape(plan: dict[str, Any], depth: int = 0) -> list[str]:
    node = plan["Node Type"]
    extra = plan.get("Index Name") or plan.get("Relation Name") or ""
    rows = plan.get("Actual Rows", plan.get("Plan Rows"))
    line = f"{'  ' * depth}{node}{' on ' + extra if extra else ''} (rows {rows})"
    return [line] + [s for child in plan.get("Plans", []) for s in _shape(child, depth + 1)]


async def _cursor_wall(pool: Any, geometry: str, public: tuple[float, float]
                       ) -> tuple[float, float, int]:
    from server.store import matching

    lat, lon = public
    start = time.perf_counter()
    first = 0.0
    rows = 0
    async for page in matching.neighbour_pages(pool, geometry, "structure_fire", (lat, lon),
                                               first=500, page=2000):
        if not rows:
            first = time.perf_counter() - start
        rows += len(page)
    return first, time.perf_counter() - start, rows


async def _measure(database_url: str, runs: int, show_plans: bool) -> None:
    from server.store import matching
    from server.store.db import create_pool

    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            area = await conn.fetchval(_CIRCLE, DOWNTOWN[0], DOWNTOWN[1], AREA_RADIUS_M)
            fire = f"POINT({FIRE[1]} {FIRE[0]})"
            # The public point as ingest rounds it (three decimals: ~100 m).
            cases = [("structure fire (point)", fire, (round(FIRE[0], 3), round(FIRE[1], 3))),
                     (f"CAP circle {AREA_RADIUS_M / 1000:g} km downtown", area,
                      (round(DOWNTOWN[0], 3), round(DOWNTOWN[1], 3)))]
            query = matching._NEIGHBOUR_ROWS
            print(f"{'incident':28} {'zones':>7} {'bare':>9} {'match':>9} {'ratio':>6} "
                  f"{'devices':>8} {'cursor 1st':>10} {'cursor all':>10}")
            for name, geometry, public in cases:
                bare = [await _explain(conn, _BARE, geometry, public[1], public[0])
                        for _ in range(runs)]
                match = [await _explain(conn, query, *_match_args(geometry, public))
                         for _ in range(runs)]
                cursor = [await _cursor_wall(pool, geometry, public) for _ in range(runs)]
                b, m = min(t for t, _, _ in bare), min(t for t, _, _ in match)
                print(f"{name:28} {bare[0][1]:>7} {b:>6.1f} ms {m:>6.1f} ms {m / b:>6.2f} "
                      f"{match[0][1]:>8} {min(c[0] for c in cursor) * 1000:>7.1f} ms "
                      f"{min(c[1] for c in cursor) * 1000:>7.1f} ms", flush=True)
                if show_plans:
                    print("  match, as a statement:")
                    print("\n".join("    " + s for s in _shape(match[0][2])))
                    [row] = await conn.fetch(f"EXPLAIN (FORMAT JSON) DECLARE c CURSOR FOR "
                                             f"{query}", *_match_args(geometry, public))
                    print("  match, as the matcher's cursor:")
                    print("\n".join("    " + s for s in _shape(json.loads(row[0])[0]["Plan"])))
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_match_plans",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print the plans too")
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
        asyncio.run(_measure(url, args.runs, args.plans))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
