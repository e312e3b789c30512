"""Who a request is from: the operator's bearer token or an editor's session cookie.

The operator token keeps working for the whole JSON API as before. Session cookies
are HttpOnly and SameSite=Strict; on top of that every state-changing request made
with a cookie must carry the session's CSRF token in ``X-CSRF-Token`` (a synchronizer
token: the console's script reads it from ``GET /v1/session``, which another origin
cannot read).
"""

from __future__ import annotations

import datetime as dt
import hmac

from aiohttp import web

from server.domain.accounts import OPERATOR, Principal
from server.store import accounts
from server.web.appkeys import POOL, SETTINGS
from server.web.auth import bearer, require_admin
from server.web.problems import Problem, Unauthorized

SESSION_COOKIE = "geopush_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_KEY = web.RequestKey("principal", Principal)


class Forbidden(Problem):
    def __init__(self, detail: str) -> None:
        super().__init__(403, "Forbidden", detail, slug="forbidden")


async def principal(request: web.Request) -> Principal:
    """The operator (valid bearer token) or the signed-in user; 401 otherwise, 403 for a
    cookie-authenticated change without the session's CSRF token."""
    if _KEY in request:
        return request[_KEY]
    if bearer(request) is not None:
        require_admin(request, request.app[SETTINGS].admin_token)
        found = Principal(OPERATOR)
    else:
        found = await _session_principal(request)
    request[_KEY] = found
    return found


async def _session_principal(request: web.Request) -> Principal:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthorized("Sign in, or use the admin bearer token")
    session = await accounts.session(request.app[POOL], token, dt.datetime.now(dt.UTC))
    if session is None:
        raise Unauthorized("Your session has ended; sign in again")
    if request.method not in _SAFE_METHODS:
        presented = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), session.csrf_token.encode()):
            raise Forbidden(f"Missing or wrong {CSRF_HEADER} header")
    return Principal(session.username, session.agency_id, session.role, session.csrf_token)


async def require_operator(request: web.Request) -> Principal:
    who = await principal(request)
    if not who.is_operator:
        raise Forbidden("Only the operator may do this")
    return who


async def require_agency_admin(request: web.Request, agency_id: str) -> Principal:
    """The operator, or an agency_admin of ``agency_id``. Other agencies' users get 404,
    as if the agency did not exist; the agency's editors get 403."""
    who = await principal(request)
    if not who.sees(agency_id):
        raise Problem(404, "Not found", f"No agency {agency_id!r}", slug="not-found")
    if not who.administers(agency_id):
        raise Forbidden("Only the agency's admins may do this")
    return who
