"""CAP 1.2 and NENA EIDO through the real endpoint, and hypothesis throwing anything at
it: every answer is a 202 or a 4xx problem document, never a 500 or a traceback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain.signing import HEADER, sign
from server.settings import Settings
from tests.conftest import ADMIN_TOKEN, Services
from tests.helpers import FIXTURES, SEATTLE_CALL_TYPES, create_agency, fresh_times, signed
from tests.live import live_app


async def _post(client: Any, secret: str, body: bytes, content_type: str) -> tuple[int, Any]:
    r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                          headers={**signed(secret, body), "Content-Type": content_type})
    return r.status, await r.json()


async def test_cap_revisions_share_one_incident_and_cancel_closes_it(client: Any) -> None:
    secret = await create_agency(client)
    alert, update, cancel = fresh_times(*((FIXTURES / "cap" / f).read_text()
                                     for f in ("fire_circle.xml", "update.xml", "cancel.xml")))
    answers = [await _post(client, secret, x.encode(), "application/cap+xml")
               for x in (alert, update, cancel)]
    assert [a[0] for a in answers] == [202, 202, 202]
    assert [a[1]["decision"] for a in answers] == ["alert", "alert", "suppressed:cancelled"]
    assert len({a[1]["incident_id"] for a in answers}) == 1
    [test] = fresh_times((FIXTURES / "cap" / "test_status.xml").read_text())
    status, answer = await _post(client, secret, test.encode(), "application/xml")
    assert (status, answer["decision"]) == (202, "suppressed:test")


async def test_every_cap_fixture_is_accepted_or_refused_safely(
    client: Any, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client, call_types={
        **SEATTLE_CALL_TYPES, "Structure Fire": "structure_fire", "Fire": "structure_fire"})
    answers = {}
    for name in sorted(p.name for p in (FIXTURES / "cap").glob("*.xml")):
        body = fresh_times((FIXTURES / "cap" / name).read_text())[0].encode()
        r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                              headers={**signed(secret, body),
                                       "Content-Type": "application/cap+xml"})
        answers[name] = (r.status, await r.json())
    for name, (status, answer) in answers.items():
        if any(w in name for w in ("laugh", "entity", "dtd", "xxe")):
            assert status == 422, (name, answer)
        else:
            assert status == 202, (name, answer)
    assert await pool.fetchval("SELECT count(*) FROM incidents") >= 3


async def test_eido_documents(client: Any) -> None:
    secret = await create_agency(client, call_types={
        **SEATTLE_CALL_TYPES, "Fire-Structure": "structure_fire", "Fire": "structure_fire"})
    for path in sorted((FIXTURES / "eido").glob("*.json")):
        body = fresh_times(path.read_text())[0].encode()
        r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                              headers={**signed(secret, body),
                                       "Content-Type": "application/eido+json"})
        answer = await r.json()
        expected = 422 if any(w in path.name for w in ("laugh", "entity")) else 202
        assert r.status == expected, (path.name, answer)


@pytest.fixture(scope="module")
def live_server(services: Services) -> Iterator[tuple[str, str]]:
    settings = Settings(database_url=services.database_url, redis_url=services.redis_url,
                        admin_token=ADMIN_TOKEN)

    async def agency() -> None:
        conn = await asyncpg.connect(services.database_url)
        try:
            await conn.execute("DELETE FROM agencies WHERE id = 'fuzz'")
            await conn.execute(
                """INSERT INTO agencies (id, name, timezone, call_types, signing_secret,
                                         rate_limit_per_minute)
                   VALUES ('fuzz', 'Fuzz', 'UTC', '{"fire in building": "structure_fire"}',
                           'fuzz-secret', 1000000)""")
        finally:
            await conn.close()

    with live_app(settings) as app:
        app.run(agency())
        yield app.url, "fuzz-secret"


def _fixture_bodies() -> list[bytes]:
    return [fresh_times(p.read_text())[0].encode()
            for p in sorted(FIXTURES.glob("*/*")) if p.suffix in (".xml", ".json")]


def _mutate(body: bytes, cuts: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(body)
    for position, insert in cuts:
        at = position % (len(out) + 1)
        out[at:at + len(insert)] = insert
    return bytes(out)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=20,
)
native_like = st.fixed_dictionaries(
    {"id": st.text(max_size=10) | st.integers(), "call_type": st.text(max_size=20),
     "occurred_at": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday", ""]) | st.integers(),
     "location": st.dictionaries(st.sampled_from(["lat", "lon", "address", "kind"]),
                                 json_values, max_size=4)},
    optional={"status": json_values, "updated_at": json_values, "priority": json_values},
)
bodies = st.one_of(
    st.binary(max_size=2000),
    json_values.map(lambda v: json.dumps(v).encode()),
    native_like.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from(_fixture_bodies()),
              st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=8)), max_size=4)
              ).map(lambda t: _mutate(*t)),
)
content_types = st.sampled_from(["application/json", "application/cap+xml", "application/xml",
                                 "application/eido+json", "text/plain", ""])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies, content_type=content_types)
def test_any_input_gets_202_or_a_4xx_problem(
    live_server: tuple[str, str], body: bytes, content_type: str
) -> None:
    url, secret = live_server
    headers = {HEADER: sign(secret, body, int(time.time()))}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(f"{url}/v1/agencies/fuzz/incidents", data=body,  # noqa: S310
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            status, ctype, text = resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        status, ctype, text = exc.code, exc.headers["Content-Type"], exc.read()
    assert status == 202 or 400 <= status < 500, (status, text[:300])
    assert b"Traceback" not in text
    if status != 202:
        assert ctype.startswith("application/problem+json")
        problem = json.loads(text)
        assert problem["status"] == status and problem["title"]
