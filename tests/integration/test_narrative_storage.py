"""The narrative reaches PostgreSQL only in a review item's own statement: no incident
statement carries it as a parameter, so statement logging of incidents never sees it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg

from server.domain.incident import Point, RawIncident, Status
from server.domain.normalize import normalize
from server.domain.policy import ALERT, REVIEW
from server.store.incidents import store_incident

NOW = dt.datetime.now(dt.UTC)
NARRATIVE = "caller Jane Roe DOB 04/12/1987 at 5312 24th Ave NE, smoke from 2nd floor"


class Recording:
    """The pool as the store sees it, writing down every statement and its arguments."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchval(self, query: str, *args: Any) -> Any:
        self.statements.append((query, args))
        return await self.pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        self.statements.append((query, args))
        return await self.pool.execute(query, *args)


def _incident(external_id: str) -> Any:
    raw = RawIncident(
        external_id=external_id, revision=NOW, status=Status.ACTIVE, call_type="Fire",
        occurred_at=NOW - dt.timedelta(minutes=2), point=Point(47.66707, -122.301946),
        geometry_wkt=None, address="5312 24th Ave NE", location_kind=None, priority=None,
        narrative=NARRATIVE,
    )
    return normalize(raw, agency_id="n", call_type_map={"Fire": "structure_fire"}, now=NOW)


async def test_the_narrative_goes_only_into_review_items(pool: asyncpg.Pool) -> None:
    await pool.execute("""INSERT INTO agencies (id, name, timezone, signing_secret)
                          VALUES ('n', 'N', 'UTC', 'whsec_x')""")
    recording = Recording(pool)
    incident = _incident("ALERTED")
    assert incident.narrative and "5312" not in incident.narrative  # redacted already
    await store_incident(recording, incident, ALERT, NOW)  # type: ignore[arg-type]
    await store_incident(recording, _incident("HELD"), REVIEW, NOW,  # type: ignore[arg-type]
                         review_until=NOW + dt.timedelta(hours=1))
    carrying = [query for query, args in recording.statements if incident.narrative in args]
    assert len(carrying) == 1
    assert "INSERT INTO review_items" in carrying[0]
    assert "incidents" not in carrying[0].replace("review_items", "")
    assert await pool.fetchval("SELECT narrative FROM review_items") == incident.narrative
