"""Idempotent incident storage with its transactional outbox row."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.domain.incident import Incident, Status
from server.domain.policy import REVIEW, is_pushable, suppressed

OUTDATED = suppressed("outdated")


@dataclass(frozen=True)
class Stored:
    incident_id: str
    decision: str
    duplicate: bool
    publish: bool   # an outbox row was written: hand the incident to the matcher


@dataclass(frozen=True)
class StoredRevision:
    incident_id: str
    revision: dt.datetime
    decision: str
    category: str


async def stored_revision(pool: asyncpg.Pool, agency_id: str, external_id: str
                          ) -> StoredRevision | None:
    """The revision stored for an incident, read only (what a dry run compares with)."""
    row = await pool.fetchrow(
        """SELECT id, revision, decision, category FROM incidents
            WHERE agency_id = $1 AND external_id = $2""", agency_id, external_id)
    if row is None:
        return None
    return StoredRevision(str(row["id"]), row["revision"], row["decision"], row["category"])


_UPDATE = """
UPDATE incidents
   SET revision = $2, status = $3, call_type = $4, category = $5, occurred_at = $6,
       received_at = $7, geom = ST_GeomFromText($8, 4326),
       public_point = ST_SetSRID(ST_MakePoint($9, $10), 4326), public_location = $11,
       location_kind = $12, priority = $13, decision = $14, actual = $15, updated_at = now(),
       -- a revision brings an exact geometry again: the purge must see it, retention
       -- counting from this revision's arrival (public_geom: a trigger, sql/0005)
       exact_purged_at = NULL
 WHERE id = $1
"""


async def store_incident(
    pool: asyncpg.Pool, incident: Incident, decision: str, received_at: dt.datetime,
    review_until: dt.datetime | None = None,
) -> Stored:
    """Store one revision. The same revision again is a duplicate; an older one is
    ignored; a newer one replaces the stored one. Pushable revisions get an outbox row
    in the same transaction."""
    first = await _insert_new(pool, incident, decision, received_at, review_until)
    if first is not None:
        return first
    while True:
        stored = await _store_once(pool, incident, decision, received_at, review_until)
        if stored is not None:
            return stored
        # A concurrent request inserted the same incident between our SELECT and
        # INSERT: go again, and this time see its row.


# The common case, a revision of an incident not seen before, in one statement (one
# round trip, atomic without an explicit transaction): the incident and its outbox row
# when it is to be pushed. The narrative is no parameter of it: it goes to PostgreSQL
# only in the review item's own statement (and only when there is one), so statement
# logging of incidents never captures it.
_INSERT_NEW = """
WITH ins AS (
    INSERT INTO incidents (agency_id, external_id, revision, status, call_type, category,
                           occurred_at, received_at, geom, public_point, public_location,
                           location_kind, priority, decision, actual)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, ST_GeomFromText($9, 4326),
            ST_SetSRID(ST_MakePoint($10, $11), 4326), $12, $13, $14, $15, $16)
    ON CONFLICT (agency_id, external_id) DO NOTHING
    RETURNING id),
 ob AS (INSERT INTO outbox (incident_id) SELECT id FROM ins WHERE $17)
