"""An editor's decision and a CAD's revision of the same incident lock its rows in one
order (the incident, then its review item), so they wait for each other instead of
deadlocking (the Locust smoke test met this deadlock as a 500)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg

from server.store import review
from server.store.db import create_pool
from tests.conftest import Services
from tests.e2e.conftest import wait_for
from tests.helpers import create_agency, incident, post_incident


async def _waiting_on_a_lock(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"))


async def _reject(database_url: str, incident_id: str) -> None:
    # The store's own pool: its codecs (JSON for the audit entry).
    store = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await review.reject(store, incident_id, editor="editor", now=dt.datetime.now(dt.UTC))
    finally:
        await store.close()


async def test_a_decision_waits_for_a_revision_holding_the_incident(
    client: Any, pool: asyncpg.Pool, services: Services
) -> None:
    secret = await create_agency(client, review=True)
    status, held = await post_incident(client, secret, incident("R1"))
    assert (status, held["decision"]) == (202, "review")
    incident_id = held["incident_id"]

    async with pool.acquire() as revision, revision.transaction():
        # What ingest does with a revision: the incident first...
        await revision.execute("SELECT 1 FROM incidents WHERE id = $1 FOR UPDATE",
                               incident_id)
        decision = asyncio.create_task(_reject(services.database_url, incident_id))
        await wait_for(lambda: _waiting_on_a_lock(pool), what="the decision to wait")
        # ...then its review item: the decision holds nothing this needs.
        await revision.execute(
            "UPDATE review_items SET narrative = 'revised' WHERE incident_id = $1",
            incident_id)
    await asyncio.wait_for(decision, timeout=30)
    state = await pool.fetchval("SELECT state FROM review_items WHERE incident_id = $1",
                                incident_id)
    assert state == "rejected"


async def test_expiry_takes_the_incident_first_too(client: Any, pool: asyncpg.Pool) -> None:
    secret = await create_agency(client, review=True)
    _, held = await post_incident(client, secret, incident("R2"))
    incident_id = held["incident_id"]
    await pool.execute("UPDATE review_items SET expires_at = now() - interval '1 s'")
    async with pool.acquire() as revision, revision.transaction():
        await revision.execute("SELECT 1 FROM incidents WHERE id = $1 FOR UPDATE",
                               incident_id)
        expiry = asyncio.create_task(review.expire(pool, dt.datetime.now(dt.UTC)))
        await wait_for(lambda: _waiting_on_a_lock(pool), what="the expiry to wait")
        await revision.execute(
            "UPDATE review_items SET narrative = 'revised' WHERE incident_id = $1",
            incident_id)
    assert await asyncio.wait_for(expiry, timeout=30) == 1
