"""Shared fixtures: real PostgreSQL+PostGIS and Redis, started privately per session.

Set GEOPUSH_TEST_DATABASE_URL and GEOPUSH_TEST_REDIS_URL to use existing servers
instead (the database is wiped between tests). GEOPUSH_TEST_REDIS_CLUSTER=1 starts a
3-master Redis Cluster instead of a single Redis (``make test`` runs the end-to-end
suite once more that way); the code under test finds out which it is by itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.dev.devenv import PrivatePostgres, PrivateRedis, PrivateRedisCluster
from server.settings import Settings
from server.store.migrate import migrate
from server.store.redisclient import RedisClient, connect
from server.web.app import create_app

# Fixtures of the fake FCM (``fake``, ``key_dir``); modules with a ``fake`` of their
# own (the APNs tests) override it.
pytest_plugins = ["tests.fake_fcm_fixtures"]

ADMIN_TOKEN = "test-admin-token"


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    postgres: PrivatePostgres | None
    redis: PrivateRedis | PrivateRedisCluster | None


def redis_cluster_wanted() -> bool:
    return os.environ.get("GEOPUSH_TEST_REDIS_CLUSTER", "") not in ("", "0")


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    db_url = os.environ.get("GEOPUSH_TEST_DATABASE_URL")
    redis_url = os.environ.get("GEOPUSH_TEST_REDIS_URL")
    base = Path(tempfile.mkdtemp(prefix="geopush-test-"))
    base.chmod(0o755)  # the postgres user must reach its cluster directory
    pg = None
    rd: PrivateRedis | PrivateRedisCluster | None = None
    try:
        if not db_url:
            pg = PrivatePostgres(base / "postgres").start()
            db_url = pg.create_database("geopush_test")
        if not redis_url:
            if redis_cluster_wanted():
                rd = PrivateRedisCluster(base / "redis-cluster", masters=3).start()
            else:
                rd = PrivateRedis(base / "redis").start()
            redis_url = rd.url()
        asyncio.run(migrate(db_url))
        yield Services(db_url, redis_url, pg, rd)
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)
        if pg and pg.directory != (base / "postgres").resolve():
            shutil.rmtree(pg.directory, ignore_errors=True)


@pytest.fixture
def settings(services: Services) -> Settings:
    return Settings(
        database_url=services.database_url,
        redis_url=services.redis_url,
        admin_token=ADMIN_TOKEN,
        consumer_name="test-consumer",
        stream_batch=50,
    )


_TABLES = ("deliveries, erased_device_tags, zones, neighbourhoods, devices, outbox, incidents, "
           "agencies")


@pytest.fixture
async def pool(services: Services) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a freshly emptied database."""
    p = await asyncpg.create_pool(services.database_url, min_size=1, max_size=5)
    assert p is not None
    await p.execute(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")
    yield p
    await p.close()


@pytest.fixture
async def redis(services: Services) -> AsyncIterator[RedisClient]:
    """A client of the session's Redis (a cluster client on a cluster), emptied."""
    r = await connect(services.redis_url, decode_responses=True)
    await r.flushdb()   # every master's, on a cluster
    yield r
    await r.aclose()


@pytest.fixture
async def client(
    settings: Settings, pool: asyncpg.Pool, redis: RedisClient
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = create_app(settings)
    async with TestClient(TestServer(app)) as c:
        yield c


def with_settings(settings: Settings, **changes: object) -> Settings:
    return replace(settings, **changes)  # type: ignore[arg-type]
