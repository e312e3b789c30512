"""Agencies: who may post incidents, with which secret, under which rules."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.domain.policy import AgencyPolicy

PREVIOUS_SECRET_GRACE = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Agency:
    id: str
    name: str
    timezone: str
    call_types: dict[str, str]
    review: bool
    verifying_secrets: list[str]   # the current one first; the previous during its grace

    def policy(self) -> AgencyPolicy:
        return AgencyPolicy(review=self.review)


class AgencyExists(Exception):
    pass


def _from_row(row: Any, now: dt.datetime) -> Agency:
    secrets = [row["signing_secret"]]
    expires = row["previous_secret_expires_at"]
    if row["previous_secret"] and expires and expires > now:
        secrets.append(row["previous_secret"])
    return Agency(
        id=row["id"], name=row["name"], timezone=row["timezone"],
        call_types=dict(row["call_types"]), review=row["review"], verifying_secrets=secrets,
    )


async def get_agency(pool: asyncpg.Pool, agency_id: str) -> Agency | None:
    row = await pool.fetchrow(
        """SELECT id, name, timezone, call_types, review, signing_secret,
                  previous_secret, previous_secret_expires_at
             FROM agencies WHERE id = $1""",
        agency_id,
    )
    return _from_row(row, dt.datetime.now(dt.UTC)) if row else None


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