SELECT id FROM ins
"""


async def _insert_new(
    db: asyncpg.Pool | PoolConnectionProxy[asyncpg.Record], incident: Incident, decision: str,
    received_at: dt.datetime, review_until: dt.datetime | None,
) -> Stored | None:
    """None when the incident exists already (then the locking path decides)."""
    if decision == REVIEW:
        if isinstance(db, asyncpg.Pool):
            async with db.acquire() as conn, conn.transaction():
                return await _insert_new(conn, incident, decision, received_at, review_until)
        stored = await _insert_incident(db, incident, decision, received_at)
        if stored is not None:
            await _open_review(db, stored.incident_id, incident, review_until)
        return stored
    return await _insert_incident(db, incident, decision, received_at)


async def _insert_incident(
    db: asyncpg.Pool | PoolConnectionProxy[asyncpg.Record], incident: Incident, decision: str,
    received_at: dt.datetime,
) -> Stored | None:
    i = incident
    kind = i.location_kind.value if i.location_kind else None
    publish = is_pushable(decision)
    incident_id = await db.fetchval(
        _INSERT_NEW, i.agency_id, i.external_id, i.revision, i.status.value, i.call_type,
        i.category, i.occurred_at, received_at, i.geometry_wkt, i.public_point.lon,
        i.public_point.lat, i.public_location, kind, i.priority, decision, i.actual,
        publish,
    )
    if incident_id is None:
        return None
    return Stored(str(incident_id), decision, duplicate=False, publish=publish)


async def _open_review(
    conn: PoolConnectionProxy[asyncpg.Record], incident_id: object, incident: Incident,
    review_until: dt.datetime | None,
) -> None:
    """(Re)open the pending review item with the revision's redacted narrative."""
    await conn.execute(
        """INSERT INTO review_items (incident_id, agency_id, narrative, expires_at)
           VALUES ($1::uuid, $2, $3, $4)
           ON CONFLICT (incident_id) DO UPDATE
              SET narrative = EXCLUDED.narrative, expires_at = EXCLUDED.expires_at
            WHERE review_items.state = 'pending'""",
        str(incident_id), incident.agency_id, incident.narrative, review_until,
    )


def republishes(stored_decision: str, stored_category: str, decision: str,
                category: str) -> bool:
    """Whether a newer revision of a stored incident goes to the matcher again: when
    it newly becomes pushable, or is pushable under a new category (the matcher's
    per-device dedup keeps repeats off phones either way)."""
    return is_pushable(decision) and (
        not is_pushable(stored_decision) or stored_category != category)


def ends_an_alert(stored_decision: str, incident: Incident) -> bool:
    """Whether this revision ends an alerted incident: then it goes to the matcher too,
    and the devices the alert reached get an update. A repeated clear finds the stored
    incident no longer alerted, and publishes nothing."""
    return is_pushable(stored_decision) and incident.actual and incident.status in (
        Status.CLEARED, Status.CANCELLED)


async def _store_once(
    pool: asyncpg.Pool, incident: Incident, decision: str, received_at: dt.datetime,
    review_until: dt.datetime | None,
) -> Stored | None:
    i = incident
    kind = i.location_kind.value if i.location_kind else None
    async with pool.acquire() as conn, conn.transaction():
        existing = await conn.fetchrow(
            """SELECT id, revision, decision, category, status FROM incidents
                WHERE agency_id = $1 AND external_id = $2 FOR UPDATE""",
            i.agency_id, i.external_id,
        )
        if existing is None:
            # Deleted since the fast path saw it (or a race): insert it here.
            return await _insert_new(conn, incident, decision, received_at, review_until)
        incident_id = existing["id"]
        if existing["revision"] == i.revision:
            return Stored(str(incident_id), existing["decision"], duplicate=True, publish=False)
        if existing["revision"] > i.revision:
            return Stored(str(incident_id), OUTDATED, duplicate=False, publish=False)
        await conn.execute(
            _UPDATE, incident_id, i.revision, i.status.value, i.call_type, i.category,
            i.occurred_at, received_at, i.geometry_wkt, i.public_point.lon, i.public_point.lat,
            i.public_location, kind, i.priority, decision, i.actual,
        )
        await _sync_review(conn, incident_id, i, decision, review_until)
        publish = republishes(existing["decision"], existing["category"], decision,
                              i.category) or ends_an_alert(existing["decision"], i)
        if publish:
            await conn.execute("INSERT INTO outbox (incident_id) VALUES ($1)", incident_id)
        return Stored(str(incident_id), decision, duplicate=False, publish=publish)


async def _sync_review(
    conn: PoolConnectionProxy[asyncpg.Record], incident_id: object, incident: Incident,
    decision: str, review_until: dt.datetime | None,
) -> None:
    """Keep the editor's queue in step with the latest revision.

    A revision held for review (re)opens a pending item carrying the redacted
    narrative; a revision that no longer needs review closes a pending item and drops
    its narrative. Decided items stay decided.
    """
    if decision == REVIEW:
        await _open_review(conn, incident_id, incident, review_until)
    else:
        await conn.execute(
            """UPDATE review_items SET state = 'superseded', narrative = NULL,
                                       decided_at = now()
                WHERE incident_id = $1 AND state = 'pending'""",
            incident_id,
        )
