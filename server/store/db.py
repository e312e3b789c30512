"""PostgreSQL connection pool.

Geometry crosses the wire as text (EWKT/GeoJSON built in SQL), so no custom codec is
needed; JSON columns get a codec so ``jsonb`` comes back as Python objects.
"""

from __future__ import annotations

import json

import asyncpg

Pool = asyncpg.Pool


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """geopush keeps no session state on pooled connections (no LISTEN, advisory locks,
    SET or cursors; migrations use a connection of their own), so the default reset
    query on every release is a wasted round trip. asyncpg still rolls back an open
    transaction on release."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10,
                      connect_timeout: float = 60) -> Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection,
        command_timeout=30, reset=_no_reset, timeout=connect_timeout,
    )
    assert pool is not None
    return pool


# Exceptions that mean "the store is unreachable right now" (answer 503, retry later),
# as opposed to a bug or a constraint violation.
STORE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    TimeoutError,
)


async def ping(pool: Pool) -> None:
    """A round trip to PostgreSQL (readiness)."""
    await pool.fetchval("SELECT 1")
