"""The console's pure pieces: roles, account rules, severity, manual alert areas, CAP
output and the public map's bounding boxes."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from defusedxml import ElementTree as DefusedET
from hypothesis import given
from hypothesis import strategies as st

from server.domain.accounts import (
    AGENCY_ADMIN,
    EDITOR,
    Principal,
    validate_new_account,
    verify_password,
)
from server.domain.manual_alert import validate, validate_area
from server.domain.severity import SEVERITIES, urgency
from server.formats.cap_feed import CAP_NS, cap_document, cap_polygon, cap_time
from server.web.problems import ValidationFailed
from server.web.routes.public_map import MAX_SPAN_DEG, parse_bbox

LAT, LON = 47.66707, -122.301946


def _square(half: float = 0.005) -> dict[str, object]:
    return {"type": "Polygon", "coordinates": [[
        [LON - half, LAT - half], [LON + half, LAT - half], [LON + half, LAT + half],
        [LON - half, LAT + half], [LON - half, LAT - half]]]}


def test_who_may_do_what() -> None:
    operator = Principal("operator")
    editor = Principal("dana", "fire", EDITOR)
    admin = Principal("chief", "fire", AGENCY_ADMIN)
    assert operator.sees("fire") and operator.administers("police")
    assert editor.sees("fire") and not editor.sees("police")
    assert not editor.administers("fire")
    assert admin.administers("fire") and not admin.administers("police")


def test_account_rules_name_every_bad_field() -> None:
    assert validate_new_account("  Dana.Roe@FD ", "x" * 12, EDITOR) == "dana.roe@fd"
    with pytest.raises(ValidationFailed) as exc:
        validate_new_account("a", "short", "root")
    assert [e.field for e in exc.value.errors] == ["username", "password", "role"]
    with pytest.raises(ValidationFailed):
        validate_new_account("chief.of.staff", "Chief.Of.Staff", EDITOR)


def test_an_unknown_user_never_verifies() -> None:
    assert verify_password(None, "anything at all") is False
    assert verify_password("not a hash", "anything at all") is False


def test_severity_maps_to_how_a_phone_interrupts() -> None:
    assert {s: urgency(s) for s in SEVERITIES} == {
        "extreme": "time-sensitive", "severe": "time-sensitive", "moderate": "active"}


def test_manual_alert_areas_are_single_valid_polygons() -> None:
    assert '"Polygon"' in validate_area(_square())
    holed = _square()
    holed["coordinates"] = [*holed["coordinates"], holed["coordinates"][0]]  # type: ignore[index]
    cases = [({"type": "Point", "coordinates": [LON, LAT]}, "area.type"),
             (holed, "area.coordinates"),
             ({"type": "Polygon", "coordinates": [[[LON, LAT], [LON + 1, LAT + 1],
                                                   [LON + 1, LAT], [LON, LAT + 1],
                                                   [LON, LAT]]]}, "area.coordinates"),
             (_square(5.0), "area"),                                   # far too large
             ("not json", "area.type")]
    for area, field in cases:
        with pytest.raises(ValidationFailed) as exc:
            validate_area(area)
        assert exc.value.errors[0].field == field, area


def test_manual_alert_fields() -> None:
    alert = validate(title=" Evacuate ", body="Now.", severity="severe", area=_square(),
                     expires_in_minutes=30)
    assert (alert.title, alert.expires_in) == ("Evacuate", dt.timedelta(minutes=30))
    with pytest.raises(ValidationFailed) as exc:
        validate(title="", body="x" * 241, severity="catastrophic", area=_square(),
                 expires_in_minutes=0)
    assert [e.field for e in exc.value.errors] == [
        "title", "body", "severity", "expires_in_minutes"]


@given(st.lists(st.tuples(st.floats(-180, 180), st.floats(-90, 90)), min_size=3,
                max_size=20))
def test_cap_polygons_are_lat_lon_pairs_of_the_geojson_ring(points: list[tuple[float, float]]
                                                             ) -> None:
    ring = [list(p) for p in points] + [list(points[0])]
    pairs = [tuple(map(float, pair.split(","))) for pair in
             cap_polygon({"coordinates": [ring]}).split(" ")]
    assert pairs[0] == pairs[-1]
    for (lat, lon), (glon, glat) in zip(pairs, ring, strict=True):
        assert lat == pytest.approx(glat, abs=1e-6) and lon == pytest.approx(glon, abs=1e-6)


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-8))])))
def test_cap_times_have_an_offset_never_z(t: dt.datetime) -> None:
    text = cap_time(t)
    assert text.endswith("-00:00") and "Z" not in text and len(text) == 25
    assert dt.datetime.fromisoformat(text) == t.replace(microsecond=0)


def test_a_cap_document_escapes_what_an_admin_wrote() -> None:
    now = dt.datetime(2026, 11, 30, 22, 0, tzinfo=dt.UTC)
    doc = cap_document({"id": "x", "title": "<b>Fire</b> & smoke", "body": "]]> \"quote\"",
                        "severity": "moderate", "sent_at": now, "expires_at": now,
                        "agency_name": "A & B", "area": _square()},
                       agency_id="fire", sender="fire@example.org")
    root = DefusedET.fromstring(doc)
    assert root.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}headline") == "<b>Fire</b> & smoke"
    assert root.findtext(f"{{{CAP_NS}}}info/{{{CAP_NS}}}severity") == "Moderate"


boxes = st.tuples(st.floats(-179, 174), st.floats(-89, 84), st.floats(0.0001, MAX_SPAN_DEG),
                  st.floats(0.0001, MAX_SPAN_DEG))


@given(boxes)
def test_a_bbox_is_rounded_outwards_onto_the_cache_grid(box: tuple[float, ...]) -> None:
    min_lon, min_lat, w, h = box
    raw = (min_lon, min_lat, min(min_lon + w, 180), min(min_lat + h, 90))
    got = parse_bbox(",".join(repr(v) for v in raw))
    assert got[0] <= raw[0] and got[1] <= raw[1] and got[2] >= raw[2] and got[3] >= raw[3]
    for v in got:
        assert math.isclose(v * 100, round(v * 100), abs_tol=1e-6)
    assert got[2] - raw[2] <= 0.01 + 1e-9 and raw[0] - got[0] <= 0.01 + 1e-9


@pytest.mark.parametrize("raw", [None, "", "1,2,3", "a,b,c,d", "1,2,3,nan", "5,5,1,1",
                                 "-200,0,0,1", "0,0,10,1", "1,2,3,4,5"])
def test_bad_bboxes_name_the_field(raw: str | None) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_bbox(raw)
    assert exc.value.errors[0].field == "bbox"


def test_console_settings_from_the_environment() -> None:
    from server.settings import ConfigError, Settings

    base = {"GEOPUSH_DATABASE_URL": "postgresql://x", "GEOPUSH_REDIS_URL": "redis://x"}
    default = Settings.from_env(base)
    assert default.map_tiles_url is None and default.map_center == (47.6062, -122.3321, 11)
    assert default.session_lifetime == dt.timedelta(hours=12)
    assert not default.session_cookie_secure
    custom = Settings.from_env({**base, "GEOPUSH_MAP_TILES_URL": "https://t.example/{z}/{x}/{y}",
                                "GEOPUSH_MAP_CENTER": "37.77,-122.42,12",
                                "GEOPUSH_SESSION_COOKIE_SECURE": "1",
                                "GEOPUSH_SESSION_HOURS": "8"})
    assert custom.map_center == (37.77, -122.42, 12) and custom.session_cookie_secure
    assert custom.session_lifetime == dt.timedelta(hours=8)
    for name, value in (("GEOPUSH_MAP_TILES_URL", "ftp://t/{z}/{x}/{y}"),
                        ("GEOPUSH_MAP_TILES_URL", "https://t.example/tiles"),
                        ("GEOPUSH_MAP_CENTER", "47,-122"),
                        ("GEOPUSH_MAP_CENTER", "95,0,10")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})
