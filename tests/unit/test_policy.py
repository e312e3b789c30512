from __future__ import annotations

import datetime as dt

from server.domain.categories import categorize, normalize_call_type
from server.domain.incident import Incident, Point, Status
from server.domain.policy import AgencyPolicy, decide

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def make(category: str = "structure_fire", *, minutes_ago: float = 3,
         status: Status = Status.ACTIVE) -> Incident:
    occurred = NOW - dt.timedelta(minutes=minutes_ago)
    return Incident(
        agency_id="a", external_id="1", revision=occurred, status=status, call_type="x",
        category=category, occurred_at=occurred, geometry_wkt="POINT(0 0)",
        public_point=Point(0, 0), public_location=None, location_kind=None,
    )


def test_default_alertable_category_alerts() -> None:
    assert decide(make(), AgencyPolicy(), NOW) == "alert"


def test_non_alertable_and_unmapped_are_suppressed() -> None:
    assert decide(make("medical"), AgencyPolicy(), NOW) == "suppressed:category"
    assert decide(make("unmapped"), AgencyPolicy(), NOW) == "suppressed:unmapped"


def test_staleness_is_sixty_minutes_from_occurrence_to_arrival() -> None:
    assert decide(make(minutes_ago=60), AgencyPolicy(), NOW) == "alert"
    assert decide(make(minutes_ago=60.1), AgencyPolicy(), NOW) == "suppressed:stale"


def test_only_active_incidents_alert() -> None:
    assert decide(make(status=Status.CLEARED), AgencyPolicy(), NOW) == "suppressed:cleared"
    assert decide(make(status=Status.CANCELLED), AgencyPolicy(), NOW) == "suppressed:cancelled"


def test_review_agencies_hold_alerts() -> None:
    assert decide(make(), AgencyPolicy(review=True), NOW) == "review"
    assert decide(make("medical"), AgencyPolicy(review=True), NOW) == "suppressed:category"


def test_call_types_match_regardless_of_case_and_spacing() -> None:
    mapping = {normalize_call_type("Fire in Building"): "structure_fire",
               normalize_call_type("459"): "burglary"}
    assert categorize("  FIRE in   building", mapping) == "structure_fire"
    assert categorize("fire-in-building", mapping) == "structure_fire"
    assert categorize("459", mapping) == "burglary"
    assert categorize("Aid Response", mapping) == "unmapped"
