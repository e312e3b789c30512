"""The public transparency report: what an agency's incidents became, per day and
category, as counts only. ``GET /v1/transparency/{agency}?from=&to=`` (JSON) and
``GET /transparency/{agency}`` (a page with charts, reading the JSON).

No incident ids, no location finer than the agency, nothing about a device; and every
count from 1 to ``MIN_COUNT - 1`` is withheld (null), so one incident can't be singled
out of a day's figures. A total is withheld too when one of its parts is (received is
the sum of the suppressed counts, alerted and what review still holds; held for review
of its outcomes): otherwise a withheld count would be had by subtraction. Latency
percentiles are shown only over ``MIN_COUNT`` pushes or more, for the same reason."""

from __future__ import annotations

import datetime as dt
from importlib import resources
from zoneinfo import ZoneInfo

import msgspec
from aiohttp import web

from server.store import transparency
from server.store.agencies import get_agency
from server.web.appkeys import POOL
from server.web.openapi import Body, Query, doc
from server.web.problems import FieldError, NotFound, ValidationFailed
from server.web.routes.body import json_response

routes = web.RouteTableDef()

MIN_COUNT = 5
MAX_DAYS = 366
DEFAULT_DAYS = 30

Count = int | None     # None: withheld (1 to MIN_COUNT - 1, or a total with a withheld part)


class Suppressed(msgspec.Struct, frozen=True):
    category: Count
    stale: Count
    test: Count
    unmapped: Count
    other: Count


class Review(msgspec.Struct, frozen=True):
    held: Count
    approved: Count
    rejected: Count
    expired: Count


class DayRow(msgspec.Struct, frozen=True):
    date: str
    category: str
    received: Count
    suppressed: Suppressed
    review: Review
    alerted: Count
    devices_reached: Count
    latency_p50_s: float | None
    latency_p95_s: float | None


class TransparencyReport(msgspec.Struct, frozen=True):
    agency: str
    name: str
    timezone: str
    date_from: str = msgspec.field(name="from")
    date_to: str = msgspec.field(name="to")
    min_count: int = MIN_COUNT
    days: list[DayRow] = []


def withheld(n: float | None) -> Count:
    """A count as published: 0 and MIN_COUNT or more as they are, others withheld."""
    count = int(n or 0)
    return count if count == 0 or count >= MIN_COUNT else None


def total(n: float | None, parts: tuple[Count, ...]) -> Count:
    """A total as published: withheld like any count, and also whenever one of its
    ``parts`` is (complementary suppression: the part can't be had by subtracting the
    others from the total)."""
    return None if None in parts else withheld(n)


def _seconds(ms: float | None, pushes: float | None) -> float | None:
    if ms is None or int(pushes or 0) < MIN_COUNT:
        return None
    return round(ms / 1000, 3)


def publish(row: transparency.DayCounts) -> DayRow:
    c = row.counts
    suppressed = (withheld(c["suppressed_category"]), withheld(c["suppressed_stale"]),
                  withheld(c["suppressed_test"]), withheld(c["suppressed_unmapped"]),
                  withheld(c["suppressed_other"]))
    decided = (withheld(c["review_approved"]), withheld(c["review_rejected"]),
               withheld(c["review_expired"]))
    alerted = withheld(c["alerted"])
    return DayRow(
        date=row.day.isoformat(), category=row.category,
        received=total(c["received"], (*suppressed, alerted)),
        suppressed=Suppressed(*suppressed),
        review=Review(total(c["review_held"], decided), *decided),
        alerted=alerted, devices_reached=withheld(c["devices_reached"]),
        latency_p50_s=_seconds(c["latency_p50_ms"], c["devices_reached"]),
        latency_p95_s=_seconds(c["latency_p95_ms"], c["devices_reached"]),
    )


def _date(request: web.Request, name: str, default: dt.date) -> dt.date:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed([FieldError(name, "must be a date, YYYY-MM-DD")]) from None


def date_range(request: web.Request, today: dt.date) -> tuple[dt.date, dt.date]:
    last = _date(request, "to", today)
    first = _date(request, "from", last - dt.timedelta(days=DEFAULT_DAYS - 1))
    if first > last:
        raise ValidationFailed([FieldError("from", "must not be after to")])
    if (last - first).days >= MAX_DAYS:
        raise ValidationFailed([FieldError("from", f"the range is at most {MAX_DAYS} days")])
    return first, last


@routes.get("/v1/transparency/{agency}")
@doc("Public transparency report: counts per day and category (< 5 withheld, and "
     "totals with a withheld part)",
     "transparency", responses={200: TransparencyReport}, errors=(404, 422),
     query=(Query("from", "first day, YYYY-MM-DD (default: 29 days before to)",
                  {"type": "string", "format": "date"}),
            Query("to", "last day, YYYY-MM-DD (default: today, the agency's time zone)",
                  {"type": "string", "format": "date"})))
async def get_report(request: web.Request) -> web.Response:
    """Public: per day (the agency's local dates) and category, what its incidents
    became. ``?from=`` and ``?to=`` (YYYY-MM-DD, inclusive; default the last 30 days)."""
    agency = await get_agency(request.app[POOL], request.match_info["agency"])
    if agency is None:
        raise NotFound(f"No agency {request.match_info['agency']!r}")
    today = dt.datetime.now(dt.UTC).astimezone(ZoneInfo(agency.timezone)).date()
    first, last = date_range(request, today)
    rows = await transparency.report(request.app[POOL], agency.id, first, last)
    return json_response(TransparencyReport(
        agency=agency.id, name=agency.name, timezone=agency.timezone,
        date_from=first.isoformat(), date_to=last.isoformat(),
        days=[publish(r) for r in rows]))


@routes.get("/transparency/{agency}")
@doc("The transparency report as a page with charts", "transparency",
     responses={200: Body("text/html", {"type": "string"})}, store=False)
async def get_page(request: web.Request) -> web.Response:
    """The report as a page with charts (it reads the JSON above)."""
    page = resources.files("server.web").joinpath("static/transparency.html").read_text()
    return web.Response(text=page, content_type="text/html",
                        headers={"Content-Security-Policy":
                                 "default-src 'self'; style-src 'unsafe-inline'; "
                                 "script-src 'unsafe-inline'"})
