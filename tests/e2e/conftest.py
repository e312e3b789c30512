"""The whole pipeline in one event loop: web app, matcher, senders, relay and the fake
APNs/FCM gateways, on the session's real PostgreSQL/PostGIS and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from loadtest.fake_apns import FakeApns
from loadtest.fake_fcm import FakeFcm
from server import keys
from server.dev.devkeys import (
    DEV_FCM_PROJECT,
    ensure_apns_key,
    ensure_fcm_service_account,
    ensure_tls,
    public_key_pem,
)
from server.settings import ApnsSettings, FcmSettings, Settings
from server.store.redisclient import RedisClient
from server.web.app import create_app
from workers.runner import worker_main


@dataclass
class Stack:
    client: TestClient[Any, Any]
    apns: FakeApns
    fcm: FakeFcm
    pool: asyncpg.Pool
    redis: RedisClient
    settings: Settings
    stop: asyncio.Event
    extra: list[asyncio.Task[None]] = field(default_factory=list)

    def start_worker(self, kind: str) -> None:
        """Start one more worker, e.g. a sender after the test prepared its stream."""
        self.extra.append(asyncio.create_task(worker_main(
            replace(self.settings, consumer_name=f"test-{kind}-late"), kind, self.stop)))

    async def drained(self, within: float = 10.0) -> None:
        """Wait until every stream's consumer group has read and acknowledged everything."""
        await wait_for(lambda: _all_streams_drained(self.redis), within=within,
                       what="streams to drain")


async def _all_streams_drained(redis: RedisClient) -> bool:
    shards = keys.DEFAULT_PUSH_STREAM_SHARDS
    streams = [keys.INCIDENTS_STREAM, keys.FANOUT_WORK_STREAM,
               *keys.push_streams("apns", shards),
               *keys.push_streams("fcm", shards)]
    for stream in streams:
        if not await redis.exists(stream):
            continue
        for group in await redis.xinfo_groups(stream):
            if group["pending"] or group.get("lag"):
                return False
    for platform in keys.PLATFORMS:
        for shard in range(shards):
            if await redis.zcard(keys.retry_schedule(platform, shard)):
                return False
    return True


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool], *, within: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


ALL_WORKERS = ("matcher", "apns", "fcm", "relay")


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, settings: Settings, pool: asyncpg.Pool,
    redis: RedisClient, tmp_path: Path,
) -> AsyncIterator[Stack]:
    """Mark a test ``@pytest.mark.workers("matcher", ...)`` to run only those workers,
    ``@pytest.mark.apns_critical_alerts`` to send as an app with Apple's critical-alerts
    entitlement (GEOPUSH_APNS_CRITICAL_ALERTS=1)."""
    marker = request.node.get_closest_marker("workers")
    kinds = marker.args if marker else ALL_WORKERS
    certs = tmp_path / "certs"
    tls = ensure_tls(certs)
    apns_key = ensure_apns_key(certs)
    fake_apns = FakeApns(
        tls=tls, provider_keys={apns_key.key_id: public_key_pem(apns_key.key_file.read_bytes())},
        team_id=apns_key.team_id, topic=apns_key.topic,
    )
    await fake_apns.start(port=0, control_port=0)
    fake_fcm = FakeFcm(project_id=DEV_FCM_PROJECT)
    await fake_fcm.start(port=0)
    sa_file = ensure_fcm_service_account(certs, fake_fcm.token_uri)
    sa = json.loads(sa_file.read_text())
    fake_fcm.trust(sa["client_email"], public_key_pem(sa["private_key"].encode()))

    full = replace(
        settings,
        apns=ApnsSettings(
            key_file=apns_key.key_file, key_id=apns_key.key_id, team_id=apns_key.team_id,
            topic=apns_key.topic, host="127.0.0.1", port=fake_apns.port, ca_file=tls.ca_cert,
            request_timeout=5,
            critical_alerts=request.node.get_closest_marker("apns_critical_alerts") is not None,
        ),
        fcm=FcmSettings(service_account_file=sa_file, project_id=DEV_FCM_PROJECT,
                        endpoint=fake_fcm.url, request_timeout=5),
    )
    stop = asyncio.Event()
    workers = []
    for kind in kinds:
        ready = asyncio.Event()

        async def mark(ev: asyncio.Event = ready) -> None:
            ev.set()

        task = asyncio.create_task(
            worker_main(replace(full, consumer_name=f"test-{kind}"), kind, stop, ready=mark))
        workers.append(task)
        done, _ = await asyncio.wait({task, asyncio.create_task(ready.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # surface start-up errors
    async with TestClient(TestServer(create_app(full))) as client:
        stack = Stack(client, fake_apns, fake_fcm, pool, redis, full, stop)
        try:
            yield stack
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers, *stack.extra), timeout=20)
            await fake_apns.stop()
            await fake_fcm.stop()
