"""Bearer credentials: the operator's admin token and per-device secrets."""

from __future__ import annotations

import hmac

from aiohttp import web

from server.web.problems import Unauthorized


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require_admin(request: web.Request, admin_token: str | None) -> None:
    presented = bearer(request)
    # No configured token means the admin API is closed, not open.
    if not admin_token or presented is None or not hmac.compare_digest(
        presented.encode(), admin_token.encode()
    ):
        raise Unauthorized("Admin bearer token required")
