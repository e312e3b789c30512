"""The CAD vendors' sandbox: what an incident would do, with nothing done.

``POST /v1/agencies/{agency}/incidents?dry_run=true`` and ``geopush cad validate``
both answer a ``DryRunResult``. A dry run goes through the real call's own steps
(signature, parser, normalization, policy, the matcher's audience query), reads the
stored revision and Redis' dedup and rate counters, and writes nothing: no row, no
outbox entry, no stream entry, no review item, no dedup or push counter.

Dry runs have a rate limit of their own (``GEOPUSH_DRY_RUNS_PER_MINUTE`` per
agency). They cost the server as much as an incident, the matching query included,
so they must be limited; but a vendor's test suite running during a busy night must
never spend the budget the agency's real incidents need, so they don't share it.
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg
import msgspec

from server.domain import dryrun
from server.domain.categories import UNMAPPED
from server.domain.incident import Incident, RawIncident
from server.domain.policy import ALERT, AgencyPolicy
from server.formats import remarks
from server.keys import DEFAULT_PUSH_STREAM_SHARDS
from server.store import matching
from server.store.agencies import Agency
from server.store.audience import DEFAULT_LOCATION_TTL, Target, count_would_alert
from server.store.incidents import OUTDATED, republishes, stored_revision
from server.store.ratelimit import RateLimiter
from server.store.redisclient import RedisClient
from server.web.agency_cache import AgencyCache
from server.web.ingest import (
    Parser,
    authenticate,
    check_rate,
    name_the_neighbourhood,
    read_incident,
)

log = logging.getLogger(__name__)


class PublicPoint(msgspec.Struct, frozen=True):
    lat: float
    lon: float


class DryRunWarning(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str      # ignored_field, address_withheld, no_address, clock_skew, …
    message: str
    field: str | None = None


class DryRunResult(msgspec.Struct, frozen=True):
    """What the real call would do with this message, as of ``judged_at``."""

    judged_at: str              # geopush's clock when it judged (times below are relative to it)
    id: str                     # the incident id geopush reads (CAP: the first reference)
    status: str                 # active | cleared | cancelled
    updated_at: str             # the revision, RFC 3339 UTC
    occurred_at: str
    decision: str               # as the real call would answer it
    reason: str                 # the rule that decided, in words
    duplicate: bool             # this revision is stored already: the real call changes nothing
    call_type: str              # as sent
    category: str               # from the agency's call-type map, or "unmapped"
    audience: str               # neighbours | responders | nobody
    public_location: str | None
    public_point: PublicPoint
    title: dict[str, str]       # per locale, as a phone would show it now
    body: dict[str, str]
    would_alert: int | None     # devices it would alert right now (None: not counted offline)
    warnings: list[DryRunWarning]


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def analyse(fmt: str, body: bytes, raw: RawIncident, incident: Incident,
            policy: AgencyPolicy, now: dt.datetime, *, signed_at: int | None = None,
            ) -> DryRunResult:
    """The analysis both the dry run and the offline validator give (no I/O)."""
    analysis = dryrun.analyse(raw, incident, policy, now, signed_at=signed_at,
                              address_field=remarks.ADDRESS_FIELD[fmt])
    found = [*analysis.warnings, *remarks.remarks(fmt, body)]
    return DryRunResult(
        judged_at=_iso(now), id=incident.external_id, status=incident.status.value,
        updated_at=_iso(incident.revision), occurred_at=_iso(incident.occurred_at),
        decision=analysis.decision, reason=analysis.reason, duplicate=False,
        call_type=incident.call_type, category=incident.category,
        audience=analysis.audience, public_location=incident.public_location,
        public_point=PublicPoint(incident.public_point.lat, incident.public_point.lon),
        title={lang: t.title for lang, t in analysis.texts.items()},
        body={lang: t.body for lang, t in analysis.texts.items()},
        would_alert=None,
        warnings=[DryRunWarning(w.code, w.message, w.field) for w in found],
    )


def offline_agency(call_types: dict[str, str]) -> Agency:
    """An agency for the validator without a database: the given map, default policy."""
    return Agency(id="offline", name="offline", timezone="UTC", call_types=call_types,
                  review=False, verifying_secrets=[])


def validate(agency: Agency, fmt: str, parser: Parser, body: bytes, now: dt.datetime
             ) -> DryRunResult:
    """``geopush cad validate``: the analysis under the agency's map and policy, or the
    real call's ``Problem`` (raised)."""
    raw, incident = read_incident(agency, parser, body, now)
    return analyse(fmt, body, raw, incident, agency.policy(), now)


