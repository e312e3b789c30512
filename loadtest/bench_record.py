"""What recording a delivery costs PostgreSQL: ``Sender.record`` itself, on the real
schema, and side by side with the foreign key to ``devices`` that migration 0011 dropped.

    python -m loadtest.bench_record [--rows 60000] [--rounds 2]

A private PostgreSQL+PostGIS (``.geopush/bench-record/``, fresh database each run)
unless GEOPUSH_DATABASE_URL and GEOPUSH_REDIS_URL are set. It seeds one incident and
``--rows`` devices, then records one ``sent`` outcome per device through
``Sender.record`` in batches of 100 (what the streaming sender writes), once per
variant and round, alternating:

- ``as is``: the schema as migrated (no foreign keys on ``deliveries``; triggers keep
  what they did: migration 0011);
- ``before 0011``: the keys to ``incidents`` (ON DELETE CASCADE) and ``devices`` (ON
  DELETE SET NULL) added back and the trigger on ``deliveries`` disabled for the
  round;
- ``bare``: neither keys nor the trigger: what the COPY itself costs.

It prints PostgreSQL's CPU (the postmaster and its backends, from ``/proc``), the
wall time per row, and the recording process's own CPU per row.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from loadtest.bench_common import descendants, proc_cpu, start_services

WORKDIR = Path(__file__).resolve().parent.parent / ".geopush" / "bench-record"
BATCH = 100
_BEFORE_0011 = """ALTER TABLE deliveries
            ADD CONSTRAINT deliveries_device_id_fkey FOREIGN KEY (device_id)
                REFERENCES devices (id) ON DELETE SET NULL,
            ADD CONSTRAINT deliveries_incident_id_fkey FOREIGN KEY (incident_id)
                REFERENCES incidents (id) ON DELETE CASCADE,
            DISABLE TRIGGER deliveries_check_links"""
_AFTER_0011 = """ALTER TABLE deliveries DROP CONSTRAINT deliveries_device_id_fkey,
            DROP CONSTRAINT deliveries_incident_id_fkey,
            ENABLE TRIGGER deliveries_check_links"""
_DISABLE = "ALTER TABLE deliveries DISABLE TRIGGER deliveries_check_links"
_ENABLE = "ALTER TABLE deliveries ENABLE TRIGGER deliveries_check_links"


class _NoGateway:
    platform = "fcm"


def _postgres_cpu(postmaster: int) -> float:
    return sum(proc_cpu(pid) for pid in descendants(postmaster))


async def _record(database_url: str, redis_url: str, postmaster: int, incident_id: str,
                  devices: list[tuple[str, str]]) -> tuple[float, float, float]:
    """Wall, own and PostgreSQL CPU seconds for recording one sent outcome per
    device (PostgreSQL's read while its backend is still there)."""
    from server.store.db import create_pool
    from server.store.redisclient import connect
    from workers.push import Push, Sent
    from workers.sender import Result, Sender

    pool = await create_pool(database_url, min_size=1, max_size=1)
    redis = await connect(redis_url, decode_responses=True)
    try:
        sender = Sender(pool, redis, _NoGateway())  # type: ignore[arg-type]
        now = time.time()
        results = [
            Result(f"{n}-0", Push(
                incident_id=incident_id, device_id=device_id, platform="fcm", token=token,
                locale="en", category="structure_fire", public_location="", lat=47.667,
                lon=-122.302, occurred_at=now - 120, received_at=now - 1,
                expires_at=now + 3600), Sent(f"projects/bench/messages/{n}"), now)
            for n, (device_id, token) in enumerate(devices)
        ]
        await pool.execute("SELECT 1")     # the connection is open before the clocks start
        wall, cpu, pg = time.perf_counter(), time.process_time(), _postgres_cpu(postmaster)
        for start in range(0, len(results), BATCH):
            await sender.record(results[start:start + BATCH])
        return (time.perf_counter() - wall, time.process_time() - cpu,
                _postgres_cpu(postmaster) - pg)
    finally:
        await redis.aclose()
        await pool.close()


async def _execute(database_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_record",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000, help="delivery rows per variant")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the variants")
    args = parser.parse_args(argv)

    from loadtest.delivery.seeding import seed_fanout

    WORKDIR.mkdir(parents=True, exist_ok=True)
    services = start_services(WORKDIR, "geopush_bench_record")
    try:
        postmaster = services.pids().get("postgres")
        if postmaster is None:
            raise SystemExit("bench: needs the private PostgreSQL (unset the URLs) to "
                             "account for its CPU")
        incident_id, devices = asyncio.run(seed_fanout(services.database_url, "fcm", args.rows))
        print(f"{'variant':18} {'PostgreSQL CPU/row':>19} {'wall/row':>10} "
              f"{'recorder CPU/row':>17}")
        for _ in range(args.rounds):
            for variant, before, after in (
                    ("as is", None, None),
                    ("before 0011", _BEFORE_0011, _AFTER_0011),
                    ("bare", _DISABLE, _ENABLE)):
                if before:
                    asyncio.run(_execute(services.database_url, before))
                wall, own, pg = asyncio.run(_record(services.database_url,
                                                    services.redis_url, postmaster,
                                                    incident_id, devices))
                if after:
                    asyncio.run(_execute(services.database_url, after))
                n = len(devices)
                print(f"{variant:18} {pg / n * 1e6:16.1f} µs {wall / n * 1e6:7.1f} µs "
                      f"{own / n * 1e6:14.1f} µs", flush=True)
    finally:
        services.stop()


if __name__ == "__main__":
    main()
