"""Agencies: who may post incidents, with which secret, under which rules."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.domain.policy import DEFAULT_ALERTABLE, AgencyPolicy

PREVIOUS_SECRET_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Agency:
    id: str
    name: str
    timezone: str
    call_types: dict[str, str]
    review: bool
    verifying_secrets: list[str]   # the current one first; the previous during its grace
    alertable_categories: frozenset[str] | None = None   # None: the product's default
    staleness_minutes: int = 60
    review_categories: frozenset[str] = frozenset()
    rate_limit_per_minute: int = 1200
    responder_radius_m: int = 400
    no_update_categories: frozenset[str] = frozenset()

    def policy(self) -> AgencyPolicy:
        alertable = DEFAULT_ALERTABLE
        if self.alertable_categories is not None:
            alertable = DEFAULT_ALERTABLE & self.alertable_categories
        return AgencyPolicy(
            alertable=alertable,
            staleness=dt.timedelta(minutes=self.staleness_minutes),
            review=self.review,
            review_categories=self.review_categories,
        )

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the secrets."""
        return {
            "id": self.id, "name": self.name, "timezone": self.timezone,
            "call_types": self.call_types, "review": self.review,
            "review_categories": sorted(self.review_categories),
            "alertable_categories": (sorted(self.alertable_categories)
                                     if self.alertable_categories is not None else None),
            "staleness_minutes": self.staleness_minutes,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "responder_radius_m": self.responder_radius_m,
            "no_update_categories": sorted(self.no_update_categories),
        }


class AgencyExists(Exception):
    pass


_COLUMNS = """id, name, timezone, call_types, review, signing_secret, previous_secret,
              previous_secret_expires_at, alertable_categories, staleness_minutes,
              review_categories, rate_limit_per_minute, responder_radius_m,
              no_update_categories"""


def _from_row(row: Any, now: dt.datetime) -> Agency:
    secrets = [row["signing_secret"]]
    expires = row["previous_secret_expires_at"]
    if row["previous_secret"] and expires and expires > now:
        secrets.append(row["previous_secret"])
    alertable = row["alertable_categories"]
    return Agency(
        id=row["id"], name=row["name"], timezone=row["timezone"],
        call_types=dict(row["call_types"]), review=row["review"], verifying_secrets=secrets,
        alertable_categories=frozenset(alertable) if alertable is not None else None,
        staleness_minutes=row["staleness_minutes"],
        review_categories=frozenset(row["review_categories"]),
        rate_limit_per_minute=row["rate_limit_per_minute"],
        responder_radius_m=row["responder_radius_m"],
        no_update_categories=frozenset(row["no_update_categories"]),
    )


async def get_agency(pool: asyncpg.Pool, agency_id: str) -> Agency | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM agencies WHERE id = $1", agency_id)  # noqa: S608
    return _from_row(row, dt.datetime.now(dt.UTC)) if row else None


async def agency_ids(pool: asyncpg.Pool) -> frozenset[str]:
    """Every agency's id: one small read that answers "unknown" for any id."""
    return frozenset(r["id"] for r in await pool.fetch("SELECT id FROM agencies"))


async def create_agency(
    pool: asyncpg.Pool, *, agency_id: str, name: str, timezone: str,
    call_types: dict[str, str], review: bool, secret: str,
) -> None:
    try:
        await pool.execute(
            """INSERT INTO agencies (id, name, timezone, call_types, review, signing_secret)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            agency_id, name, timezone, call_types, review, secret,
        )
    except asyncpg.UniqueViolationError:
        raise AgencyExists(agency_id) from None


# Columns the admin API may change, and nothing else (the names are not user input).
UPDATABLE = ("name", "timezone", "call_types", "review", "review_categories",
             "alertable_categories", "staleness_minutes", "rate_limit_per_minute",
             "responder_radius_m", "no_update_categories")


async def update_agency(pool: asyncpg.Pool | PoolConnectionProxy[asyncpg.Record],
                        agency_id: str, changes: dict[str, Any]) -> bool:
    cols = [c for c in UPDATABLE if c in changes]
    if not cols:
        found: bool | None = await pool.fetchval(
            "SELECT true FROM agencies WHERE id = $1", agency_id)
        return found or False
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=2))
    status = await pool.execute(
        f"UPDATE agencies SET {assignments} WHERE id = $1",  # noqa: S608 (fixed column names)
        agency_id, *(changes[c] for c in cols),
    )
    return status.endswith(" 1")


async def rotate_secret(pool: asyncpg.Pool, agency_id: str, new_secret: str) -> bool:
    """The new secret signs from now on; the current one keeps verifying for 24 h."""
    status = await pool.execute(
        """UPDATE agencies
              SET previous_secret = signing_secret,
                  previous_secret_expires_at = now() + $3::interval,
                  signing_secret = $2
            WHERE id = $1""",
        agency_id, new_secret, PREVIOUS_SECRET_GRACE,
    )
    return status.endswith(" 1")


async def unmapped_call_types(pool: asyncpg.Pool, agency_id: str) -> list[dict[str, Any]]:
    """Call types that arrived without a mapping, most frequent first, so an operator
    can complete the agency's map."""
    rows = await pool.fetch(
        """SELECT call_type, count(*) AS incidents, max(received_at) AS last_seen
             FROM incidents
            WHERE agency_id = $1 AND category = 'unmapped'
            GROUP BY call_type
            ORDER BY count(*) DESC, call_type
            LIMIT 500""",
        agency_id,
    )
    return [{"call_type": r["call_type"], "incidents": r["incidents"],
             "last_seen": r["last_seen"].isoformat()} for r in rows]