async def dry_run(
    pool: asyncpg.Pool, redis: RedisClient, agencies: AgencyCache,
    limiter: RateLimiter | None, *, agency_id: str, fmt: str, parser: Parser, body: bytes,
    signature: str | None, tolerance_s: int, dry_runs_per_minute: int,
    device_pushes_per_hour: int, now: dt.datetime, rejected_per_minute: int = 0,
    location_ttl: dt.timedelta = DEFAULT_LOCATION_TTL,
    shards: int = DEFAULT_PUSH_STREAM_SHARDS,
) -> DryRunResult:
    """The webhook's answer to ``?dry_run=true``: refused exactly as the real call
    would be, or what it would do."""
    agency = await authenticate(agencies, agency_id, body, signature,
                                tolerance_s=tolerance_s, now=now, limiter=limiter,
                                rejected_per_minute=rejected_per_minute)
    await check_rate(limiter, agency, per_minute=dry_runs_per_minute, dry_run=True)
    raw, incident = read_incident(agency, parser, body, now)
    incident = await name_the_neighbourhood(pool, incident)
    result = analyse(fmt, body, raw, incident, agency.policy(), now,
                     signed_at=_signed_at(signature))
    stored = await stored_revision(pool, agency.id, incident.external_id)
    changes: dict[str, object] = {}
    publish = result.decision == ALERT
    if stored is not None:
        if stored.revision == incident.revision:
            changes = {"decision": stored.decision, "duplicate": True,
                       "reason": "this revision (same id and updated_at) was accepted "
                                 "already: sending it again changes nothing"}
            publish = False
        elif stored.revision > incident.revision:
            changes = {"decision": OUTDATED,
                       "reason": "a newer revision of this incident is stored: this one "
                                 "would be ignored"}
            publish = False
        else:
            publish = republishes(stored.decision, stored.category, result.decision,
                                  incident.category)
            if result.decision == ALERT and not publish:
                changes = {"warnings": [*result.warnings, DryRunWarning(
                    "already_alerted", "an earlier revision alerted this incident in the "
                    "same category: this one alerts nobody new")]}
    would_alert = 0
    if publish:
        would_alert = await _would_alert(pool, redis, agency, incident, now,
                                         device_pushes_per_hour,
                                         stored.incident_id if stored else None,
                                         location_ttl, shards)
    answer = msgspec.structs.replace(result, would_alert=would_alert, **changes)
    log.info("dry run agency=%s external_id=%s category=%s decision=%s would_alert=%d",
             agency.id, incident.external_id, incident.category, answer.decision, would_alert)
    return answer


async def _would_alert(pool: asyncpg.Pool, redis: RedisClient, agency: Agency,
                       incident: Incident, now: dt.datetime, per_hour: int,
                       incident_id: str | None, location_ttl: dt.timedelta,
                       shards: int) -> int:
    if incident.category == UNMAPPED:
        return 0
    lat, lon = await matching.point_on_surface(pool, incident.geometry_wkt)
    target = Target(
        agency_id=agency.id, category=incident.category, geometry=incident.geometry_wkt,
        exact_lat=lat, exact_lon=lon,
        location_kind=incident.location_kind.value if incident.location_kind else None,
        responder_radius_m=agency.responder_radius_m,
        public_lat=incident.public_point.lat, public_lon=incident.public_point.lon)
    return await count_would_alert(pool, redis, target, occurred_at=incident.occurred_at,
                                   now=now, per_hour=per_hour, incident_id=incident_id,
                                   location_ttl=location_ttl, shards=shards)


def _signed_at(signature: str | None) -> int | None:
    """The header's t, for a clock warning (the header verified already)."""
    for part in (signature or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.strip().isdigit():
            return int(value)
    return None

