"""Devices, their zones and preferences."""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from uuid import UUID, uuid4

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.domain.credentials import hash_device_secret
from server.domain.zones import Area, Circle, NeighbourhoodZone, Zone

# A secret hash that matches nothing, compared against when the device doesn't exist,
# so an unknown device and a wrong secret cost the same and answer the same.
_NO_DEVICE_HASH = hash_device_secret("no such device")


@dataclass(frozen=True)
class Device:
    id: str
    platform: str
    token: str
    timezone: str
    locale: str


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


class TokenGone(Exception):
    """The gateway declared this token gone: it can't be registered again."""


REPLACED = "replaced"

# A token is live on one device per platform (a partial unique index): taking it
# disables whichever device held it, with reason 'replaced'.
_RELEASE = """
UPDATE devices SET token_disabled_at = now(), token_disabled_reason = 'replaced',
                   updated_at = now()
 WHERE platform = $1 AND token = $2 AND token_disabled_at IS NULL AND id <> $3
"""
# Disabled for any other reason (Unregistered, BadDeviceToken, UNREGISTERED, ...): the
# gateway said so, and the same value will not work again.
_GONE = """
SELECT EXISTS (SELECT 1 FROM devices
                WHERE platform = $1 AND token = $2 AND token_disabled_at IS NOT NULL
                  AND token_disabled_reason IS DISTINCT FROM 'replaced')
"""


async def _take_token(pool: asyncpg.Pool, platform: str, token: str,
                      write: Callable[[PoolConnectionProxy[asyncpg.Record]],
                                      Awaitable[UUID]]) -> UUID:
    """Run ``write`` (which gives ``token`` to a device, releasing it from any other,
    and returns the device's id) in one transaction, one registration of a token at a
    time; TokenGone if the gateway declared the token gone."""
    async with pool.acquire() as conn, conn.transaction():
        # Registrations of one token queue here, so release-then-write never races
        # (the unique index would refuse the loser; deadlocks between two releases
        # can't happen either).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"geopush:token:{platform}:{token}")
        if await conn.fetchval(_GONE, platform, token):
            raise TokenGone(token)
        return await write(conn)


async def create_device(
    pool: asyncpg.Pool, *, platform: str, token: str, timezone: str, locale: str, secret: str
) -> str:
    """The new device's id. The token moves here from any device that held it."""
    device_id = uuid4()

    async def insert(conn: PoolConnectionProxy[asyncpg.Record]) -> UUID:
        await conn.execute(_RELEASE, platform, token, device_id)
        found: UUID = await conn.fetchval(
            """INSERT INTO devices (id, platform, token, timezone, locale, secret_hash)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            device_id, platform, token, timezone, locale, hash_device_secret(secret),
        )
        return found

    return str(await _take_token(pool, platform, token, insert))


async def authenticate(pool: asyncpg.Pool, device_id: str, secret: str | None) -> Device | None:
    uid = _uuid(device_id)
    row = None
    if uid is not None:
        row = await pool.fetchrow(
            "SELECT id, platform, token, timezone, locale, secret_hash FROM devices WHERE id = $1",
            uid,
        )
    stored = bytes(row["secret_hash"]) if row else _NO_DEVICE_HASH
    presented = hash_device_secret(secret or "")
    if not hmac.compare_digest(stored, presented) or row is None or not secret:
        return None
    return Device(str(row["id"]), row["platform"], row["token"], row["timezone"], row["locale"])


_INSERT_CIRCLE = """
INSERT INTO zones (device_id, name, geom)
VALUES ($1, $2, ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint($3, $4), 4326)::geography,
                                   $5, 'quad_segs=8')::geometry))
