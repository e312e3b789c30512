"""Agencies' named accounts and the audit log.

``POST/GET /v1/admin/agencies/{agency}/users``, ``DELETE .../users/{username}``: the
operator for any agency and role; an agency admin for their own agency's editors.
``GET /v1/admin/audit``: the operator sees every agency, an agency admin their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import asyncpg
import msgspec
from aiohttp import web

from server.domain.accounts import (
    AGENCY_ADMIN,
    EDITOR,
    OPERATOR,
    Principal,
    hash_password,
    normalize_username,
    validate_new_account,
)
from server.domain.text import NO_NUL, SINGLE_LINE, Line
from server.store import accounts, audit
from server.store.db import create_pool
from server.web.appkeys import POOL
from server.web.openapi import Query, doc
from server.web.principal import Forbidden, principal, require_agency_admin
from server.web.problems import FieldError, NotFound, Problem, ValidationFailed
from server.web.routes.body import decode_json, json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


class UserCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(max_length=200, pattern=SINGLE_LINE)]
    password: Annotated[str, msgspec.Meta(max_length=1024, pattern=NO_NUL)]
    role: Line = EDITOR


class UserCreated(msgspec.Struct, frozen=True):
    username: str
    role: str
    agency_id: str


class UserView(msgspec.Struct, frozen=True):
    username: str
    role: str
    agency_id: str
    created_at: str
    created_by: str


class Users(msgspec.Struct, frozen=True):
    users: list[UserView]


class AuditEntry(msgspec.Struct, frozen=True):
    id: int
    at: str
    actor: str
    agency_id: str | None
    action: str
    target: str | None
    # Free-form by design: each action records its own facts (an agency's changed
    # fields, a manual alert's text and area, a user's role).
    details: Annotated[dict[str, Any], msgspec.Meta(
        description="what the action changed; its shape depends on the action")]


class AuditLog(msgspec.Struct, frozen=True):
    entries: list[AuditEntry]


def _may_manage(who: Principal, role: str) -> None:
    # An agency admin manages the agency's editors; admins are the operator's to make.
    if not who.is_operator and role == AGENCY_ADMIN:
        raise Forbidden("Only the operator creates or removes agency admins")


async def add_user(pool: asyncpg.Pool, *, agency_id: str, username: str, password: str, role: str,
                   actor: str) -> str:
    """Validate, hash (off the event loop) and store; the normalized username.
    Shared by the API and ``geopush user create``."""
    name = validate_new_account(username, password, role)
    password_hash = await asyncio.to_thread(hash_password, password)
    try:
        await accounts.create_user(pool,
                                   agency_id=agency_id, username=name,
                                   password_hash=password_hash, role=role, created_by=actor)
    except accounts.UserExists:
        raise Problem(409, "Username taken", f"The username {name!r} is taken",
                      slug="conflict") from None
    except accounts.NoSuchAgency:
        raise NotFound(f"No agency {agency_id!r}") from None
    return name


async def create_user_offline(database_url: str, *, agency_id: str, username: str,
                              password: str, role: str) -> str:
    """``geopush user create``: the same checks and audit entry (by "operator")."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        return await add_user(pool, agency_id=agency_id, username=username,
                              password=password, role=role, actor=OPERATOR)
    finally:
        await pool.close()


@routes.post("/v1/admin/agencies/{agency}/users")
@doc("Create an editor or agency admin", "console", auth="agency_admin", request=UserCreate,
     responses={201: UserCreated}, errors=(401, 403, 404, 409, 413, 422))
async def post_user(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    who = await require_agency_admin(request, agency_id)
    body = await decode_json(request, UserCreate, limit=8192)
    _may_manage(who, body.role)
    name = await add_user(request.app[POOL], agency_id=agency_id, username=body.username,
                          password=body.password, role=body.role, actor=who.name)
    log.info("user created agency=%s user=%s role=%s by=%s", agency_id, name, body.role,
             who.name)
    return json_response(UserCreated(name, body.role, agency_id), status=201)


@routes.get("/v1/admin/agencies/{agency}/users")
@doc("The agency's accounts", "console", auth="agency_admin",
     responses={200: Users},
     errors=(401, 403, 404))
async def get_users(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    await require_agency_admin(request, agency_id)
    found = await accounts.list_users(request.app[POOL], agency_id)
    return json_response(Users(msgspec.convert(found, list[UserView])))


@routes.delete("/v1/admin/agencies/{agency}/users/{username}")
@doc("Remove an account", "console", auth="agency_admin", responses={204: None},
     errors=(401, 403, 404))
async def delete_user(request: web.Request) -> web.Response:
    agency_id = request.match_info["agency"]
    who = await require_agency_admin(request, agency_id)
    username = normalize_username(request.match_info["username"])
    pool = request.app[POOL]
    existing = [u for u in await accounts.list_users(pool, agency_id)
                if u["username"] == username]
    if not existing:
        raise NotFound(f"No user {username!r} in agency {agency_id!r}")
    _may_manage(who, existing[0]["role"])
    if await accounts.delete_user(pool, agency_id, username, actor=who.name) is None:
        raise NotFound(f"No user {username!r} in agency {agency_id!r}")
    log.info("user deleted agency=%s user=%s by=%s", agency_id, username, who.name)
    return web.Response(status=204)


def _int_param(request: web.Request, name: str, default: int | None, lo: int,
               hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed([FieldError(name, "must be an integer")]) from None
    if not lo <= value <= hi:
        raise ValidationFailed([FieldError(name, f"must be between {lo} and {hi}")])
    return value


@routes.get("/v1/admin/audit")
@doc("The audit log, newest first", "console", auth="agency_admin",
     responses={200: AuditLog},
     errors=(401, 403, 422),
     query=(Query("limit", "1-1000, default 100", {"type": "integer"}),
            Query("before", "an entry id: older entries", {"type": "integer"}),
            Query("agency", "the operator only: this agency's entries")))
async def get_audit(request: web.Request) -> web.Response:
    """Newest first, ``limit`` (default 100) at a time; ``before`` (an entry id) pages
    back; ``agency`` narrows the operator's view."""
    who = await principal(request)
    if who.is_operator:
        agency_id = request.query.get("agency")
    elif who.role == AGENCY_ADMIN:
        agency_id = who.agency_id
    else:
        raise Forbidden("The audit log is for agency admins and the operator")
    limit = _int_param(request, "limit", 100, 1, 1000)
    before = _int_param(request, "before", None, 1, 2**62)
    assert limit is not None
    items = await audit.entries(request.app[POOL], agency_id=agency_id, before_id=before,
                                limit=limit)
    return json_response(AuditLog(msgspec.convert(items, list[AuditEntry])))
