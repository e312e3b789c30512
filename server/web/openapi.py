"""``GET /openapi.json``: the OpenAPI 3.1 document, generated from the msgspec types
the handlers decode requests with, so the document and the validation can't drift."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from server.formats.native import NativeIncident
from server.web.dryrun import DryRunResult
from server.web.routes import admin, alerts, devices, review, session, users
from server.web.routes.body import json_response
from server.web.routes.incidents import IncidentAccepted

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
class Op:
    method: str
    path: str
    summary: str
    tag: str
    auth: str | None = None              # "admin" | "editor" | "device" | "signature"
    request: Any = None
    responses: dict[int, Any] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    extra_request: dict[str, Any] = field(default_factory=dict)
    query: tuple[dict[str, Any], ...] = ()   # OpenAPI parameter objects ("in": "query")
    described: dict[int, str] = field(default_factory=dict)   # response descriptions


_XML = {"schema": {"type": "string", "description": "OASIS CAP 1.2 alert (XML)"}}
_EIDO = {"schema": {"type": "object", "description": "NENA EIDO (NENA-STA-024) JSON"}}

OPERATIONS = [
    Op("post", "/v1/agencies/{agency}/incidents", "Post an incident (CAD webhook)", "ingest",
       auth="signature", request=NativeIncident,
       responses={202: IncidentAccepted, 200: DryRunResult},
       errors=(401, 413, 415, 422, 429, 503),
       extra_request={"application/cap+xml": _XML, "application/xml": _XML,
                      "application/eido+json": _EIDO},
       query=({"name": "dry_run", "in": "query", "required": False,
               "schema": {"type": "boolean", "default": False},
               "description": "true: answer 200 with what the real call would do (decision "
                              "and rule, category, public text per locale, devices it would "
                              "alert now, warnings); nothing is stored, published or pushed, "
                              "and the same revision sent for real afterwards is not a "
                              "duplicate. Signed and refused exactly like the real call; "
                              "dry runs have their own per-agency rate limit."},),
       described={202: "Stored: the revision will be matched and pushed as decided",
                  200: "dry_run=true: what the real call would do; nothing was done"}),
    Op("post", "/v1/admin/agencies", "Create an agency (its secret is shown once)", "admin",
       auth="admin", request=admin.AgencyCreate, responses={201: admin.AgencyCreated},
       errors=(401, 409, 422)),
    Op("get", "/v1/admin/agencies/{agency}", "An agency's settings (never its secret)", "admin",
       auth="admin", responses={200: None}, errors=(401, 404)),
    Op("patch", "/v1/admin/agencies/{agency}", "Change an agency (JSON merge patch)", "admin",
       auth="agency_admin", request=admin.AgencyPatch, responses={200: None},
       errors=(401, 403, 404, 422)),
    Op("get", "/v1/admin/agencies/{agency}/unmapped", "Call types that arrived unmapped",
       "admin", auth="admin", responses={200: None}, errors=(401, 404)),
    Op("post", "/v1/admin/agencies/{agency}/secret",
       "Rotate the signing secret (the previous one verifies for 24 h)", "admin",
       auth="admin", responses={200: admin.AgencyCreated}, errors=(401, 404)),
    Op("get", "/v1/admin/review", "Alerts waiting for an editor (the caller's agency)",
       "review", auth="editor", responses={200: None}, errors=(401,)),
    Op("get", "/v1/admin/review/events", "Server-sent events: the queue changed", "review",
       auth="editor", responses={200: None}, errors=(401,)),
    Op("get", "/v1/admin/review/{incident}", "One item waiting for an editor", "review",
       auth="editor", responses={200: None}, errors=(401, 404)),
    Op("post", "/v1/admin/review/{incident}/approve", "Approve (optionally reworded)", "review",
       auth="editor", request=review.ReviewDecision, responses={200: None},
       errors=(401, 403, 404, 409, 422)),
    Op("post", "/v1/admin/review/{incident}/reject", "Reject: nothing is sent", "review",
       auth="editor", responses={200: None}, errors=(401, 403, 404, 409)),
    Op("post", "/v1/session", "Sign in (sets the session cookie)", "console",
       request=session.SignIn, responses={200: session.SessionInfo},
       errors=(401, 403, 422, 429)),
    Op("get", "/v1/session", "Who is signed in, and the session's CSRF token", "console",
       auth="editor", responses={200: session.SessionInfo}, errors=(401,)),
    Op("delete", "/v1/session", "Sign out", "console", auth="editor",
       responses={204: None}, errors=(401, 403)),
    Op("post", "/v1/admin/agencies/{agency}/users", "Create an editor or agency admin",
       "console", auth="agency_admin", request=users.UserCreate,
       responses={201: users.UserCreated}, errors=(401, 403, 404, 409, 422)),
    Op("get", "/v1/admin/agencies/{agency}/users", "The agency's accounts", "console",
       auth="agency_admin", responses={200: None}, errors=(401, 403, 404)),
    Op("delete", "/v1/admin/agencies/{agency}/users/{username}", "Remove an account",
       "console", auth="agency_admin", responses={204: None}, errors=(401, 403, 404)),
    Op("get", "/v1/admin/audit", "The audit log, newest first", "console",
       auth="agency_admin", responses={200: None}, errors=(401, 403, 422)),
    Op("post", "/v1/admin/agencies/{agency}/alerts/preview",
       "How many devices a manual alert's area reaches", "alerts", auth="agency_admin",
       request=alerts.AlertPreview, responses={200: None}, errors=(401, 403, 404, 422)),
    Op("post", "/v1/admin/agencies/{agency}/alerts", "Send a manual alert", "alerts",
       auth="agency_admin", request=alerts.AlertCreate, responses={201: alerts.AlertSent},
       errors=(401, 403, 404, 422)),
    Op("get", "/v1/agencies/{agency}/alerts.atom", "The agency's alerts, CAP 1.2 in Atom",
       "alerts", responses={200: None}, errors=(404,)),
    Op("get", "/v1/incidents", "The last hour's alerted incidents in ?bbox= (public points)",
       "public", responses={200: None}, errors=(422, 429)),
    Op("post", "/v1/devices", "Register a device (its secret is shown once; a token "
       "another device holds moves here)", "devices",
       request=devices.DeviceCreate, responses={201: devices.DeviceCreated},
       errors=(403, 422, 429)),
    Op("put", "/v1/devices/{device}/zones", "Replace the device's zones", "devices",
       auth="device", request=devices.ZonesPut, responses={200: None}, errors=(401, 422)),
    Op("put", "/v1/devices/{device}/preferences", "Categories, quiet hours, responder",
       "devices", auth="device", request=devices.PreferencesPut, responses={200: None},
       errors=(401, 422)),
    Op("put", "/v1/devices/{device}/token", "Rotate the push token", "devices",
       auth="device", request=devices.TokenPut, responses={204: None}, errors=(401, 422)),
    Op("put", "/v1/devices/{device}/location",
       "Where the phone is now (near me; responders): kept in Redis only, then forgotten",
       "devices", auth="device", request=devices.LocationPut, responses={204: None},
       errors=(401, 409, 422)),
    Op("post", "/v1/devices/{device}/alerts/{incident}/response",
       "A CPR responder's answer to an alert it received", "devices", auth="device",
       request=devices.ResponsePost, responses={200: None}, errors=(401, 403, 422)),
    Op("post", "/v1/admin/neighbourhoods",
       "Import neighbourhoods (GeoJSON; ?name_property=, ?id_property=, ?source=)", "admin",
       auth="admin", responses={200: None}, errors=(401, 415, 422),
       extra_request={"application/geo+json": {"schema": {"type": "object"}}}),
    Op("get", "/v1/admin/incidents/{incident}/responders",
       "Responders alerted to an incident and their answers (operator, or the agency's "
       "admins)", "admin", auth="admin", responses={200: None}, errors=(401, 403, 404)),
    Op("get", "/v1/admin/agencies/{agency}/responder-answers",
       "The agency's CPR calls of the last day: responders alerted and their answers",
       "admin", auth="agency_admin", responses={200: None}, errors=(401, 403, 404)),
    Op("get", "/v1/neighbourhoods", "Neighbourhoods containing ?lat=&lon=", "neighbourhoods",
       responses={200: None}, errors=(422,)),
    Op("get", "/v1/neighbourhoods/{id}", "One neighbourhood and its polygon", "neighbourhoods",
       responses={200: None}, errors=(404,)),
    Op("get", "/healthz", "The process is alive", "operations", responses={200: None}),
    Op("get", "/readyz", "PostgreSQL and Redis answer", "operations", responses={200: None},
       errors=(503,)),
]

_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "admin": [{"adminToken": []}],
    # the operator's token, or a console session (cookie + X-CSRF-Token on changes)
    "editor": [{"adminToken": []}, {"session": []}],
    "agency_admin": [{"adminToken": []}, {"session": []}],
    "device": [{"deviceSecret": []}],
    "signature": [{"webhookSignature": []}],
}


def _ref(t: Any) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{t.__name__}"}


def build_document() -> dict[str, Any]:
    types = {ProblemDocument}
    for op in OPERATIONS:
        if op.request is not None:
            types.add(op.request)
        types.update(t for t in op.responses.values() if t is not None)
    _, components = msgspec.json.schema_components(
        sorted(types, key=lambda t: t.__name__), ref_template="#/components/schemas/{name}")
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "responses": {}}
        params = [p.strip("{}") for p in op.path.split("/") if p.startswith("{")]
        if params or op.query:
            operation["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params] + list(op.query)
        if op.request is not None or op.extra_request:
            content = {"application/json": {"schema": _ref(op.request)}} if op.request else {}
            content.update(op.extra_request)
            operation["requestBody"] = {"required": True, "content": content}
        for status, typ in op.responses.items():
            response: dict[str, Any] = {"description": op.described.get(status, "OK")}
            if typ is not None:
                response["content"] = {"application/json": {"schema": _ref(typ)}}
            operation["responses"][str(status)] = response
        for status in op.errors:
            operation["responses"][str(status)] = {
                "description": "Problem", "content": {
                    "application/problem+json": {"schema": _ref(ProblemDocument)}}}
        if op.auth:
            operation["security"] = _SECURITY[op.auth]
        paths.setdefault(op.path, {})[op.method] = operation
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
async def openapi(request: web.Request) -> web.Response:
    return json_response(build_document())