"""
_INSERT_AREA = """
INSERT INTO zones (device_id, name, geom)
VALUES ($1, $2, ST_Multi(ST_SetSRID(ST_GeomFromGeoJSON($3), 4326)))
"""

# The neighbourhood's polygon is copied, so matching stays one GiST test; a re-import
# updates the copies (store.neighbourhoods).
_INSERT_NEIGHBOURHOOD = """
INSERT INTO zones (device_id, name, geom, neighbourhood_id)
SELECT $1, $2, geom, id FROM neighbourhoods WHERE id = $3
"""


async def replace_zones(pool: asyncpg.Pool, device_id: str, zones: Sequence[Zone]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM zones WHERE device_id = $1", UUID(device_id))
        for zone in zones:
            if isinstance(zone, Circle):
                await conn.execute(_INSERT_CIRCLE, UUID(device_id), zone.name, zone.lon,
                                   zone.lat, zone.radius_m)
            elif isinstance(zone, Area):
                await conn.execute(_INSERT_AREA, UUID(device_id), zone.name, zone.geojson)
            elif isinstance(zone, NeighbourhoodZone):
                await conn.execute(_INSERT_NEIGHBOURHOOD, UUID(device_id), zone.name,
                                   UUID(zone.neighbourhood_id))
        await conn.execute("UPDATE devices SET updated_at = now() WHERE id = $1", UUID(device_id))


async def set_preferences(
    pool: asyncpg.Pool, device_id: str, *, categories: list[str] | None,
    quiet_start: dt.time | None, quiet_end: dt.time | None, responder: bool,
    near_me_radius_m: int | None = None,
) -> None:
    await pool.execute(
        """UPDATE devices SET categories = $2, quiet_start = $3, quiet_end = $4,
                              responder = $5, near_me_radius_m = $6, updated_at = now()
            WHERE id = $1""",
        UUID(device_id), categories, quiet_start, quiet_end, responder, near_me_radius_m,
    )


async def set_token(pool: asyncpg.Pool, device_id: str, platform: str, token: str) -> None:
    """A new token brings a device whose old token was declared gone (or taken by
    another device) back; the token moves here from any device that held it.
    TokenGone when the gateway declared this very token gone."""
    uid = UUID(device_id)

    async def update(conn: PoolConnectionProxy[asyncpg.Record]) -> UUID:
        await conn.execute(_RELEASE, platform, token, uid)
        await conn.execute(
            """UPDATE devices SET token = $2, token_disabled_at = NULL,
                                  token_disabled_reason = NULL, updated_at = now()
                WHERE id = $1""",
            uid, token,
        )
        return uid

    await _take_token(pool, platform, token, update)


async def disable_token(pool: asyncpg.Pool, device_id: str, token: str, reason: str) -> None:
    """Stop using a token the gateway declared gone (unless it was rotated meanwhile)."""
    await pool.execute(
        """UPDATE devices SET token_disabled_at = now(), token_disabled_reason = $3
            WHERE id = $1 AND token = $2 AND token_disabled_at IS NULL""",
        UUID(device_id), token, reason,
    )


async def register_responder(pool: asyncpg.Pool, agency_id: str, device_id: str) -> bool:
    """False when there is no such device."""
    found = await pool.fetchval(
        """WITH d AS (SELECT id FROM devices WHERE id = $2::uuid),
                ins AS (INSERT INTO agency_responders (agency_id, device_id)
                        SELECT $1, id FROM d ON CONFLICT DO NOTHING)
           SELECT count(*) FROM d""",
        agency_id, device_id,
    )
    return bool(found)


async def unregister_responder(pool: asyncpg.Pool, agency_id: str, device_id: str) -> None:
    uid = _uuid(device_id)
    if uid is not None:
        await pool.execute(
            "DELETE FROM agency_responders WHERE agency_id = $1 AND device_id = $2",
            agency_id, uid)


async def update_profile(pool: asyncpg.Pool, device_id: str, *, timezone: str | None,
                         locale: str | None) -> None:
    await pool.execute(
        """UPDATE devices SET timezone = coalesce($2, timezone), locale = coalesce($3, locale),
                              updated_at = now()
            WHERE id = $1""",
        UUID(device_id), timezone, locale,
    )


@dataclass(frozen=True)
class Reach:
    responder: bool
    near_me_radius_m: int | None


async def reach(pool: asyncpg.Pool, device_id: str) -> Reach:
    """Whether the device wants alerts where it is now: as a CPR responder, near me."""
    row = await pool.fetchrow(
        "SELECT responder, near_me_radius_m FROM devices WHERE id = $1", UUID(device_id))
    return Reach(bool(row and row["responder"]), row["near_me_radius_m"] if row else None)



FEED_WINDOW = dt.timedelta(hours=24)


async def recent_alerts(pool: asyncpg.Pool, device_id: str, *, now: dt.datetime, limit: int,
                        before: tuple[dt.datetime, str] | None) -> list[asyncpg.Record]:
    """The incidents this device was alerted to in the last 24 hours, newest first, with
    their current status. Keyset-paginated on (alerted_at, incident id)."""
    return await pool.fetch(
        """WITH alerted AS (
               SELECT incident_id, min(created_at) AS alerted_at
                 FROM deliveries
                WHERE device_id = $1 AND outcome = 'sent' AND kind = 'alert'
                  AND created_at > $2
                GROUP BY incident_id)
           SELECT a.alerted_at, i.id, i.category, i.status, i.occurred_at, i.public_location,
                  ST_Y(i.public_point) AS lat, ST_X(i.public_point) AS lon
             FROM alerted a JOIN incidents i ON i.id = a.incident_id
            WHERE $3::timestamptz IS NULL OR (a.alerted_at, i.id) < ($3, $4::uuid)
            ORDER BY a.alerted_at DESC, i.id DESC
            LIMIT $5""",
        UUID(device_id), now - FEED_WINDOW, before[0] if before else None,
        before[1] if before else None, limit,
    )


async def delete_device(pool: asyncpg.Pool, device_id: str) -> None:
    """Delete the device with its zones, preferences and responder registrations; its
    delivery rows are kept for the incident's statistics but no longer point at it."""
    # zones and agency_responders cascade; a trigger unlinks its deliveries (0011).
    await pool.execute("DELETE FROM devices WHERE id = $1", UUID(device_id))
