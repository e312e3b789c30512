"""What a dry run says about an incident: the decision and the rule behind it, the
public text in every language, and warnings for the vendor (pure).

The same analysis answers ``?dry_run=true`` on the webhook and ``geopush cad
validate``; neither stores, publishes or pushes anything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from server.domain.categories import RESPONDER_ONLY, UNMAPPED
from server.domain.incident import Incident, RawIncident, Status
from server.domain.policy import ALERT, REVIEW, AgencyPolicy, decide
from server.domain.pushtext import LOCALES, title_and_body

# A signature or timestamp this far from the server's clock still verifies (up to the
# tolerance) but says the sender's clock is drifting.
CLOCK_WARNING = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Remark:
    """Something a vendor should know; never a reason to refuse the message."""

    code: str
    message: str
    field: str | None = None


@dataclass(frozen=True)
class Text:
    title: str
    body: str


@dataclass(frozen=True)
class Analysis:
    decision: str
    reason: str
    audience: str                  # neighbours | responders | nobody
    texts: dict[str, Text]         # per locale
    warnings: list[Remark]


def explain(decision: str, incident: Incident, policy: AgencyPolicy, now: dt.datetime) -> str:
    """The rule that decided, in words a vendor can act on."""
    category, call_type = incident.category, incident.call_type
    age_min = int((now - incident.occurred_at).total_seconds() // 60)
    window = int(policy.staleness.total_seconds() // 60)
    reasons = {
        "suppressed:test": "not an actual incident (a test, exercise, draft or system "
                           "message): stored, never pushed",
        "suppressed:cleared": "the revision clears the incident: nothing is pushed",
        "suppressed:cancelled": "the revision cancels the incident: nothing is pushed",
        "suppressed:unmapped": f"call type {call_type!r} is not in the agency's call-type "
                               "map: stored as unmapped, never pushed",
        "suppressed:category": f"category {category!r} is not alerted by this agency",
        "suppressed:stale": f"it occurred {age_min} min ago, beyond the agency's "
                            f"{window} min staleness window",
        REVIEW: f"category {category!r} is held for an editor of the agency; nothing is "
                "sent until approved" if incident.category in policy.review_categories
                else "the agency holds every alert for an editor; nothing is sent until "
                     "approved",
        ALERT: f"category {category!r} is alerted and it occurred {age_min} min ago, within "
               f"the {window} min staleness window",
    }
    return reasons.get(decision, decision)


def audience_of(decision: str, incident: Incident) -> str:
    if decision not in (ALERT, REVIEW):
        return "nobody"
    return "responders" if incident.category in RESPONDER_ONLY else "neighbours"


def texts(incident: Incident, now: dt.datetime) -> dict[str, Text]:
    """The push's title and body in each language, as a phone would show them now."""
    out = {}
    for locale in LOCALES:
        title, body = title_and_body(incident.category, incident.public_location,
                                     incident.occurred_at, now, locale)
        out[locale] = Text(title, body)
    return out


def _clock_warnings(raw: RawIncident, now: dt.datetime, policy: AgencyPolicy,
                    signed_at: int | None) -> list[Remark]:
    out = []
    if signed_at is not None:
        skew = signed_at - now.timestamp()
        if abs(skew) > CLOCK_WARNING.total_seconds():
            out.append(Remark(
                "clock_skew", f"the signature's t is {abs(skew):.0f} s "
                f"{'ahead of' if skew > 0 else 'behind'} geopush's clock; past 300 s "
                "requests are refused: keep the CAD's clock on NTP", "Geopush-Signature"))
    for field, value in (("occurred_at", raw.occurred_at), ("updated_at", raw.revision)):
        ahead = value - now
        if ahead > CLOCK_WARNING:
            out.append(Remark(
                "timestamp_in_future", f"is {ahead.total_seconds():.0f} s ahead of "
                "geopush's clock; more than 300 s is refused", field))
    age = now - raw.occurred_at
    if age > policy.staleness:
        out.append(Remark(
            "timestamp_old", f"is {int(age.total_seconds() // 60)} min before geopush's "
            "clock: too old to alert anyone", "occurred_at"))
    if raw.revision < raw.occurred_at:
        out.append(Remark("revision_before_occurrence",
                           "the revision is dated before the incident occurred", "updated_at"))
    return out


def warnings(raw: RawIncident, incident: Incident, policy: AgencyPolicy, now: dt.datetime,
             *, signed_at: int | None = None, address_field: str = "location.address",
             ) -> list[Remark]:
    """What the vendor may want to fix, whatever the decision."""
    out = _clock_warnings(raw, now, policy, signed_at)
    if raw.address and incident.public_location is None:
        out.append(Remark(
            "address_withheld", "could not be generalized to a block or an intersection, "
            "so the public reads no location (\"nearby\"); send '<number> <street>' or "
            "'<street> / <street>'", address_field))
    elif not raw.address:
        out.append(Remark("no_address", "no address: the public reads no location "
                                         "(\"nearby\")", address_field))
    if incident.category == UNMAPPED:
        out.append(Remark(
            "call_type_unmapped", f"{incident.call_type!r} has no category in the agency's "
            "call-type map; ask the operator to map it", "call_type"))
    if incident.status is not Status.ACTIVE and raw.actual:
        out.append(Remark(
            "closing_revision", f"a {incident.status.value} revision closes the incident: "
            "it alerts nobody new", "status"))
    return out


def analyse(raw: RawIncident, incident: Incident, policy: AgencyPolicy, now: dt.datetime,
            *, signed_at: int | None = None, address_field: str = "location.address",
            ) -> Analysis:
    decision = decide(incident, policy, now)
    return Analysis(
        decision=decision,
        reason=explain(decision, incident, policy, now),
        audience=audience_of(decision, incident),
        texts=texts(incident, now),
        warnings=warnings(raw, incident, policy, now, signed_at=signed_at,
                          address_field=address_field),
    )
