"""The fan-out benchmark at tiny scale (2,000 phones, a few incidents, seconds), so its
harness cannot rot: the real process set, fakes, h2load ceiling and checks all run.
What is asserted is the report's invariants, never its timings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from loadtest.bench_fanout import parse_args, render, run
from loadtest.fanout.stack import FanoutServices, seed_if_needed
from loadtest.fanout_seed import SeedSpec
from tests.conftest import Services, redis_cluster_wanted

TABLES = "deliveries, zones, neighbourhoods, devices, outbox, incidents, agencies"


async def _empty(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def emptied(services: Services) -> Iterator[FanoutServices]:
    def empty() -> None:
        asyncio.run(_empty(services.database_url))
        cluster = redis_cluster_wanted()
        client = (redis.RedisCluster if cluster else redis.Redis).from_url(services.redis_url)
        client.flushall(target_nodes="primaries") if cluster else client.flushdb()
        client.close()

    empty()
    yield FanoutServices(services.database_url, services.redis_url,
                         given_cluster=redis_cluster_wanted())
    empty()


@pytest.mark.slow
# On a Redis Cluster a node connection of a synchronous cluster client is collected
# unclosed (a socket ResourceWarning); not yet tracked down.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("hourly_limit", [1, 0], ids=["limit-on", "limit-off"])
def test_bench_fanout_at_tiny_scale_loses_nothing_and_pushes_nobody_twice(
    emptied: FanoutServices, tmp_path: Path, hourly_limit: int,
) -> None:
    args = parse_args([
        "--devices", "2000", "--near-me", "0.2", "--hourly-limit", str(hourly_limit),
        "--small", "2", "--area-km", "2.5", "--rates", "2", "--rate-seconds", "2",
        "--pause", "0", "--fake-processes", "1",
    ])
    asyncio.run(seed_if_needed(emptied.database_url, SeedSpec(args.devices, args.near_me)))

    report = run(args, emptied, tmp_path)

    text = render(report)
    assert report.problems() == [], text
    checks = report.checks
    assert checks is not None
    # warm-up, two fires, the area, four fires at 2/s for 2 s
    assert checks.incidents == 8, text
    assert checks.lost == 0 and checks.duplicates == 0 and checks.over_limit == 0, text
    assert checks.delivered + checks.held_by_limit == checks.audience, text
    if not hourly_limit:
        assert checks.held_by_limit == 0, text
    assert report.near_me_devices > 0
    assert len(report.small) == 2 and all(f.pushes > 0 for f in report.small), text
    # Every push of the phases followed one by one was compared with the fakes.
    followed = sum(f.pushes for f in (report.warmup, *report.small, report.area) if f)
    assert checks.fakes_checked == followed, text
    # The ceiling pushed as many requests per platform as geopush did for the area.
    area = report.area
    assert area is not None and area.pushes > 0, text
    assert {p: c.succeeded for p, c in report.area_ceiling.items()} == \
        {p: n for p, n in (("apns", area.apns), ("fcm", area.fcm)) if n}, text
    assert [s.incidents for s in report.steps] == [4], text
    assert len(report.queries) == 3 and all(q.matched >= 1 for q in report.queries), text
    assert set(report.rss_mb) >= {"matcher", "apns", "fcm"}, text
    assert all(code == 0 for code in report.exit_codes.values()), report.exit_codes
    assert "nothing lost, no device twice: OK" in text
