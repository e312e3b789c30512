"""CAP 1.2 parser (server.formats.cap) and the safe XML helper it stands on."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path

import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from server.domain.errors import ValidationFailed
from server.domain.incident import Status
from server.formats import cap
from server.formats.safexml import parse_xml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cap"
PST = dt.timezone(dt.timedelta(hours=-8))


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def edited(name: str, old: str, new: str) -> bytes:
    text = fixture(name).decode()
    assert old in text, f"{old!r} not in {name}"
    return text.replace(old, new).encode()


def rejected(body: bytes) -> tuple[str, str]:
    with pytest.raises(ValidationFailed) as info:
        cap.parse(body)
    assert info.value.errors   # the web edge makes it a 422 naming the field
    err = info.value.errors[0]
    return err.field, err.message


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * cap.EARTH_RADIUS_KM * math.asin(math.sqrt(a))


# --- fixtures end to end --------------------------------------------------------------


def test_fire_alert_with_circle() -> None:
    raw = cap.parse(fixture("fire_circle.xml"))
    assert raw.external_id == "SFD-F220009060-1"
    assert raw.revision == dt.datetime(2026, 11, 28, 4, 21, tzinfo=PST)
    assert raw.status is Status.ACTIVE
    assert raw.actual is True
    assert raw.call_type == "Fire in Building"  # event wins over eventCode
    assert raw.occurred_at == dt.datetime(2026, 11, 28, 4, 18, tzinfo=PST)  # onset
    assert (raw.point.lat, raw.point.lon) == (47.66707, -122.301946)
    assert raw.address == "5300 block of 24th Ave NE"
    assert raw.priority == 2  # Severe
    assert raw.location_kind is None
    assert raw.narrative is not None
    assert raw.narrative.startswith("Engine 38 reports smoke")
    assert "Avoid the area" in raw.narrative  # instruction joins description
    assert "206-555" not in raw.narrative  # <contact> is never read


def test_circle_becomes_a_32_vertex_polygon_on_the_sphere() -> None:
    raw = cap.parse(fixture("fire_circle.xml"))
    assert raw.geometry_wkt is not None
    geom = shapely.from_wkt(raw.geometry_wkt)
    assert isinstance(geom, Polygon)
    assert geom.is_valid
    coords = list(geom.exterior.coords)
    assert len(coords) == cap.CIRCLE_VERTICES + 1
    for lon, lat in coords:
        assert lon == pytest.approx(-122.30, abs=0.01)  # lon first in WKT
        assert haversine_km(47.66707, -122.301946, lat, lon) == pytest.approx(0.5, rel=1e-3)
    assert geom.contains(shapely.Point(-122.301946, 47.66707))


def test_zero_radius_circle_is_just_a_point() -> None:
    raw = cap.parse(fixture("point_circle_zero.xml"))
    assert raw.geometry_wkt is None
    assert (raw.point.lat, raw.point.lon) == (47.61085, -122.33857)
    assert raw.priority is None  # Unknown
    assert raw.occurred_at == raw.revision  # no onset/effective: sent
    assert raw.narrative is None
    assert raw.address == "3rd Ave / Pine St"


def test_polygon_is_written_lon_lat_and_english_info_is_chosen() -> None:
    raw = cap.parse(fixture("polygon_area.xml"))
    assert raw.call_type == "Gas Leak"  # en-US info, not the first (es-US) one
    assert raw.priority == 1  # Extreme
    assert raw.occurred_at == dt.datetime(2026, 11, 28, 9, 35, tzinfo=PST)  # effective
    assert raw.address == "Ravenna"
    assert raw.geometry_wkt is not None
    assert raw.geometry_wkt.startswith("POLYGON ((-122.308 47.672")
    geom = shapely.from_wkt(raw.geometry_wkt)
    first_lon, first_lat = geom.exterior.coords[0]
    assert first_lon == pytest.approx(-122.308)
    assert first_lat == pytest.approx(47.672)
    assert raw.point.lat == pytest.approx(47.668)
    assert raw.point.lon == pytest.approx(-122.3015)


def test_first_info_is_used_when_none_is_english() -> None:
    body = edited("polygon_area.xml", "<language>en-US</language>", "<language>fr-CA</language>")
    assert cap.parse(body).call_type == "Fuga de gas"


def test_info_without_language_counts_as_english() -> None:
    body = edited("polygon_area.xml", "<language>en-US</language>", "")
    assert cap.parse(body).call_type == "Gas Leak"


def test_several_areas_make_a_valid_multipolygon() -> None:
    raw = cap.parse(fixture("multi_area_cap11.xml"))  # also: the CAP 1.1 namespace
    assert raw.geometry_wkt is not None
    assert raw.geometry_wkt.startswith("MULTIPOLYGON")
    geom = shapely.from_wkt(raw.geometry_wkt)
    assert isinstance(geom, MultiPolygon)
    assert geom.is_valid
    assert len(geom.geoms) == 2
    assert all(-123 < x < -122 and 47 < y < 48 for p in geom.geoms for x, y in p.exterior.coords)
    assert raw.address == "Rainier Beach"  # first areaDesc
    assert raw.revision == dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def test_overlapping_areas_are_merged_into_a_valid_multipolygon() -> None:
    body = edited(
        "fire_circle.xml",
        "<circle>47.66707,-122.301946 0.5</circle>",
        "<circle>47.66707,-122.301946 0.5</circle><circle>47.66807,-122.301946 0.5</circle>",
    )
    raw = cap.parse(body)
    assert raw.geometry_wkt is not None
    geom = shapely.from_wkt(raw.geometry_wkt)
    assert isinstance(geom, MultiPolygon) and geom.is_valid and len(geom.geoms) == 1
    assert (raw.point.lat, raw.point.lon) == (47.66707, -122.301946)  # first circle's centre


# --- identity across Alert / Update / Cancel ---------------------------------------------


def test_update_and_cancel_share_the_original_identifier() -> None:
    alert = cap.parse(fixture("fire_circle.xml"))
    update = cap.parse(fixture("update.xml"))
    cancel = cap.parse(fixture("cancel.xml"))
    assert alert.external_id == update.external_id == cancel.external_id == "SFD-F220009060-1"
    assert alert.revision < update.revision < cancel.revision
    assert update.status is Status.ACTIVE
    assert update.priority == 3  # Moderate
    assert cancel.status is Status.CANCELLED
    assert cancel.priority == 4  # Minor


def test_an_all_clear_update_clears_the_incident() -> None:
    cleared = cap.parse(fixture("all_clear.xml"))
    assert cleared.external_id == "SFD-F220009060-1"
    assert cleared.status is Status.CLEARED
    # urgency Past alone says the same; an ordinary Update stays active.
    past = fixture("update.xml").replace(b"<urgency>Expected</urgency>", b"<urgency>Past</urgency>")
    assert cap.parse(past).status is Status.CLEARED


def test_update_without_references_keeps_its_identifier() -> None:
    body = edited(
        "update.xml",
        "<references>cad@seattle.gov,SFD-F220009060-1,2026-11-28T04:21:00-08:00</references>",
        "",
    )
    assert cap.parse(body).external_id == "SFD-F220009060-2"


def test_alert_references_do_not_change_identity() -> None:
    body = edited(
        "fire_circle.xml", "<scope>Public</scope>",
        "<scope>Public</scope><references>x,OTHER-1,2026-11-28T04:00:00-08:00</references>",
    )
    assert cap.parse(body).external_id == "SFD-F220009060-1"


@pytest.mark.parametrize("refs", ["cad@seattle.gov,SFD-1", "a,,2026-11-28T04:21:00-08:00"])
def test_malformed_references_are_refused(refs: str) -> None:
    body = edited(
        "update.xml",
        "cad@seattle.gov,SFD-F220009060-1,2026-11-28T04:21:00-08:00",
        refs,
    )
    assert rejected(body)[0] == "references"


# --- status and msgType -------------------------------------------------------------------


def test_test_message_is_stored_not_pushed_and_uses_event_code() -> None:
    raw = cap.parse(fixture("test_status.xml"))
    assert raw.actual is False
    assert raw.call_type == "TEST"  # no <event>: eventCode value
    assert raw.narrative is None  # <note> is never read


@pytest.mark.parametrize("status", ["Exercise", "System", "Draft", "Test"])
def test_non_actual_statuses(status: str) -> None:
    body = edited("fire_circle.xml", "<status>Actual</status>", f"<status>{status}</status>")
    assert cap.parse(body).actual is False


@pytest.mark.parametrize("status", ["actual", "Real", ""])
def test_unknown_status_is_refused(status: str) -> None:
    body = edited("fire_circle.xml", "<status>Actual</status>", f"<status>{status}</status>")
    assert rejected(body)[0] == "status"


@pytest.mark.parametrize("msg_type", ["Ack", "Error", "Alarm", ""])
def test_ack_and_error_are_not_incidents(msg_type: str) -> None:
    body = edited("fire_circle.xml", "<msgType>Alert</msgType>", f"<msgType>{msg_type}</msgType>")
    assert rejected(body)[0] == "msgType"


# --- required elements, times, severity ----------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("<identifier>SFD-F220009060-1</identifier>", "", "identifier"),
        ("<identifier>SFD-F220009060-1</identifier>", "<identifier>A B</identifier>",
         "identifier"),
        ("<identifier>SFD-F220009060-1</identifier>", "<identifier>A,B</identifier>",
         "identifier"),
        ("<identifier>SFD-F220009060-1</identifier>",
         f"<identifier>{'x' * 129}</identifier>", "identifier"),
        ("<sent>2026-11-28T04:21:00-08:00</sent>", "", "sent"),
        ("<sent>2026-11-28T04:21:00-08:00</sent>", "<sent>2026-11-28T04:21:00</sent>", "sent"),
        ("<sent>2026-11-28T04:21:00-08:00</sent>", "<sent>yesterday</sent>", "sent"),
        ("<onset>2026-11-28T04:18:00-08:00</onset>", "<onset>2026-11-28T04:18:00</onset>",
         "info.onset"),
        ("<event>Fire in Building</event>", f"<event>{'x' * 201}</event>", "info.event"),
        ("<severity>Severe</severity>", "<severity>Bad</severity>", "info.severity"),
        ("<areaDesc>5300 block of 24th Ave NE</areaDesc>",
         f"<areaDesc>{'x' * 501}</areaDesc>", "info.area.areaDesc"),
    ],
)
def test_bad_elements_are_named(old: str, new: str, field: str) -> None:
    assert rejected(edited("fire_circle.xml", old, new))[0] == field


def test_event_is_required_without_an_event_code() -> None:
    body = edited("test_status.xml", "<value>TEST</value>", "<value> </value>")
    assert rejected(body)[0] == "info.event"


def test_effective_is_used_when_there_is_no_onset() -> None:
    body = edited("fire_circle.xml", "<onset>2026-11-28T04:18:00-08:00</onset>", "")
    assert cap.parse(body).occurred_at == dt.datetime(2026, 11, 28, 4, 19, 30, tzinfo=PST)


def test_zulu_times_are_accepted() -> None:
    body = edited("fire_circle.xml", "<sent>2026-11-28T04:21:00-08:00</sent>",
                  "<sent>2026-11-28T12:21:00Z</sent>")
    assert cap.parse(body).revision == dt.datetime(2026, 11, 28, 12, 21, tzinfo=dt.UTC)


def test_missing_severity_is_no_priority() -> None:
    body = edited("fire_circle.xml", "<severity>Severe</severity>", "")
    assert cap.parse(body).priority is None


def test_info_is_required() -> None:
    text = fixture("fire_circle.xml").decode()
    body = (text[: text.index("<info>")] + "</alert>").encode()
    assert rejected(body)[0] == "info"


def test_area_is_required() -> None:
    text = fixture("fire_circle.xml").decode()
    body = (text[: text.index("<area>")] + text[text.index("</area>") + 7:]).encode()
    assert rejected(body)[0] == "info.area"


def test_geocode_only_area_is_refused() -> None:
    body = edited(
        "fire_circle.xml", "<circle>47.66707,-122.301946 0.5</circle>",
        "<geocode><valueName>FIPS6</valueName><value>053033</value></geocode>",
    )
    assert rejected(body) == ("info.area", "needs a circle or a polygon "
                                           "(geocodes are not supported)")


# --- geometry errors ---------------------------------------------------------------------


def _polygon_body(ring: str) -> bytes:
    return edited(
        "polygon_area.xml",
        "<polygon>47.6720,-122.3080 47.6720,-122.2950 47.6640,-122.2950 47.6640,-122.3080 "
        "47.6720,-122.3080</polygon>\n    </area>\n  </info>\n</alert>",
        f"<polygon>{ring}</polygon>\n    </area>\n  </info>\n</alert>",
    )


@pytest.mark.parametrize(
    ("ring", "message"),
    [
        # bow-tie: self-intersecting
        ("47.0,-122.0 47.1,-121.9 47.1,-122.0 47.0,-121.9 47.0,-122.0", "invalid polygon"),
        # crosses the antimeridian (Fiji)
        ("-16.0,179.5 -16.0,-179.5 -17.0,-179.5 -17.0,179.5 -16.0,179.5", "antimeridian"),
        ("47.0,-122.0 47.1,-122.0 47.1,-121.9 47.0,-121.9", "not closed"),
        ("47.0,-122.0 47.1,-122.0 47.0,-122.0", "at least 4"),
        ("47.0,-122.0 47.1,-122.0 47.2,-122.0 47.0,-122.0", "invalid polygon"),
        ("97.0,-122.0 47.1,-122.0 47.1,-121.9 97.0,-122.0", "latitude"),
        ("47.0,-222.0 47.1,-122.0 47.1,-121.9 47.0,-222.0", "longitude"),
        ("47.0;-122.0 47.1,-122.0 47.1,-121.9 47.0;-122.0", "numbers"),
        ("47.0,-122.0,3 47.1,-122.0 47.1,-121.9 47.0,-122.0,3", "pairs"),
        ("nan,-122.0 47.1,-122.0 47.1,-121.9 nan,-122.0", "finite"),
        (" ".join(["47.0,-122.0"] * 1001), "at most"),
    ],
)
def test_bad_polygons_are_refused_naming_the_field(ring: str, message: str) -> None:
    field, msg = rejected(_polygon_body(ring))
    assert field == "info.area.polygon"
    assert message in msg


@pytest.mark.parametrize(
    ("circle", "message"),
    [
        ("47.6,-122.3", "lat,lon radius_km"),
        ("47.6 -122.3 1", "lat,lon radius_km"),
        ("47.6,-122.3,1 1", "lat,lon radius_km"),
        ("47.6,-122.3 -1", "radius"),
        ("47.6,-122.3 2000", "radius"),
        ("47.6,-122.3 inf", "radius"),
        ("47.6,-122.3 one", "radius"),
        ("91,-122.3 1", "latitude"),
        ("0,179.99 5", "antimeridian"),
        ("89.99,0 5", "antimeridian"),
    ],
)
def test_bad_circles_are_refused_naming_the_field(circle: str, message: str) -> None:
    body = edited("fire_circle.xml", "<circle>47.66707,-122.301946 0.5</circle>",
                  f"<circle>{circle}</circle>")
    field, msg = rejected(body)
    assert field == "info.area.circle"
    assert message in msg


def test_too_many_shapes_are_refused() -> None:
    body = edited("fire_circle.xml", "<circle>47.66707,-122.301946 0.5</circle>",
                  "<circle>47.66707,-122.301946 0</circle>" * (cap.MAX_SHAPES + 1))
    assert rejected(body)[0] == "info.area"


# --- document level ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"<alert/>",
        b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.0"/>',
        b'<notice xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>',
        b"{}",
        b"<alert",
    ],
)
def test_not_a_cap_document(body: bytes) -> None:
    assert rejected(body)[0] == "body"


@pytest.mark.parametrize(
    "name",
    ["billion_laughs.xml", "external_entity.xml", "external_dtd.xml", "parameter_entity.xml"],
)
def test_malicious_xml_is_refused_without_expansion(name: str) -> None:
    started = time.monotonic()
    field, message = rejected(fixture(name))
    assert time.monotonic() - started < 1.0
    assert field == "body"
    assert "DTD" in message
    assert "lol" not in message and "passwd" not in message


def test_undeclared_entities_are_refused() -> None:
    body = edited("fire_circle.xml", "<event>Fire in Building</event>", "<event>&xxe;</event>")
    field, message = rejected(body)
    assert field == "body" and "undefined entity" in message


def test_character_references_are_fine() -> None:
    body = edited("fire_circle.xml", "<event>Fire in Building</event>",
                  "<event>Fire &amp; Smoke &#x2013; Building</event>")
    assert cap.parse(body).call_type == "Fire & Smoke – Building"


# --- the safe XML helper -----------------------------------------------------------------


def test_safexml_bounds_depth() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_xml(b"<a>" * 40 + b"</a>" * 40, field="x")
    assert info.value.errors[0].field == "x"
    assert "deeper" in info.value.errors[0].message


def test_safexml_bounds_element_count() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_xml(b"<a>" + b"<b/>" * 50 + b"</a>", max_elements=20)
    assert "more than 20 elements" in info.value.errors[0].message


def test_safexml_bounds_size() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_xml("<a>" + "x" * 100 + "</a>", field="loc", max_bytes=64)
    assert info.value.errors[0] .field == "loc"
    assert "larger than 64 bytes" in info.value.errors[0].message


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0" encoding="klingon"?><a/>',
        b"<a>\xff</a>",
        b"<a></b>",
        b"<a/><b/>",
        b"\x00",
    ],
)
def test_safexml_reports_malformed_xml(body: bytes) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_xml(body)
    assert info.value.errors[0].message.startswith("malformed XML")


def test_safexml_accepts_utf16_with_bom() -> None:
    root = parse_xml('<?xml version="1.0" encoding="UTF-16"?><a>é</a>'.encode("utf-16"))
    assert root.text == "é"


def test_sub_metre_circle_is_a_point() -> None:
    body = edited("fire_circle.xml", "<circle>47.66707,-122.301946 0.5</circle>",
                  "<circle>47.66707,-122.301946 0.0001</circle>")
    raw = cap.parse(body)
    assert raw.geometry_wkt is None
    assert (raw.point.lat, raw.point.lon) == (47.66707, -122.301946)
