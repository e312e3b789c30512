"""Redis down: incidents are still accepted, kept in the outbox, and pushed once
Redis is back (even though a restarted Redis has lost its streams and groups)."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from server.dev.devenv import PrivateRedis
from server.settings import Settings
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, circle, create_agency, create_device, incident
from tests.helpers import post_incident as post


@pytest.fixture
def own_redis() -> Iterator[PrivateRedis]:
    """A Redis this test may stop and restart (on the same port)."""
    server = PrivateRedis(Path(tempfile.mkdtemp(prefix="geopush-redis-"))).start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, own_redis: PrivateRedis) -> Settings:
    return replace(settings, redis_url=own_redis.url())


async def test_redis_down_incidents_are_kept_and_pushed_once_it_is_back(
    stack: Stack, own_redis: PrivateRedis
) -> None:
    secret = await create_agency(stack.client)
    token = secrets.token_hex(32)
    await create_device(stack.client, "apns", token, circle(*POINT, 1000))

    own_redis.stop()
    status, accepted = await post(stack.client, secret, incident())
    assert (status, accepted["decision"]) == (202, "alert")
    assert await stack.pool.fetchval("SELECT count(*) FROM outbox") == 1

    own_redis.start()  # same port, empty: streams and groups are gone
    await wait_for(lambda: len(stack.apns.deliveries) == 1, within=30,
                   what="the push after Redis came back")
    assert stack.apns.deliveries[0].token == token
    assert stack.apns.deliveries[0].headers["apns-collapse-id"] == accepted["incident_id"]
    assert await stack.pool.fetchval("SELECT count(*) FROM outbox") == 0
