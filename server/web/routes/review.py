"""The review queue: ``GET /v1/admin/review`` (and one item by id), approve, reject,
and ``GET /v1/admin/review/events``, a server-sent event stream of queue changes.

The operator's token sees every agency (``?agency=`` narrows it), as before named
accounts; an editor or agency admin sees and decides only their agency's items, and
another agency's item is a 404, as if it did not exist. Only the agency's own users
get the exact point.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from server.domain.accounts import Principal
from server.domain.text import NO_NUL, SINGLE_LINE
from server.store import accounts, review
from server.store.publish import publish_incident
from server.web.appkeys import OUTBOX, POOL, REDIS, REVIEW_FEED
from server.web.openapi import Body, Query, doc
from server.web.principal import SESSION_COOKIE, principal
from server.web.problems import NotFound, Problem
from server.web.routes.body import decode_json, json_response

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

# A comment line this often keeps proxies from closing an idle stream and lets the
# handler notice a session that ended.
KEEPALIVE_S = 15.0


class ReviewDecision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=120,
                                       pattern=SINGLE_LINE)] | None = None
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=240,
                                      pattern=NO_NUL)] | None = None


def _scope(who: Principal, request: web.Request) -> str | None:
    return request.query.get("agency") if who.is_operator else who.agency_id


class ExactPoint(msgspec.Struct, frozen=True):
    lat: float
    lon: float


class ReviewLocation(msgspec.Struct, frozen=True, omit_defaults=True):
    public: str | None
    lat: float
    lon: float
    kind: str | None
    # The exact point: for the agency's own editors only (absent for the operator).
    exact: ExactPoint | None = None


class ProposedText(msgspec.Struct, frozen=True):
    title: str
    body: str


class ReviewItem(msgspec.Struct, frozen=True):
    """An alert held for review: its public (and for the agency's own editors, exact)
    place, the redacted narrative, the proposed text."""

    incident_id: str
    agency_id: str
    external_id: str
    call_type: str
    category: str
    status: str
    priority: int | None
    occurred_at: str
    location: ReviewLocation
    narrative: str | None
    proposed: ProposedText
    queued_at: str
    expires_at: str


class ReviewQueue(msgspec.Struct, frozen=True):
    items: list[ReviewItem]


class ReviewDecided(msgspec.Struct, frozen=True):
    incident_id: str
    decision: Literal["alert", "suppressed:rejected"]


@routes.get("/v1/admin/review")
@doc("Alerts waiting for an editor (the caller's agency)", "review", auth="editor",
     responses={200: ReviewQueue},
     errors=(401, 403), query=(Query("agency", "the operator only: this agency's items"),))
async def get_review(request: web.Request) -> web.Response:
    who = await principal(request)
    items = await review.pending(request.app[POOL], agency_id=_scope(who, request),
                                 now=dt.datetime.now(dt.UTC), exact=not who.is_operator)
    return json_response(ReviewQueue(msgspec.convert(items, list[ReviewItem])))


@routes.get("/v1/admin/review/events")
@doc("Server-sent events: the queue changed (event: change, data: the incident id)",
     "review", auth="editor", responses={200: Body("text/event-stream", {"type": "string"})},
     errors=(401, 403), query=(Query("agency", "the operator only: this agency's items"),))
async def get_review_events(request: web.Request) -> web.StreamResponse:
    """``event: change`` with the incident id as data whenever one of the caller's
    items is queued, decided, superseded or expires (``*``: re-read the queue)."""
    who = await principal(request)
    feed = request.app[REVIEW_FEED]
    sub = feed.subscribe(_scope(who, request))
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\nevent: ready\ndata: \n\n")
        while True:
            try:
                incident_id = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                if not who.is_operator and not await _still_signed_in(request):
                    break
                await response.write(b": keepalive\n\n")
                continue
            if incident_id is None:
                break
            await response.write(f"event: change\ndata: {incident_id}\n\n".encode())
    except ConnectionResetError:
        pass   # the console went away
    finally:
        feed.unsubscribe(sub)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def _incident_id(request: web.Request) -> str:
    raw = request.match_info["incident"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound(f"No review item for incident {raw!r}") from None


@routes.get("/v1/admin/review/{incident}")
@doc("One item waiting for an editor", "review", auth="editor",
     responses={200: ReviewItem}, errors=(401, 403, 404))
async def get_review_item(request: web.Request) -> web.Response:
    who = await principal(request)
    incident_id = _incident_id(request)
    items = await review.pending(request.app[POOL], agency_id=_scope(who, request),
                                 now=dt.datetime.now(dt.UTC), incident_id=incident_id,
                                 exact=not who.is_operator)
    if not items:
        raise NotFound(f"No review item for incident {incident_id!r}")
    return json_response(msgspec.convert(items[0], ReviewItem))


def _closed(exc: review.ReviewClosed) -> Problem:
    return Problem(409, "Review item closed", f"This item is {exc}; nothing was changed",
                   slug="conflict")


@routes.post("/v1/admin/review/{incident}/approve")
@doc("Approve (optionally reworded; the body is optional)", "review", auth="editor",
     request=ReviewDecision, responses={200: ReviewDecided}, errors=(401, 403, 404, 409, 413, 422))
async def post_approve(request: web.Request) -> web.Response:
    who = await principal(request)
    decision = await decode_json(request, ReviewDecision) if request.can_read_body \
        else ReviewDecision()
    incident_id = _incident_id(request)
    try:
        approved = await review.approve(
            request.app[POOL], incident_id, editor=who.name, now=dt.datetime.now(dt.UTC),
            title=decision.title, body=decision.body, agency_id=who.agency_id,
        )
    except LookupError:
        raise NotFound(f"No review item for incident {incident_id!r}") from None
    except review.ReviewClosed as exc:
        raise _closed(exc) from None
    if approved.publish:
        await publish_incident(request.app[REDIS], request.app[OUTBOX], incident_id)
    log.info("review approved incident=%s by=%s edited=%s", incident_id, who.name,
             decision.title is not None or decision.body is not None)
    return json_response(ReviewDecided(incident_id, "alert"))


@routes.post("/v1/admin/review/{incident}/reject")
@doc("Reject: nothing is sent", "review", auth="editor", responses={200: ReviewDecided},
     errors=(401, 403, 404, 409))
async def post_reject(request: web.Request) -> web.Response:
    who = await principal(request)
    incident_id = _incident_id(request)
    try:
        await review.reject(request.app[POOL], incident_id, editor=who.name,
                            now=dt.datetime.now(dt.UTC), agency_id=who.agency_id)
    except LookupError:
        raise NotFound(f"No review item for incident {incident_id!r}") from None
    except review.ReviewClosed as exc:
        raise _closed(exc) from None
    log.info("review rejected incident=%s by=%s", incident_id, who.name)
    return json_response(ReviewDecided(incident_id, "suppressed:rejected"))


async def _still_signed_in(request: web.Request) -> bool:
    token = request.cookies.get(SESSION_COOKIE, "")
    return await accounts.session(request.app[POOL], token, dt.datetime.now(dt.UTC)) \
        is not None
