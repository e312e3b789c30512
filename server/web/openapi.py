"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the routes the app
really has and the msgspec types their handlers decode requests with and encode
responses from, so the document and the code can't drift.

Every handler says what it is with ``@doc(...)`` under its route decorator::

    @routes.get("/v1/things/{thing}")
    @doc("A thing", "things", auth="admin", responses={200: Thing}, errors=(401, 404))
    async def get_thing(request: web.Request) -> web.Response: ...

Method, path and path parameters come from the router. A route without ``@doc`` makes
``build_document`` raise (and ``tests/integration/test_openapi.py`` fail), so a new
route can't be left out of the contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from server.web.routes.body import json_response

routes = web.RouteTableDef()


class FieldProblem(msgspec.Struct, frozen=True):
    field: str
    message: str


class ProblemDocument(msgspec.Struct, frozen=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldProblem] | None = None


@dataclass(frozen=True)
class Body:
    """A request or response body that is not one msgspec type as JSON."""

    media_type: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Doc:
    summary: str
    tag: str
    auth: str | None = None  # "admin" | "editor" | "agency_admin" | "device" | "signature"
    request: Any = None                    # a msgspec type (JSON), or None
    request_bodies: tuple[Body, ...] = ()  # other media types accepted
    responses: dict[int, Any] = field(default_factory=dict)  # type | Body | None
    errors: tuple[int, ...] = ()
    query: tuple[Query, ...] = ()
    store: bool = True                     # needs PostgreSQL/Redis: may answer 503
    described: dict[int, str] = field(default_factory=dict)   # response descriptions


_ATTRIBUTE = "__openapi__"
H = TypeVar("H", bound=Callable[..., Any])


def doc(summary: str, tag: str, **details: Any) -> Callable[[H], H]:
    """Describe a handler for the OpenAPI document (see the module docstring)."""
    operation = Doc(summary, tag, **details)

    def mark(handler: H) -> H:
        setattr(handler, _ATTRIBUTE, operation)
        return handler

    return mark


_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "admin": [{"adminToken": []}],
    # the operator's token, or a console session (cookie + X-CSRF-Token on changes)
    "editor": [{"adminToken": []}, {"session": []}],
    "agency_admin": [{"adminToken": []}, {"session": []}],
    "device": [{"deviceSecret": []}],
    "signature": [{"webhookSignature": []}],
}
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
            413: "Payload too large",
            415: "Unsupported media type", 422: "Invalid request", 429: "Too many requests",
            503: "Unavailable"}


def _ref(t: Any) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{t.__name__}"}


def _content(body: Any) -> dict[str, Any]:
    if isinstance(body, Body):
        return {body.media_type: {"schema": body.schema}}
    return {"application/json": {"schema": _ref(body)}}


def operations(app: web.Application) -> list[tuple[str, str, Doc]]:
    """(method, path template, Doc) of every route; raises for an undocumented one."""
    found = []
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS") or route.resource is None \
                or isinstance(route.resource, web.StaticResource):
            continue     # static files (the console's scripts) are not the API
        path = route.resource.canonical
        documented = getattr(route.handler, _ATTRIBUTE, None)
        if documented is None:
            raise LookupError(f"{route.method} {path} has no @doc: add one (server/web/openapi.py)")
        found.append((route.method.lower(), path, documented))
    return found


def _operation(path: str, op: Doc) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": {}}
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"{([^}:]+)", path)]
    params += [{"name": q.name, "in": "query", "required": q.required,
                "description": q.description, "schema": q.schema} for q in op.query]
    if params:
        operation["parameters"] = params
    if op.request is not None or op.request_bodies:
        content: dict[str, Any] = _content(op.request) if op.request is not None else {}
        for body in op.request_bodies:
            content.update(_content(body))
        operation["requestBody"] = {"required": True, "content": content}
    for status, body in op.responses.items():
        response: dict[str, Any] = {
            "description": op.described.get(status) or _REASONS.get(status, "OK")}
        if body is not None:
            response["content"] = _content(body)
        operation["responses"][str(status)] = response
    # Any URL with a NUL character is refused 400 (server.web.problems.refuse_nul).
    for status in (400, *op.errors, *((503,) if op.store else ())):
        operation["responses"][str(status)] = {
            "description": _REASONS.get(status, "Problem"),
            "content": {"application/problem+json": {"schema": _ref(ProblemDocument)}}}
    if op.auth:
        operation["security"] = _SECURITY[op.auth]
    return operation


def build_document(app: web.Application) -> dict[str, Any]:
    ops = operations(app)
    types = {ProblemDocument}
    for _, _, op in ops:
        bodies = [op.request, *op.responses.values()]
        types.update(t for t in bodies if t is not None and not isinstance(t, Body))
    _, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in sorted(ops, key=lambda o: (o[1], o[0])):
        paths.setdefault(path, {})[method] = _operation(path, op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "geopush", "version": "1",
                 "description": "Geofenced push alerts from CAD incidents. See "
                                "docs/cad-integration.md for the webhook signature."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "GEOPUSH_ADMIN_TOKEN"},
                "session": {"type": "apiKey", "in": "cookie", "name": "geopush_session",
                            "description": "POST /v1/session; changes also need the "
                                           "X-CSRF-Token header GET /v1/session gives"},
                "deviceSecret": {"type": "http", "scheme": "bearer",
                                 "description": "the secret POST /v1/devices returned"},
                "webhookSignature": {
                    "type": "apiKey", "in": "header", "name": "Geopush-Signature",
                    "description": 't=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." '
                                   '+ raw body)>; rejected when |now - t| > 300 s'},
            },
        },
    }


@routes.get("/openapi.json")
@doc("This document", "operations", responses={200: Body("application/json",
                                                         {"type": "object"})}, store=False)
async def openapi(request: web.Request) -> web.Response:
    return json_response(build_document(request.app))
