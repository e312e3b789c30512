"""Forged webhooks: any malformed Geopush-Signature is the same 401 for a known agency as
for an unknown one (never a 500, never a traceback), they cost no PostgreSQL query
each, and the requests that fail verification are rate limited too (real Redis)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain.signing import HEADER, sign
from server.settings import Settings
from server.store import agencies as agency_store
from server.web import agency_cache
from server.web.app import create_app
from tests.conftest import ADMIN_TOKEN, Services, with_settings
from tests.helpers import create_agency, incident
from tests.live import LiveApp, live_app

BODY = json.dumps(incident()).encode()


@pytest.fixture(scope="module")
def app(services: Services) -> Iterator[tuple[LiveApp, str]]:
    conf = Settings(database_url=services.database_url, redis_url=services.redis_url,
                    admin_token=ADMIN_TOKEN, rejected_webhooks_per_minute=0)
    with live_app(conf) as live:
        status, created = _post(live, "/v1/admin/agencies", json.dumps({
            "id": "forged-known", "name": "Known", "timezone": "UTC"}).encode(),
            {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
        assert status == 201, created
        yield live, created["secret"]


def _post(live: LiveApp, path: str, body: bytes, headers: dict[str, Any]) -> tuple[int, Any]:
    url = urlsplit(live.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        raw, status, ctype = resp.read(), resp.status, resp.getheader("Content-Type", "")
    finally:
        conn.close()
    assert b"Traceback" not in raw
    if status >= 400:
        assert ctype.startswith("application/problem+json"), (status, raw[:200])
    return status, json.loads(raw) if raw else None


# What an HTTP field value may hold (RFC 9110: visible ASCII, space, tab, and bytes
# above 0x7f, here UTF-8). Control characters never reach the app: aiohttp's parser
# answers 400 for them, before any route, alike for every agency.
_HEADER_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\t"),
                       max_size=80).map(str.strip)
MALFORMED = st.one_of(
    _HEADER_TEXT,
    st.builds(lambda t, v: f"t={t},v1={v}", st.integers(-10**40, 10**40) | _HEADER_TEXT,
              _HEADER_TEXT),
    st.builds(lambda v: f"t={int(time.time())},v1={v}",
              st.sampled_from(["é" * 64, "a" * 63, "a" * 65, "z" * 64, "", "ab" * 100])),
    st.sampled_from(["t=", "v1=", "t=1", f"v1={'a' * 64}", "t=" + "9" * 5000, ",", "=",
                     f"t={int(time.time())}", "t=1e9,v1=" + "a" * 64]),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MALFORMED)
def test_a_malformed_signature_is_one_401_for_known_and_unknown_agencies(
    app: tuple[LiveApp, str], header: str
) -> None:
    live, _ = app
    answers = []
    for agency in ("forged-known", "forged-unknown"):
        status, problem = _post(live, f"/v1/agencies/{agency}/incidents", BODY, {
            HEADER: header.encode("utf-8"), "Content-Type": "application/json"})
        answers.append((status, problem))
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


def test_a_good_signature_still_works(app: tuple[LiveApp, str]) -> None:
    live, secret = app
    status, accepted = _post(live, "/v1/agencies/forged-known/incidents", BODY, {
        HEADER: sign(secret, BODY, int(time.time())), "Content-Type": "application/json"})
    assert status == 202, accepted


class _Counted:
    def __init__(self) -> None:
        self.queries = 0


async def test_forged_webhooks_cost_no_query_each(
    client: TestClient[Any, Any], pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agency cache is the ingest path's only way to PostgreSQL before a webhook
    is verified: count what it reads while forgeries pour in."""
    await create_agency(client)
    counted = _Counted()
    real_get, real_ids = agency_store.get_agency, agency_store.agency_ids

    async def get_agency(p: asyncpg.Pool, agency_id: str) -> Any:
        counted.queries += 1
        return await real_get(p, agency_id)

    async def agency_ids(p: asyncpg.Pool) -> frozenset[str]:
        counted.queries += 1
        return await real_ids(p)

    monkeypatch.setattr(agency_cache, "get_agency", get_agency)
    monkeypatch.setattr(agency_cache, "agency_ids", agency_ids)
    forged = {HEADER: sign("not-the-secret", BODY, int(time.time())),
              "Content-Type": "application/json"}
    for i in range(60):
        for agency in ("seattle-fire", f"no-such-agency-{i}"):
            r = await client.post(f"/v1/agencies/{agency}/incidents", data=BODY,
                                  headers=forged)
            assert r.status == 401
    # A couple of reads (the ids, the agency, one re-read for a rotated secret), not 120.
    assert counted.queries <= 4, counted.queries


async def test_rejected_webhooks_are_rate_limited_alike(
    settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    limited = with_settings(settings, rejected_webhooks_per_minute=5)
    async with TestClient(TestServer(create_app(limited))) as client:
        secret = await create_agency(client)
        forged = {HEADER: "t=1,v1=" + "a" * 64, "Content-Type": "application/json"}
        answers: dict[str, list[int]] = {}
        for agency in ("seattle-fire", "no-such-agency"):
            answers[agency] = []
            for _ in range(8):
                r = await client.post(f"/v1/agencies/{agency}/incidents", data=BODY,
                                      headers=forged)
                answers[agency].append(r.status)
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
        assert answers["seattle-fire"] == answers["no-such-agency"]
        assert answers["seattle-fire"][:5] == [401] * 5 and 429 in answers["seattle-fire"]
        # The agency's own, signed webhooks are not held back by the forgeries.
        r = await client.post("/v1/agencies/seattle-fire/incidents", data=BODY,
                              headers={HEADER: sign(secret, BODY, int(time.time())),
                                       "Content-Type": "application/json"})
        assert r.status == 202
