"""The OpenAPI document covers every route the app has, and the served app keeps to it:
schemathesis sends each operation a bounded number of generated requests (derandomized,
so a run is reproducible) with the admin token and a real device's secret, and every
answer must be a non-5xx whose status, content type, headers and body the document
describes."""

from __future__ import annotations

import json
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.dev.demo import push_token
from server.settings import Settings
from server.web.app import create_app
from server.web.openapi import build_document, operations
from tests.conftest import ADMIN_TOKEN, Services
from tests.helpers import SEATTLE_CALL_TYPES
from tests.live import LiveApp, live_app

EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def _app(services: Services) -> web.Application:
    return create_app(Settings(database_url=services.database_url,
                               redis_url=services.redis_url, admin_token=ADMIN_TOKEN))


def test_every_route_is_in_the_document(services: Services) -> None:
    app = _app(services)
    document = build_document(app)
    routed = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method not in ("HEAD", "OPTIONS") and r.resource is not None
              and not isinstance(r.resource, web.StaticResource)}   # files, not the API
    documented = {(method, path) for path, item in document["paths"].items()
                  for method in item}
    assert documented == routed
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (method, path)
            if "security" in operation:
                assert "401" in operation["responses"], (method, path)
            if "requestBody" in operation:
                assert "422" in operation["responses"] or path == "/v1/admin/aeds"


def test_an_undocumented_route_is_refused(services: Services) -> None:
    app = _app(services)

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/v1/new-thing", undocumented)
    with pytest.raises(LookupError, match="GET /v1/new-thing has no @doc"):
        operations(app)


def _post(url: str, body: dict[str, Any], token: str = "") -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 (a local URL)
        url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def live(services: Services) -> Iterator[LiveApp]:
    # Every example registers from 127.0.0.1: the per-address limit (tested on its
    # own) would turn the registrations into 429s (documented, but saying nothing).
    settings_ = Settings(database_url=services.database_url, redis_url=services.redis_url,
                         admin_token=ADMIN_TOKEN, device_registrations_per_hour_per_ip=10**6)
    with live_app(settings_) as app:
        yield app


# The document the app builds (no connection is made to build it); the test checks it
# is exactly what the live app serves.
DOCUMENT = build_document(create_app(Settings(database_url="postgresql://unused",
                                              redis_url="redis://unused")))


@pytest.fixture
def known(live: LiveApp) -> dict[str, str]:
    """An agency and a device of this test (one operation's examples)."""
    agency = f"fuzz-{_counter()}"
    _post(f"{live.url}/v1/admin/agencies", {"id": agency, "name": "Fuzz",
                                            "call_types": SEATTLE_CALL_TYPES}, ADMIN_TOKEN)
    device = _post(f"{live.url}/v1/devices", {"platform": "fcm", "token": push_token("fcm")})
    return {"agency": agency, "device": device["id"], "secret": device["secret"]}


_COUNT = [0]


def _counter() -> int:
    _COUNT[0] += 1
    return _COUNT[0]


schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_served_document_is_the_generated_one(live: LiveApp) -> None:
    with urllib.request.urlopen(f"{live.url}/openapi.json", timeout=10) as resp:  # noqa: S310
        assert json.loads(resp.read()) == DOCUMENT


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None,
          database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_the_served_app_keeps_to_its_document(case: Any, live: LiveApp,
                                              known: dict[str, str]) -> None:
    ok = case.operation.definition.raw["responses"].get("200", {})
    if "text/event-stream" in ok.get("content", {}):
        return   # an event stream never ends: its refusals are tested with the console
    security = case.operation.definition.raw.get("security") or [{}]
    headers = {}
    if "deviceSecret" in security[0]:
        headers["Authorization"] = f"Bearer {known['secret']}"
        # Half the examples on the real device (what its owner can do), half on
        # whatever was generated (what a stranger gets).
        if case.path_parameters and zlib.crc32(repr(case.body).encode()) % 2 == 0:
            case.path_parameters["device"] = known["device"]
    elif "adminToken" in security[0]:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        if case.path_parameters and "agency" in case.path_parameters:
            case.path_parameters["agency"] = known["agency"]
    case.call_and_validate(base_url=live.url, headers=headers, checks=CHECKS)


