"""Creating agencies outside a web request (the CLI and the demo)."""

from __future__ import annotations

from server.domain import signing
from server.domain.agency_spec import validate_agency
from server.store.agencies import AgencyExists, create_agency
from server.store.db import create_pool


async def create_agency_with_secret(
    database_url: str, *, agency_id: str, name: str, timezone: str,
    call_types: dict[str, str], review: bool = False,
) -> str:
    spec = validate_agency(agency_id, name, timezone, call_types)
    secret = signing.new_secret()
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await create_agency(pool, agency_id=spec.id, name=spec.name, timezone=spec.timezone,
                            call_types=spec.call_types, review=review, secret=secret)
    except AgencyExists:
        raise ValueError(f"agency {agency_id!r} already exists") from None
    finally:
        await pool.close()
    return secret
