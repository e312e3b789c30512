"""The ingest path: verify -> parse -> normalize -> policy -> store -> publish."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import asyncpg

from server import keys
from server.domain import signing
from server.domain.incident import Incident, RawIncident
from server.domain.normalize import normalize
from server.domain.policy import decide
from server.formats import cap, eido, native
from server.store import neighbourhoods
from server.store.agencies import Agency
from server.store.incidents import store_incident
from server.store.publish import OutboxCleaner, publish_incident
from server.store.ratelimit import RateLimiter
from server.store.redisclient import RedisClient
from server.web.agency_cache import AgencyCache
from server.web.problems import Problem, Unauthorized

log = logging.getLogger(__name__)

Parser = Callable[[bytes], RawIncident]

PARSERS: dict[str, Parser] = {
    content_type: module.parse
    for module in (native, cap, eido)
    for content_type in module.CONTENT_TYPES
}

def parser_for(content_type: str) -> Parser:
    parser = PARSERS.get(content_type.lower())
    if parser is None:
        raise Problem(
            415, "Unsupported media type",
            f"Content-Type {content_type or '(none)'!r} is not accepted; "
            f"use one of: {', '.join(sorted(PARSERS))}",
            slug="unsupported-media-type",
        )
    return parser


@dataclass(frozen=True)
class Accepted:
    incident_id: str
    decision: str
    duplicate: bool


def _too_many(detail: str, retry_after_s: int) -> Problem:
    return Problem(429, "Too many requests", detail, slug="rate-limited",
                   headers={"Retry-After": str(retry_after_s)})


_AGENCY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _rate_key(agency_id: str) -> str:
    # Ids no agency can have share one budget: a path is not a Redis key to make up.
    return agency_id if _AGENCY_ID.match(agency_id) else "(invalid)"


async def authenticate(
    agencies: AgencyCache, agency_id: str, body: bytes, signature: str | None, *,
    tolerance_s: int, now: dt.datetime, limiter: RateLimiter | None = None,
    rejected_per_minute: int = 0,
) -> Agency:
    """The agency whose secret signed ``body``, or 401.

    ``rejected_per_minute`` (0: no limit) bounds the requests naming ``agency_id`` that
    fail verification, in a budget apart from the agency's own: past it they are a 429
    instead of a 401, the same for a known agency as for an unknown one."""
    agency, cached = await agencies.get(agency_id)

    def verified(a: Agency | None) -> bool:
        secrets = a.verifying_secrets if a else []
        return signing.verify(signature, body, secrets, now=now.timestamp(),
                              tolerance_s=tolerance_s)

    ok = verified(agency)
    if not ok and cached:
        agency, _ = await agencies.get(agency_id, fresh=True)  # a secret just rotated?
        ok = verified(agency)
    # An unknown agency and a bad signature answer alike, so ids can't be enumerated.
    if not ok or agency is None:
        if limiter is not None and rejected_per_minute > 0:
            verdict = await limiter.allow(keys.agency_rejected_rate(_rate_key(agency_id)),
                                          rejected_per_minute, 60)
            if not verdict.allowed:
                raise _too_many(f"Too many rejected webhooks for {agency_id!r}",
                                verdict.retry_after_s)
        raise Unauthorized("Missing, stale or invalid Geopush-Signature")
    return agency


async def check_rate(limiter: RateLimiter | None, agency: Agency, *, per_minute: int,
                     dry_run: bool = False) -> None:
    """429 when the agency is over its budget (of webhooks, or of dry runs)."""
    if limiter is None:
        return
    verdict = await limiter.check(agency.id, per_minute, dry_run=dry_run)
    if not verdict.allowed:
        what = "dry runs" if dry_run else "webhooks"
        raise _too_many(f"Agency {agency.id!r} is limited to {per_minute} {what} a minute",
                        verdict.retry_after_s)


def read_incident(agency: Agency, parser: Parser, body: bytes, now: dt.datetime
                  ) -> tuple[RawIncident, Incident]:
    """Parse and normalize under the agency's call-type map, or 422 naming the field."""
    raw = parser(body)
    return raw, normalize(raw, agency_id=agency.id, call_type_map=agency.call_types, now=now)


async def name_the_neighbourhood(pool: asyncpg.Pool, incident: Incident) -> Incident:
    """An incident whose address gave no block or intersection is placed by the name of
    the imported neighbourhood its public point lies in (none: withheld). The public
    point, not the exact one: the name tells no more than the point the push carries."""
    if incident.public_location is not None:
        return incident
    point = incident.public_point
    name = await neighbourhoods.neighbourhood_name_at(pool, point.lat, point.lon)
    return replace(incident, public_location=name) if name else incident


async def ingest(
    pool: asyncpg.Pool,
    redis: RedisClient,
    agencies: AgencyCache,
    outbox: OutboxCleaner,
    *,
    agency_id: str,
    parser: Parser,
    body: bytes,
    signature: str | None,
    tolerance_s: int,
    now: dt.datetime,
    limiter: RateLimiter | None = None,
    rejected_per_minute: int = 0,
) -> Accepted:
    agency = await authenticate(agencies, agency_id, body, signature,
                                tolerance_s=tolerance_s, now=now, limiter=limiter,
                                rejected_per_minute=rejected_per_minute)
    await check_rate(limiter, agency, per_minute=agency.rate_limit_per_minute)
    _, incident = read_incident(agency, parser, body, now)
    incident = await name_the_neighbourhood(pool, incident)
    policy = agency.policy()
    decision = decide(incident, policy, now)
    stored = await store_incident(pool, incident, decision, now,
                                  review_until=incident.occurred_at + policy.staleness)
    log.info(
        "incident agency=%s external_id=%s id=%s category=%s decision=%s duplicate=%s",
        agency.id, incident.external_id, stored.incident_id, incident.category,
        stored.decision, stored.duplicate,
    )
    if stored.publish:
        await publish_incident(redis, outbox, stored.incident_id)
    return Accepted(stored.incident_id, stored.decision, stored.duplicate)