async def test_a_url_with_a_nul_character_is_refused_before_any_handler(client: Any) -> None:
    # Found by schemathesis: a NUL in ?agency= reached PostgreSQL (which refuses it).
    for url in ("/v1/admin/review?agency=a%00b", "/v1/transparency/a%00b",
                "/v1/admin/agencies/x%00/unmapped"):
        resp = await client.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert resp.status == 400, url
        assert (await resp.json())["detail"] == "The URL holds a NUL character"


# Free-form on purpose, each with why; everything else in a JSON body is generated from
# a msgspec type, down to its leaves.
FREE_FORM_REQUESTS = {
    "POST /v1/admin/aeds application/geo+json":
        "a GeoJSON FeatureCollection upload, checked by server.domain.aed_import",
    "POST /v1/admin/aeds application/json":
        "the same FeatureCollection under its generic media type",
    "POST /v1/admin/neighbourhoods application/geo+json":
        "a city's GeoJSON FeatureCollection, checked by server.domain.neighbourhood_import",
    "POST /v1/admin/neighbourhoods application/json":
        "the same FeatureCollection under its generic media type",
    "POST /v1/agencies/{agency}/incidents application/eido+json":
        "a NENA EIDO document (a large external standard), read by server.formats.eido",
    "ZoneIn.geometry": "a GeoJSON geometry, checked by server.domain.zones.area",
    "AlertPreview.area": "a GeoJSON polygon, checked by server.domain.manual_alert",
    "AlertCreate.area": "a GeoJSON polygon, checked by server.domain.manual_alert",
}
FREE_FORM_RESPONSES = {
    "GET /openapi.json application/json":
        "this document: its schema is OpenAPI's own meta-schema",
    "AuditEntry.details":
        "each audited action records its own facts (an agency's changed fields, a manual "
        "alert's text and area, a user's role)",
}
_ANNOTATIONS = {"description", "title", "default", "examples", "deprecated"}


def _untyped(schema: dict[str, Any], where: str, components: dict[str, Any],
             seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """Where in ``schema`` a value is left undescribed: ``{}`` (any value) or an object
    with neither properties nor a typed ``additionalProperties``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:
            yield from _untyped(components[name], name, components, seen | {name})
        return
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    extra = schema.get("additionalProperties")
    if not set(schema) - _ANNOTATIONS or (
            "object" in types and "properties" not in schema
            and (extra is None or extra is True or extra == {})):
        yield where
    for key, sub in schema.get("properties", {}).items():
        yield from _untyped(sub, f"{where}.{key}", components, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _untyped(schema[key], f"{where}[]", components, seen)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in schema.get(key, []):
            yield from _untyped(sub, where, components, seen)


def test_every_json_body_is_generated_from_a_type(live: LiveApp) -> None:
    with urllib.request.urlopen(f"{live.url}/openapi.json", timeout=10) as resp:  # noqa: S310
        document = json.loads(resp.read())
    components = document["components"]["schemas"]
    requests: set[str] = set()
    responses: set[str] = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            name = f"{method.upper()} {path}"
            bodies = operation.get("requestBody", {}).get("content", {})
            for media, body in bodies.items():
                if "json" in media:
                    requests.update(_untyped(body["schema"], f"{name} {media}", components))
            for status, response in operation["responses"].items():
                for media, body in response.get("content", {}).items():
                    if "json" not in media:
                        continue
                    where = f"{name} {media}"
                    responses.update(_untyped(body["schema"], where, components))
                    # a JSON answer is one of the handler's types, not a hand-written schema
                    assert "$ref" in body["schema"] or where in FREE_FORM_RESPONSES, \
                        (where, status)
    assert requests == set(FREE_FORM_REQUESTS)
    assert responses == set(FREE_FORM_RESPONSES)
