"""Every parser, given anything, returns a RawIncident or raises ValidationFailed.

Nothing else may escape: any other exception would be a 500 on the ingest endpoint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain.errors import ValidationFailed
from server.domain.incident import RawIncident
from server.formats import cap, eido, native

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CAP_FIXTURES = sorted((FIXTURES / "cap").glob("*.xml"))
EIDO_FIXTURES = sorted((FIXTURES / "eido").glob("*.json"))
NATIVE_SAMPLE = json.dumps({
    "id": "F220009060",
    "updated_at": "2026-11-28T04:21:00Z",
    "status": "active",
    "call_type": "Fire in Building",
    "occurred_at": "2026-11-28T04:18:00Z",
    "location": {"lat": 47.66707, "lon": -122.301946, "address": "5300 24th Ave NE",
                 "kind": "residence"},
    "priority": 1,
    "narrative": "free text",
    "caller": {"name": "n", "phone": "p"},
}).encode()

Parser = Callable[[bytes], RawIncident]
PARSERS: dict[str, Parser] = {"native": native.parse, "cap": cap.parse, "eido": eido.parse}
SEEDS: dict[str, list[bytes]] = {
    "native": [NATIVE_SAMPLE],
    "cap": [p.read_bytes() for p in CAP_FIXTURES],
    "eido": [p.read_bytes() for p in EIDO_FIXTURES],
}

FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def parses_or_422(parser: Parser, body: bytes) -> None:
    try:
        result = parser(body)
    except ValidationFailed as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)
    else:
        assert isinstance(result, RawIncident)
        assert result.revision.tzinfo is not None
        assert result.occurred_at.tzinfo is not None
        assert -90 <= result.point.lat <= 90 and -180 <= result.point.lon <= 180
        if result.geometry_wkt is not None:
            geom = shapely.from_wkt(result.geometry_wkt)
            assert geom.geom_type in ("Polygon", "MultiPolygon")
            assert geom.is_valid and not geom.is_empty


def test_fixtures_are_present() -> None:
    assert len(CAP_FIXTURES) >= 5 and len(EIDO_FIXTURES) >= 3


# --- any bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PARSERS))
@FAST
@given(body=st.binary(max_size=2048))
def test_any_bytes(name: str, body: bytes) -> None:
    parses_or_422(PARSERS[name], body)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FAST
@given(text=st.text(max_size=512))
def test_any_text(name: str, text: str) -> None:
    parses_or_422(PARSERS[name], text.encode("utf-8", "surrogatepass"))


# --- mutated fixtures --------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    body = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not body:
            break
        i = draw(st.integers(0, len(body) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        if op == "flip":
            body[i] = draw(st.integers(0, 255))
        elif op == "insert":
            body[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del body[i:i + draw(st.integers(1, 16))]
        elif op == "duplicate":
            body[i:i] = body[i:i + draw(st.integers(1, 64))]
        else:
            del body[i:]
    return bytes(body)


@pytest.mark.parametrize("name", sorted(PARSERS))
@FAST
@given(data=st.data())
def test_mutated_fixtures(name: str, data: st.DataObject) -> None:
    parses_or_422(PARSERS[name], data.draw(mutated(SEEDS[name])))


# Replace the text of one XML element / one JSON string with something generated: gets
# past the well-formedness checks and into the mapping rules.

_XML_TEXT = re.compile(rb">([^<]*)<")
NASTY_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", " ", "0", "-0", "nan", "inf", "1e309", "-1", "91,-122 1", "47.6,-122.3 0",
        "47.6,-122.3 1e-300", "47.6,-122.3 999", "47,-122 47,-121 46,-121 47,-122",
        "0,179.9 0,-179.9 1,-179.9 0,179.9", "2026-11-28T04:21:00", "2026-11-28T04:21:00+25:00",
        "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:00", "Ack", "Error", "Cancel",
        "Update", "Test", "Extreme", "a,b,c d,e,f", ",,", "x" * 600,
    ]),
)


@st.composite
def cap_with_one_text_replaced(draw: st.DrawFn) -> bytes:
    body = draw(st.sampled_from(SEEDS["cap"]))
    spans = list(_XML_TEXT.finditer(body))
    m = draw(st.sampled_from(spans))
    new = escape(draw(NASTY_TEXT)).encode("utf-8", "surrogatepass")
    return body[: m.start(1)] + new + body[m.end(1):]


@FAST
@given(body=cap_with_one_text_replaced())
def test_cap_with_generated_element_text(body: bytes) -> None:
    parses_or_422(cap.parse, body)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | NASTY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> None:
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new


@pytest.mark.parametrize("name", ["native", "eido"])
@FAST
@given(data=st.data())
def test_json_with_one_value_replaced(name: str, data: st.DataObject) -> None:
    doc = json.loads(data.draw(st.sampled_from(SEEDS[name])))
    path = data.draw(st.sampled_from(_paths(doc)))
    _replace(doc, path, data.draw(JSON_VALUES))
    parses_or_422(PARSERS[name], json.dumps(doc).encode())


# --- generated documents -----------------------------------------------------------------
# Mostly valid values with a sprinkling of wrong ones, so that generated documents get
# past the first check and exercise the mapping rules (and sometimes parse).

def usually(strategy: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> (
    st.SearchStrategy[Any]
):
    """``strategy`` nine times in ten, else ``other``."""
    return st.sampled_from([True] * 9 + [False]).flatmap(lambda ok: strategy if ok else other)


XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
IDS = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z")
LAT = st.floats(-95, 95, allow_nan=False) | st.sampled_from([0.0, 89.9999, -90.0])
LON = st.floats(-185, 185, allow_nan=False) | st.sampled_from([180.0, -180.0, 179.99])
AWARE_TIMES = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
TIMES = usually(AWARE_TIMES, st.datetimes().map(str) | XML_TEXT)


def _box(lat: float, lon: float, d: float) -> list[tuple[float, float]]:
    return [(lat, lon), (lat + d, lon), (lat + d, lon + d), (lat, lon + d), (lat, lon)]


BOXES = st.builds(_box, st.floats(-80, 80), st.floats(-170, 170), st.floats(0.001, 1))
RINGS = usually(BOXES, st.lists(st.tuples(LAT, LON), min_size=2, max_size=6)
                .map(lambda pts: [*pts, pts[0]]))
SHAPE = st.one_of(
    st.builds(lambda a, o, r: f"<circle>{a},{o} {r}</circle>", LAT, LON,
              st.floats(0, 1200, allow_nan=False) | st.just(0.0)),
    RINGS.map(lambda ring: "<polygon>" + " ".join(f"{a},{o}" for a, o in ring) + "</polygon>"),
)


@st.composite
def cap_documents(draw: st.DrawFn) -> bytes:
    def opt(tag: str, strategy: st.SearchStrategy[str]) -> str:
        value = draw(usually(strategy, st.none()))
        return "" if value is None else f"<{tag}>{escape(value)}</{tag}>"

    def area() -> str:
        shapes = draw(st.lists(SHAPE, min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=3))
        return "<area>" + opt("areaDesc", XML_TEXT) + "".join(shapes) + "</area>"

    def info() -> str:
        return (
            "<info>" + opt("language", st.sampled_from(["en-US", "es", "fr-CA"]))
            + opt("event", usually(IDS, XML_TEXT))
            + opt("severity", usually(st.sampled_from(["Extreme", "Severe", "Moderate",
                                                       "Minor", "Unknown"]), XML_TEXT))
            + opt("onset", TIMES) + opt("effective", TIMES) + opt("description", XML_TEXT)
            + "".join(area() for _ in range(draw(st.sampled_from([1, 1, 2, 0]))))
            + "</info>"
        )

    ns = draw(usually(st.sampled_from(cap.CAP_NAMESPACES), st.just("urn:x")))
    return (
        f'<alert xmlns="{ns}">'
        + opt("identifier", usually(IDS, XML_TEXT))
        + opt("sent", TIMES)
        + opt("status", usually(st.sampled_from(["Actual", "Test", "Exercise", "System",
                                                 "Draft"]), XML_TEXT))
        + opt("msgType", usually(st.sampled_from(["Alert", "Update", "Cancel"]),
                                 st.sampled_from(["Ack", "Error", "x"])))
        + opt("references", usually(st.just("s,ID-0,2026-01-01T00:00:00Z"), XML_TEXT))
        + "".join(info() for _ in range(draw(st.sampled_from([1, 1, 2, 0]))))
        + "</alert>"
    ).encode()


@FAST
@given(body=cap_documents())
def test_generated_cap_documents(body: bytes) -> None:
    parses_or_422(cap.parse, body)


def _pos_list(ring: list[tuple[float, float]], dim: str) -> str:
    extra = " 0" if dim == "3" else ""
    return " ".join(f"{a} {o}{extra}" for a, o in ring)


PIDF_GEOMETRY = st.one_of(
    st.builds(lambda a, o: f"<gml:Point><gml:pos>{a} {o}</gml:pos></gml:Point>", LAT, LON),
    st.builds(
        lambda a, o, r, u: f"<gs:Circle><gml:pos>{a} {o}</gml:pos>"
        f'<gs:radius uom="{u}">{r}</gs:radius></gs:Circle>',
        LAT, LON, st.floats(-1, 2e6, allow_nan=False),
        usually(st.just("urn:ogc:def:uom:EPSG::9001"), st.just("urn:ogc:def:uom:EPSG::9036")),
    ),
    st.builds(
        lambda ring, dim: "<gml:Polygon><gml:exterior><gml:LinearRing>"
        f'<gml:posList srsDimension="{dim}">{_pos_list(ring, dim)}'
        "</gml:posList></gml:LinearRing></gml:exterior></gml:Polygon>",
        RINGS, st.sampled_from(["2", "3"]),
    ),
    XML_TEXT.map(escape),
)


@st.composite
def eido_documents(draw: st.DrawFn) -> bytes:
    pidf = (
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gml="http://www.opengis.net/gml"'
        ' xmlns:gs="http://www.opengis.net/pidflo/1.0"'
        ' xmlns:ca="urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr">'
        + draw(PIDF_GEOMETRY)
        + "<ca:civicAddress><ca:HNO>" + escape(draw(XML_TEXT)) + "</ca:HNO>"
        + "<ca:A6>" + escape(draw(XML_TEXT)) + "</ca:A6></ca:civicAddress>"
        + "</presence>"
    )
    incident = draw(st.fixed_dictionaries(
        {
            "incidentTrackingIdentifier": usually(IDS, JSON_VALUES),
            "incidentTypeCommonRegistryText": usually(IDS | st.lists(IDS, max_size=2),
                                                      JSON_VALUES),
            "lastUpdateTimeStamp": usually(AWARE_TIMES, TIMES | JSON_VALUES),
        },
        optional={
            "$id": usually(IDS, JSON_VALUES),
            "incidentStatusCommonRegistryText": usually(
                st.sampled_from(["Active", "Closed", "Cancelled", "Dispatched"]), JSON_VALUES),
            "incidentCreationTimeStamp": usually(AWARE_TIMES, TIMES | JSON_VALUES),
            "priority": usually(st.integers(0, 99), JSON_VALUES),
            "incidentCommonPriorityNumber": usually(st.integers(-1, 12), JSON_VALUES),
            "locationReference": usually(st.just({"$ref": "loc-1"}), JSON_VALUES),
        },
    ))
    location = draw(st.fixed_dictionaries(
        {"$id": usually(st.just("loc-1"), JSON_VALUES), "locationByValue": st.just(pidf)},
        optional={"locationTypeDescriptionRegistryText": st.sampled_from(["Caller", "Initial"])},
    ))
    doc = {
        "incidentComponent": draw(st.sampled_from([incident, [incident]])),
        "locationComponent": draw(usually(st.sampled_from([location, [location]]), st.just("x"))),
        "notesComponent": draw(st.none() | JSON_VALUES),
    }
    return json.dumps(doc).encode()


@FAST
@given(body=eido_documents())
def test_generated_eido_documents(body: bytes) -> None:
    parses_or_422(eido.parse, body)


@FAST
@given(doc=st.fixed_dictionaries(
    {},
    optional={
        "id": usually(IDS, JSON_VALUES), "call_type": usually(IDS, JSON_VALUES),
        "occurred_at": usually(AWARE_TIMES, JSON_VALUES),
        "updated_at": usually(AWARE_TIMES, JSON_VALUES),
        "status": usually(st.sampled_from(["active", "cleared", "cancelled"]), JSON_VALUES),
        "priority": usually(st.integers(0, 99), JSON_VALUES),
        "location": usually(st.fixed_dictionaries({}, optional={
            "lat": usually(LAT, JSON_VALUES), "lon": usually(LON, JSON_VALUES),
            "address": JSON_VALUES, "kind": JSON_VALUES,
        }), JSON_VALUES),
        "caller": JSON_VALUES,
    },
))
def test_generated_native_documents(doc: dict[str, Any]) -> None:
    parses_or_422(native.parse, json.dumps(doc).encode("utf-8", "surrogatepass"))


# --- deep nesting ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cap", "eido"])
@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"a":' * 50_000, b"<a>" * 50_000, b'{"incidentComponent":' * 50_000],
)
def test_deeply_nested_input(name: str, body: bytes) -> None:
    parses_or_422(PARSERS[name], body)


@pytest.mark.parametrize("body", [b'{"location":' * 50_000, b'{"id": "\x80"}'])
def test_native_deep_nesting_and_bad_utf8_are_422(body: bytes) -> None:
    with pytest.raises(ValidationFailed) as err:
        native.parse(body)
    assert err.value.errors[0].field == "body"
