"""Editor accounts and their sessions."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from server.store import audit


class UserExists(Exception):
    pass


@dataclass(frozen=True)
class User:
    id: int
    agency_id: str
    username: str
    role: str
    password_hash: str


@dataclass(frozen=True)
class Session:
    user_id: int
    agency_id: str
    username: str
    role: str
    csrf_token: str
    expires_at: dt.datetime


def token_hash(token: str) -> bytes:
    # Session tokens are 256 random bits: SHA-256 is enough (nothing to brute-force).
    return hashlib.sha256(token.encode()).digest()


class NoSuchAgency(Exception):
    pass


async def create_user(pool: asyncpg.Pool, *, agency_id: str, username: str,
                      password_hash: str, role: str, created_by: str) -> int:
    """The user and its audit entry, in one transaction."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            user_id: int = await conn.fetchval(
                """INSERT INTO users (agency_id, username, password_hash, role, created_by)
                   VALUES ($1, $2, $3, $4, $5) RETURNING id""",
                agency_id, username, password_hash, role, created_by,
            )
            await audit.record(conn, actor=created_by, agency_id=agency_id,
                               action="user.create", target=username, details={"role": role})
    except asyncpg.UniqueViolationError:
        raise UserExists(username) from None
    except asyncpg.ForeignKeyViolationError:
        raise NoSuchAgency(agency_id) from None
    return user_id


async def user_by_name(pool: asyncpg.Pool, username: str) -> User | None:
    row = await pool.fetchrow(
        "SELECT id, agency_id, username, role, password_hash FROM users WHERE username = $1",
        username,
    )
    return User(**dict(row)) if row else None


async def list_users(pool: asyncpg.Pool, agency_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT username, role, created_at, created_by FROM users
            WHERE agency_id = $1 ORDER BY username""", agency_id)
    return [{"username": r["username"], "role": r["role"], "agency_id": agency_id,
             "created_at": r["created_at"].isoformat(), "created_by": r["created_by"]}
            for r in rows]


async def delete_user(pool: asyncpg.Pool, agency_id: str, username: str, *,
                      actor: str) -> str | None:
    """Delete the user (their sessions go with them) with its audit entry; their role,
    or None if there is no such user in that agency."""
    async with pool.acquire() as conn, conn.transaction():
        role: str | None = await conn.fetchval(
            "DELETE FROM users WHERE agency_id = $1 AND username = $2 RETURNING role",
            agency_id, username)
        if role is not None:
            await audit.record(conn, actor=actor, agency_id=agency_id, action="user.delete",
                               target=username, details={"role": role})
    return role


async def start_session(pool: asyncpg.Pool, user_id: int, token: str, csrf_token: str,
                        expires_at: dt.datetime) -> None:
    await pool.execute(
        """INSERT INTO sessions (token_hash, user_id, csrf_token, expires_at)
           VALUES ($1, $2, $3, $4)""",
        token_hash(token), user_id, csrf_token, expires_at,
    )


async def session(pool: asyncpg.Pool, token: str, now: dt.datetime) -> Session | None:
    row = await pool.fetchrow(
        """SELECT s.user_id, u.agency_id, u.username, u.role, s.csrf_token, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id
            WHERE s.token_hash = $1 AND s.expires_at > $2""",
        token_hash(token), now,
    )
    return Session(**dict(row)) if row else None


async def end_session(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash(token))


async def purge_expired_sessions(pool: asyncpg.Pool, now: dt.datetime) -> int:
    status = await pool.execute("DELETE FROM sessions WHERE expires_at <= $1", now)
    return int(status.split()[-1])
