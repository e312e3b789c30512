"""Signing in and out of the editor console: ``/v1/session``.

``POST`` checks the password (argon2id, off the event loop), counts the attempt per
username and per client address, and sets the session cookie; ``GET`` says who is
signed in and hands the console its CSRF token; ``DELETE`` signs out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from aiohttp import web

from server.domain.accounts import normalize_username, plausible_username, verify_password
from server.domain.text import NO_NUL, SINGLE_LINE
from server.store import accounts
from server.web.appkeys import LOGINS, POOL, SETTINGS
from server.web.client import limit_bucket, request_address
from server.web.openapi import doc
from server.web.principal import SESSION_COOKIE, Forbidden, principal
from server.web.problems import Problem, Unauthorized
from server.web.routes.body import decode_json, json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


class SignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=SINGLE_LINE)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_NUL)]


class SessionInfo(msgspec.Struct, frozen=True):
    username: str
    agency_id: str
    role: str
    csrf_token: str
    expires_at: str | None = None


def _same_origin(request: web.Request) -> bool:
    """A sign-in posted from another site's page is refused (login CSRF). Browsers send
    Origin on every POST; clients without one (curl) are not browsers."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


@routes.post("/v1/session")
@doc("Sign in (sets the session cookie)", "console", request=SignIn,
     responses={200: SessionInfo}, errors=(401, 403, 413, 422, 429))
async def post_session(request: web.Request) -> web.Response:
    if not _same_origin(request):
        raise Forbidden("Sign in from geopush's own console")
    body = await decode_json(request, SignIn, limit=4096)
    username = normalize_username(body.username)
    address = limit_bucket(request_address(request))
    limiter = request.app[LOGINS]
    verdict = await limiter.check(username, address)
    if not verdict.allowed:
        log.warning("sign-in refused: too many attempts user=%s address=%s", username, address)
        raise Problem(429, "Too many sign-in attempts",
                      f"Try again in {verdict.retry_after_s} s", slug="rate-limited",
                      headers={"Retry-After": str(verdict.retry_after_s)})
    pool = request.app[POOL]
    user = await accounts.user_by_name(pool, username) if plausible_username(username) \
        else None
    ok = await asyncio.to_thread(verify_password, user.password_hash if user else None,
                                 body.password)
    await limiter.attempted(username, address, ok)
    if not ok or user is None:
        log.info("sign-in failed user=%s address=%s", username, address)
        raise Unauthorized("Wrong username or password")
    settings = request.app[SETTINGS]
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = dt.datetime.now(dt.UTC) + settings.session_lifetime
    await accounts.start_session(pool, user.id, token, csrf, expires)
    log.info("signed in user=%s agency=%s role=%s", user.username, user.agency_id, user.role)
    response = json_response(SessionInfo(user.username, user.agency_id, user.role, csrf,
                                         expires.isoformat()))
    response.set_cookie(
        SESSION_COOKIE, token, max_age=int(settings.session_lifetime.total_seconds()),
        path="/", httponly=True, samesite="Strict",
        secure=settings.session_cookie_secure or request.secure,
    )
    return response


@routes.get("/v1/session")
@doc("Who is signed in, and the session's CSRF token", "console", auth="editor",
     responses={200: SessionInfo}, errors=(401,))
async def get_session(request: web.Request) -> web.Response:
    if SESSION_COOKIE not in request.cookies:
        raise Unauthorized("Not signed in")
    who = await principal(request)
    if who.is_operator or who.agency_id is None or who.role is None \
            or who.csrf_token is None:
        raise Unauthorized("Not signed in")
    response = json_response(SessionInfo(who.name, who.agency_id, who.role, who.csrf_token))
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.delete("/v1/session")
@doc("Sign out", "console", auth="editor", responses={204: None}, errors=(401, 403))
async def delete_session(request: web.Request) -> web.Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token is None:
        raise Unauthorized("Not signed in")
    who = await principal(request)   # a valid session and its CSRF token
    await accounts.end_session(request.app[POOL], token)
    log.info("signed out user=%s", who.name)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
