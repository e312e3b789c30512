"""Webhook to phone: a large fan-out doesn't starve the next small incident.

The whole stack (matcher, senders, fakes) with small fan-out limits: a 300-device
fire, then a 5-device one elsewhere. The small one's pushes reach the fake APNs while
most of the large one is still to come (it queues behind at most the large one's own
first devices, one work item and the push-stream backlog limit), and everyone gets
exactly one push."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import asyncpg
import pytest

from server.settings import Settings
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import FAR_POINT, POINT, create_agency, incident, post_incident

ITEM = 10            # devices per work item; the reader enqueues 2 × ITEM itself
BACKLOG = 20         # pushes on the streams before work items wait
BIG, SMALL = 300, 5


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, fanout_item_devices=ITEM, push_backlog_limit=BACKLOG,
                   device_pushes_per_hour=0)


async def _apns_devices(pool: asyncpg.Pool, count: int, at: tuple[float, float],
                        prefix: str) -> set[str]:
    rows = await pool.fetch(
        """INSERT INTO devices (platform, token, secret_hash)
           SELECT 'apns', encode(sha256(convert_to($2 || g, 'UTF8')), 'hex'), '\\x00'
             FROM generate_series(1, $1::int) g
           RETURNING id::text, token""", count, prefix)
    await pool.execute(
        """INSERT INTO zones (device_id, name, geom)
           SELECT d, 'home', ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint($2, $3), 4326)
                                                ::geography, 300)::geometry)
             FROM unnest($1::uuid[]) d""", [r["id"] for r in rows], at[1], at[0])
    await pool.execute("ANALYZE zones")
    return {r["token"] for r in rows}


async def test_a_small_incident_is_delivered_before_a_large_fan_outs_remainder(
    stack: Stack,
) -> None:
    big = await _apns_devices(stack.pool, BIG, POINT, "big-")
    small = await _apns_devices(stack.pool, SMALL, FAR_POINT, "small-")
    secret = await create_agency(stack.client)
    status, large = await post_incident(stack.client, secret, incident("BIG"))
    assert status == 202, large
    status, little = await post_incident(stack.client, secret, incident(
        "SMALL", lat=FAR_POINT[0], lon=FAR_POINT[1]))
    assert status == 202, little

    await wait_for(lambda: len(stack.apns.deliveries) >= BIG + SMALL, within=60,
                   what="every device's push at the fake")
    await stack.drained()
    tokens = [d.token for d in stack.apns.deliveries]
    assert Counter(tokens) == Counter(big | small)          # everyone, once
    last_small = max(i for i, token in enumerate(tokens) if token in small)
    big_before = sum(1 for token in tokens[:last_small] if token in big)
    # Queued after the large one, the small one waited for at most the large one's
    # own first devices, a work item taken just before, and the backlog: not for the
    # remaining hundreds.
    assert big_before <= 2 * ITEM + ITEM + BACKLOG, big_before
    assert BIG - big_before >= BIG - 2 * ITEM - ITEM - BACKLOG
    rows = await stack.pool.fetch(
        """SELECT incident_id::text, count(*) AS n, count(DISTINCT device_id) AS devices
             FROM deliveries WHERE outcome = 'sent' GROUP BY incident_id""")
    assert {r["incident_id"]: (r["n"], r["devices"]) for r in rows} == {
        large["incident_id"]: (BIG, BIG), little["incident_id"]: (SMALL, SMALL)}
