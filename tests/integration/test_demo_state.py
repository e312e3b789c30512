"""The demo's and the load test's saved state is reused only while it matches the
server's database; after a reset (or against another database) it is made again,
instead of every request answering 401 with nothing saying why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from server.dev import demo
from server.dev.loadtest import AGENCY, RATE_LIMIT_PER_MINUTE
from server.dev.loadtest import setup as loadtest_setup
from server.settings import Settings
from tests.conftest import ADMIN_TOKEN, Services
from tests.live import LiveApp, live_app


@pytest.fixture
def live(services: Services, pool: asyncpg.Pool) -> Iterator[LiveApp]:
    with live_app(Settings(database_url=services.database_url, redis_url=services.redis_url,
                           admin_token=ADMIN_TOKEN)) as app:
        yield app


async def _reset(services: Services) -> None:
    conn = await asyncpg.connect(services.database_url)
    try:
        await conn.execute("TRUNCATE deliveries, zones, devices, outbox, incidents, agencies "
                           "RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


def test_demo_state_is_reused_while_it_matches_and_remade_after_a_reset(
    live: LiveApp, services: Services, tmp_path: Path
) -> None:
    state_file = tmp_path / "demo.json"
    first = demo.load(state_file, live.url, ADMIN_TOKEN)
    assert demo.load(state_file, live.url, ADMIN_TOKEN) == first

    live.run(_reset(services))
    assert not demo.saved_state_matches(first, live.url, ADMIN_TOKEN)
    second = demo.load(state_file, live.url, ADMIN_TOKEN)
    assert second["agency"] == first["agency"]
    assert {d["id"] for d in second["devices"]}.isdisjoint({d["id"] for d in first["devices"]})
    assert json.loads(state_file.read_text()) == second
    assert demo.saved_state_matches(second, live.url, ADMIN_TOKEN)


def test_loadtest_setup_makes_an_agency_whose_limit_fits_and_takes_over_an_existing_one(
    live: LiveApp, services: Services, tmp_path: Path
) -> None:
    state_file = tmp_path / "loadtest.json"
    state = loadtest_setup(state_file, live.url, ADMIN_TOKEN, devices=4)
    assert state["agency"] == AGENCY and len(state["devices"]) == 4
    status, agency = demo.request("GET", f"{live.url}/v1/admin/agencies/{AGENCY}", None,
                                  {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200
    assert agency["rate_limit_per_minute"] == RATE_LIMIT_PER_MINUTE
    assert agency["review_categories"] == ["shooting"]
    # The state file lost (make clean) but the agency still there: its secret is
    # rotated, so the new state's secret is the one that verifies.
    state_file.unlink()
    again = loadtest_setup(state_file, live.url, ADMIN_TOKEN, devices=2)
    assert again["secret"] != state["secret"]
