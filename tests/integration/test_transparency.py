"""The public transparency report, and retention that deletes what it counts without
changing its figures."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
from hypothesis import given
from hypothesis import strategies as st

from server.store.transparency import DayCounts
from server.web.routes.transparency import MIN_COUNT, publish, withheld
from tests.helpers import create_agency, incident, post_incident
from workers.maintenance import Retention, apply_retention

TZ = ZoneInfo("America/Los_Angeles")


async def _incidents(client: Any, secret: str) -> list[str]:
    """Six structure fires alerted, two medical calls and one stale fire suppressed."""
    ids = []
    for n in range(6):
        status, accepted = await post_incident(client, secret, incident(f"FIRE{n}"))
        assert (status, accepted["decision"]) == (202, "alert")
        ids.append(accepted["incident_id"])
    for n in range(2):
        _, accepted = await post_incident(client, secret,
                                          incident(f"MED{n}", call_type="Aid Response"))
        assert accepted["decision"] == "suppressed:category"
    _, accepted = await post_incident(client, secret, incident("OLD", minutes_ago=300))
    assert accepted["decision"] == "suppressed:stale"
    return ids


async def _deliveries(pool: asyncpg.Pool, incident_ids: list[str]) -> None:
    """Ten pushes per fire, 100 ms to 1 s after the incident arrived."""
    await pool.executemany(
        """INSERT INTO deliveries (incident_id, platform, outcome, latency_ms)
           VALUES ($1::uuid, 'apns', 'sent', $2)""",
        [(i, 100 * (n + 1)) for i in incident_ids for n in range(10)])


async def _report(client: Any, day: dt.date) -> dict[str, Any]:
    resp = await client.get(f"/v1/transparency/seattle-fire?from={day}&to={day}")
    assert resp.status == 200, await resp.text()
    report: dict[str, Any] = await resp.json()
    return report


def _by_category(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["category"]: row for row in report["days"]}


async def test_report_counts_per_day_and_category_and_withholds_small_counts(
    client: Any, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client)
    ids = await _incidents(client, secret)
    await _deliveries(pool, ids)
    today = dt.datetime.now(TZ).date()
    report = await _report(client, today)
    assert (report["agency"], report["from"], report["to"], report["min_count"]) == \
        ("seattle-fire", today.isoformat(), today.isoformat(), MIN_COUNT)
    rows = _by_category(report)
    fire = rows["structure_fire"]
    # Seven received: six alerted, one stale. The one is withheld, and so is the total:
    # 7 - 6 would give it away.
    assert fire["received"] is None
    assert fire["alerted"] == 6
    assert fire["suppressed"] == {"category": 0, "stale": None, "test": 0, "unmapped": 0,
                                  "other": 0}
    assert fire["review"] == {"held": 0, "approved": 0, "rejected": 0, "expired": 0}
    assert fire["devices_reached"] == 60
    assert fire["latency_p50_s"] == 0.55 and fire["latency_p95_s"] == 1.0
    medical = rows["medical"]
    assert medical["received"] is None and medical["suppressed"]["category"] is None
    assert medical["latency_p50_s"] is None
    # Counts only: no incident id, external id, place or coordinate anywhere.
    text = json.dumps(report)
    for private in [*ids, "FIRE0", "MED0", "24th", "47.6", "-122."]:
        assert private not in text


def test_small_counts_are_withheld_and_others_published() -> None:
    assert [withheld(n) for n in (0, 1, 4, 5, 17)] == [0, None, None, 5, 17]


@given(st.lists(st.integers(0, 40), min_size=6, max_size=6),
       st.lists(st.integers(0, 40), min_size=3, max_size=3), st.integers(0, 40))
def test_no_withheld_count_can_be_had_by_subtraction(
    parts: list[int], outcomes: list[int], pending: int
) -> None:
    """received = its five suppressed counts + alerted (here: nothing else); held =
    approved + rejected + expired (+ still pending, 0 once a day is over). Wherever the
    total is published with all its parts but one, that one is published too."""
    counts = dict(zip(("suppressed_category", "suppressed_stale", "suppressed_test",
                       "suppressed_unmapped", "suppressed_other", "alerted"), parts,
                      strict=True))
    counts |= dict(zip(("review_approved", "review_rejected", "review_expired"), outcomes,
                       strict=True))
    counts |= {"received": sum(parts), "review_held": sum(outcomes) + pending,
               "devices_reached": 0, "latency_p50_ms": None, "latency_p95_ms": None}
    row = publish(DayCounts(dt.date(2026, 11, 30), "structure_fire", counts))
    for published_total, published_parts in (
            (row.received, [*msgspec.structs.astuple(row.suppressed), row.alerted]),
            (row.review.held, [row.review.approved, row.review.rejected,
                               row.review.expired])):
        if published_total is not None:
            assert None not in published_parts


async def test_report_rejects_bad_ranges_and_unknown_agencies(client: Any, pool: asyncpg.Pool
                                                              ) -> None:
    await create_agency(client)
    for query, field in (("from=2026-02-30", "from"), ("to=yesterday", "to"),
                         ("from=2026-03-02&to=2026-03-01", "from"),
                         ("from=2020-01-01&to=2026-01-01", "from")):
        resp = await client.get(f"/v1/transparency/seattle-fire?{query}")
        assert resp.status == 422, query
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["errors"][0]["field"] == field
    assert (await client.get("/v1/transparency/nobody")).status == 404
    page = await client.get("/transparency/seattle-fire")
    assert page.status == 200 and page.content_type == "text/html"
    assert "/v1/transparency/" in await page.text()


async def test_retention_deletes_in_batches_and_the_report_keeps_its_figures(
    client: Any, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client)
    ids = await _incidents(client, secret)
    await _deliveries(pool, ids)
    # Everything happened 40 days ago, at noon in Seattle.
    then = dt.datetime.now(TZ).replace(hour=12, minute=0) - dt.timedelta(days=40)
    await pool.execute("UPDATE incidents SET received_at = $1", then)
    await pool.execute("UPDATE deliveries SET created_at = $1", then)
    await pool.execute("UPDATE review_items SET created_at = $1", then)
    before = await _report(client, then.date())
    assert _by_category(before)["structure_fire"]["devices_reached"] == 60

    now = dt.datetime.now(dt.UTC)
    deleted = await apply_retention(pool, Retention(), now, batch=7)
    assert deleted == (60, 0)          # deliveries past 30 days; incidents kept a year
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 0
    assert await pool.fetchval("SELECT count(*) FROM incidents") == 9
    assert await _report(client, then.date()) == before

    a_year_later = now + dt.timedelta(days=366)
    assert await apply_retention(pool, Retention(), a_year_later, batch=4) == (0, 9)
    assert await pool.fetchval("SELECT count(*) FROM incidents") == 0
    assert await _report(client, then.date()) == before
    # Rolled up once: running it again changes nothing.
    assert await apply_retention(pool, Retention(), a_year_later) == (0, 0)
    assert await _report(client, then.date()) == before


async def test_recent_rows_are_kept(client: Any, pool: asyncpg.Pool) -> None:
    secret = await create_agency(client)
    await _deliveries(pool, await _incidents(client, secret))
    assert await apply_retention(pool, Retention(), dt.datetime.now(dt.UTC)) == (0, 0)
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 60
