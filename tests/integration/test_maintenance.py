"""Housekeeping: exact locations are forgotten after the retention period."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from server.store.housekeeping import purge_exact_locations
from tests.helpers import create_agency, incident, post_incident


async def test_exact_points_are_replaced_by_the_public_point_after_retention(
    client: Any, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client)
    await post_incident(client, secret, incident("OLD"))
    await post_incident(client, secret, incident("NEW"))
    await pool.execute(
        "UPDATE incidents SET received_at = now() - interval '25 hours' WHERE external_id = 'OLD'")
    now = dt.datetime.now(dt.UTC)
    assert await purge_exact_locations(pool, dt.timedelta(hours=24), now) == 1
    rows = {r["external_id"]: r for r in await pool.fetch(
        """SELECT external_id, ST_AsText(geom) AS exact, ST_AsText(public_point) AS public,
                  exact_purged_at IS NOT NULL AS purged FROM incidents""")}
    assert rows["OLD"]["exact"] == rows["OLD"]["public"] == "POINT(-122.302 47.667)"
    assert rows["OLD"]["purged"]
    assert rows["NEW"]["exact"] == "POINT(-122.301946 47.66707)" and not rows["NEW"]["purged"]
    assert await purge_exact_locations(pool, dt.timedelta(hours=24), now) == 0
