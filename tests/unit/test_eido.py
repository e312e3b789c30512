"""NENA EIDO JSON parser (server.formats.eido)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest
import shapely
from shapely.geometry import Polygon

from server.domain.errors import ValidationFailed
from server.domain.incident import Status
from server.formats import eido

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "eido"
PST = dt.timezone(dt.timedelta(hours=-8))

PIDF = (
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10"'
    ' xmlns:gml="http://www.opengis.net/gml" xmlns:gs="http://www.opengis.net/pidflo/1.0"'
    ' xmlns:ca="urn:ietf:params:xml:ns:pidf:geopriv10:civicAddr" entity="pres:x@example.com">'
    "<tuple id=\"t\"><status><gp:geopriv><gp:location-info>{}</gp:location-info>"
    "</gp:geopriv></status></tuple></presence>"
)
POINT = '<gml:Point srsName="urn:ogc:def:crs:EPSG::4326"><gml:pos>47.6 -122.3</gml:pos></gml:Point>'


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return doc


def encode(doc: object) -> bytes:
    return json.dumps(doc).encode()


def minimal(location_info: str = POINT, /, **incident: object) -> dict[str, Any]:
    inc: dict[str, Any] = {
        "incidentTrackingIdentifier": "INC-1",
        "incidentTypeCommonRegistryText": "Fire-Structure",
        "lastUpdateTimeStamp": "2026-11-28T04:21:00-08:00",
    }
    inc.update(incident)
    inc = {k: v for k, v in inc.items() if v is not None}
    return {
        "incidentComponent": inc,
        "locationComponent": [{"$id": "loc-1", "locationByValue": PIDF.format(location_info)}],
    }


def rejected(doc: object) -> tuple[str, str]:
    body = doc if isinstance(doc, bytes) else encode(doc)
    with pytest.raises(ValidationFailed) as info:
        eido.parse(body)
    assert info.value.errors   # the web edge makes it a 422 naming the field
    err = info.value.errors[0]
    return err.field, err.message


# --- fixtures end to end --------------------------------------------------------------


def test_point_with_civic_address() -> None:
    raw = eido.parse((FIXTURES / "point_civic.json").read_bytes())
    assert raw.external_id == "urn:emergency:uid:incidentid:F220009060:sfd.seattle.gov"
    assert raw.call_type == "Fire-Structure"  # common registry text wins over internal
    assert raw.status is Status.ACTIVE  # "Dispatched"
    assert raw.revision == dt.datetime(2026, 11, 28, 4, 21, tzinfo=PST)  # incident's own
    assert raw.occurred_at == dt.datetime(2026, 11, 28, 4, 18, tzinfo=PST)  # creation
    # the referenced incident location, not the caller's location listed first
    assert (raw.point.lat, raw.point.lon) == (47.66707, -122.301946)
    assert raw.geometry_wkt is None
    assert raw.address == "5312 24th Ave NE, Seattle"
    assert raw.priority == 2  # incidentCommonPriorityNumber 9 of 10
    assert raw.narrative == "Smoke showing, two-story residence."
    assert raw.actual is True
    assert raw.location_kind is None


def test_person_and_caller_data_never_come_through() -> None:
    raw = eido.parse((FIXTURES / "point_civic.json").read_bytes())
    text = repr(raw)
    for secret in ("Jane", "2065550123", "Dispatcher 17"):
        assert secret not in text
    assert (raw.point.lat, raw.point.lon) != (47.6, -122.2)  # the caller's location


def test_circle_with_string_reference_and_list_incident() -> None:
    raw = eido.parse((FIXTURES / "circle.json").read_bytes())
    assert raw.external_id == "SPD-2026-000777"
    assert raw.call_type == "Law-Shooting"
    assert raw.priority == 1  # explicit "priority" is taken as is
    # no incident timestamps: the document's lastUpdateTimeStamp for both
    assert raw.revision == raw.occurred_at == dt.datetime(2026, 11, 28, 9, 41, tzinfo=PST)
    assert (raw.point.lat, raw.point.lon) == (47.61085, -122.33857)
    assert raw.address is None
    assert raw.narrative == "Multiple 911 calls reporting shots near 3rd and Pine."
    assert raw.geometry_wkt is not None
    geom = shapely.from_wkt(raw.geometry_wkt)
    assert isinstance(geom, Polygon) and geom.is_valid
    for lon, lat in geom.exterior.coords:
        assert lon == pytest.approx(-122.34, abs=0.01)
        d = 6371008.8 * math.radians(math.hypot(
            lat - 47.61085, (lon + 122.33857) * math.cos(math.radians(47.61085))))
        assert d == pytest.approx(250, rel=0.01)  # metres


def test_nested_location_polygon_and_closed_status() -> None:
    raw = eido.parse((FIXTURES / "polygon_closed.json").read_bytes())
    assert raw.external_id == "SFD-F220009200"  # "id"
    assert raw.call_type == "Gas Leak"  # incidentTypeInternalText fallback
    assert raw.status is Status.CLEARED
    assert raw.revision == dt.datetime(2026, 11, 28, 11, 2, tzinfo=PST)
    assert raw.occurred_at == dt.datetime(2026, 11, 28, 9, 35, tzinfo=PST)
    assert raw.geometry_wkt is not None
    assert raw.geometry_wkt.startswith("POLYGON ((-122.308 47.672")  # lat lon -> lon lat
    assert raw.point.lat == pytest.approx(47.668)
    assert raw.point.lon == pytest.approx(-122.3015)


@pytest.mark.parametrize("name", ["pidf_billion_laughs.json", "pidf_external_entity.json"])
def test_malicious_pidf_is_refused(name: str) -> None:
    field, message = rejected((FIXTURES / name).read_bytes())
    assert field == "locationComponent[0].locationByValue"
    assert "DTD" in message


# --- field names and mapping -------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ("Active", Status.ACTIVE),
        (["Dispatched"], Status.ACTIVE),
        ("OnScene", Status.ACTIVE),
        ("Closed", Status.CLEARED),
        ("Cleared", Status.CLEARED),
        (["Completed"], Status.CLEARED),
        ("Cancelled", Status.CANCELLED),
        ("Canceled", Status.CANCELLED),
        (["Closed", "Cancelled"], Status.CANCELLED),
        ([], Status.ACTIVE),
        (None, Status.ACTIVE),
    ],
)
def test_status_mapping(statuses: object, expected: Status) -> None:
    doc = minimal(incidentStatusCommonRegistryText=statuses)
    assert eido.parse(encode(doc)).status is expected


@pytest.mark.parametrize(
    ("key", "value"),
    [("incidentTrackingIdentifier", "A-1"), ("$id", "A-1"), ("id", "A-1")],
)
def test_identifier_names(key: str, value: str) -> None:
    doc = minimal(incidentTrackingIdentifier=None)
    doc["incidentComponent"][key] = value
    assert eido.parse(encode(doc)).external_id == "A-1"


def test_tracking_identifier_wins_over_component_id() -> None:
    doc = minimal(**{"$id": "inc-component"})
    assert eido.parse(encode(doc)).external_id == "INC-1"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"incidentTypeCommonRegistryText": ["", "Medical-Cardiac"]}, "Medical-Cardiac"),
        ({"incidentTypeCommonRegistryText": None, "incidentTypeInternalCode": "CPR"}, "CPR"),
        ({"incidentTypeCommonRegistryText": " Law-Burglary "}, "Law-Burglary"),
    ],
)
def test_call_type_names(fields: dict[str, object], expected: str) -> None:
    assert eido.parse(encode(minimal(**fields))).call_type == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"priority": 3}, 3),
        ({"priority": 0, "incidentCommonPriorityNumber": 10}, 0),
        ({"incidentCommonPriorityNumber": 10}, 1),
        ({"incidentCommonPriorityNumber": 0}, 11),
        ({}, None),
    ],
)
def test_priority(fields: dict[str, object], expected: int | None) -> None:
    assert eido.parse(encode(minimal(**fields))).priority == expected


@pytest.mark.parametrize(
    "ref",
    [{"$ref": "loc-2"}, [{"$ref": "loc-2"}], "loc-2", "$ref:loc-2", "#loc-2", ["#loc-2"]],
)
def test_location_reference_forms(ref: object) -> None:
    doc = minimal(locationReference=ref)
    other = '<gml:Point><gml:pos>47.7 -122.4</gml:pos></gml:Point>'
    doc["locationComponent"].append({"$id": "loc-2", "locationByValue": PIDF.format(other)})
    raw = eido.parse(encode(doc))
    assert (raw.point.lat, raw.point.lon) == (47.7, -122.4)


def test_dangling_reference_falls_back_to_non_caller_locations() -> None:
    doc = minimal(locationReference={"$ref": "nowhere"})
    assert eido.parse(encode(doc)).point.lat == 47.6


def test_caller_location_alone_is_not_used() -> None:
    doc = minimal()
    doc["locationComponent"][0]["locationTypeDescriptionRegistryText"] = "Caller"
    assert rejected(doc)[0] == "locationComponent"


def test_single_location_object_is_accepted() -> None:
    doc = minimal()
    doc["locationComponent"] = doc["locationComponent"][0]
    assert eido.parse(encode(doc)).point.lon == -122.3


def test_components_without_location_by_value_are_skipped() -> None:
    doc = minimal()
    doc["locationComponent"].insert(0, {"$id": "loc-0", "locationByReferenceUrl": "https://x"})
    assert eido.parse(encode(doc)).point.lat == 47.6


def test_three_dimensional_positions() -> None:
    point = ('<gml:Point srsName="urn:ogc:def:crs:EPSG::4979">'
             "<gml:pos>47.6 -122.3 12.5</gml:pos></gml:Point>")
    assert eido.parse(encode(minimal(point))).point.lat == 47.6
    polygon = (
        '<gml:Polygon srsName="urn:ogc:def:crs:EPSG::4979"><gml:exterior><gml:LinearRing>'
        "<gml:posList>47.0 -122.0 1 47.1 -122.0 1 47.1 -121.9 1 47.0 -122.0 1</gml:posList>"
        "</gml:LinearRing></gml:exterior></gml:Polygon>"
    )
    raw = eido.parse(encode(minimal(polygon)))
    assert raw.geometry_wkt is not None and raw.geometry_wkt.startswith("POLYGON ((-122 47")


def test_polygon_as_pos_elements() -> None:
    polygon = (
        "<gml:Polygon><gml:exterior><gml:LinearRing>"
        "<gml:pos>47.0 -122.0</gml:pos><gml:pos>47.1 -122.0</gml:pos>"
        "<gml:pos>47.1 -121.9</gml:pos><gml:pos>47.0 -122.0</gml:pos>"
        "</gml:LinearRing></gml:exterior></gml:Polygon>"
    )
    raw = eido.parse(encode(minimal(polygon)))
    assert raw.geometry_wkt == "POLYGON ((-122 47, -122 47.1, -121.9 47.1, -122 47))"


def test_zero_radius_circle_is_a_point() -> None:
    circle = ('<gs:Circle><gml:pos>47.6 -122.3</gml:pos>'
              '<gs:radius uom="urn:ogc:def:uom:EPSG::9001">0</gs:radius></gs:Circle>')
    raw = eido.parse(encode(minimal(circle)))
    assert raw.geometry_wkt is None and raw.point.lat == 47.6


def test_civic_address_parts() -> None:
    civic = (
        "<ca:civicAddress><ca:A3>Seattle</ca:A3><ca:HNO>1200</ca:HNO><ca:HNS>A</ca:HNS>"
        "<ca:PRD>E</ca:PRD><ca:A6>Pine</ca:A6><ca:STS>St</ca:STS></ca:civicAddress>"
    )
    assert eido.parse(encode(minimal(POINT + civic))).address == "1200A E Pine St, Seattle"
    no_street = "<ca:civicAddress><ca:A3>Seattle</ca:A3></ca:civicAddress>"
    assert eido.parse(encode(minimal(POINT + no_street))).address is None
    road = "<ca:civicAddress><ca:HNO>5</ca:HNO><ca:RD>Main St</ca:RD></ca:civicAddress>"
    assert eido.parse(encode(minimal(POINT + road))).address == "5 Main St"


def test_notes_in_both_spellings_become_the_narrative() -> None:
    doc = minimal()
    doc["notesComponent"] = [{"notesActionComments": "one"}, {"noteText": ["two", " "]}]
    assert eido.parse(encode(doc)).narrative == "one\ntwo"


# --- strict types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"incidentTrackingIdentifier": 123}, "incidentComponent.incidentTrackingIdentifier"),
        ({"incidentTrackingIdentifier": "x" * 129},
         "incidentComponent.incidentTrackingIdentifier"),
        ({"incidentTrackingIdentifier": " "}, "incidentComponent.incidentTrackingIdentifier"),
        ({"incidentTypeCommonRegistryText": [1]},
         "incidentComponent.incidentTypeCommonRegistryText[0]"),
        ({"incidentTypeCommonRegistryText": {"a": 1}},
         "incidentComponent.incidentTypeCommonRegistryText"),
        ({"incidentTypeCommonRegistryText": None},
         "incidentComponent.incidentTypeCommonRegistryText"),
        ({"incidentTypeCommonRegistryText": "x" * 201},
         "incidentComponent.incidentTypeCommonRegistryText"),
        ({"incidentStatusCommonRegistryText": 3},
         "incidentComponent.incidentStatusCommonRegistryText"),
        ({"incidentStatusCommonRegistryText": ["Active", 3]},
         "incidentComponent.incidentStatusCommonRegistryText[1]"),
        ({"lastUpdateTimeStamp": None}, "incidentComponent.lastUpdateTimeStamp"),
        ({"lastUpdateTimeStamp": "2026-11-28T04:21:00"}, "incidentComponent.lastUpdateTimeStamp"),
        ({"lastUpdateTimeStamp": 1764332460}, "incidentComponent.lastUpdateTimeStamp"),
        ({"incidentCreationTimeStamp": "soon"}, "incidentComponent.incidentCreationTimeStamp"),
        ({"priority": "1"}, "incidentComponent.priority"),
        ({"priority": True}, "incidentComponent.priority"),
        ({"priority": 100}, "incidentComponent.priority"),
        ({"incidentCommonPriorityNumber": 11},
         "incidentComponent.incidentCommonPriorityNumber"),
        ({"locationReference": 7}, "incidentComponent.locationReference"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(fields: dict[str, object], field: str) -> None:
    assert rejected(minimal(**fields))[0] == field


def test_list_incident_paths_are_indexed() -> None:
    doc = minimal(incidentTrackingIdentifier=5)
    doc["incidentComponent"] = [doc["incidentComponent"]]
    assert rejected(doc)[0] == "incidentComponent[0].incidentTrackingIdentifier"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"{", "body"),
        (b"[]", "body"),
        (b'"eido"', "body"),
        (b"[" * 50_000, "body"),
        (b'{"incidentComponent": "\x80"}', "body"),
        (b"{}", "incidentComponent"),
        (b'{"incidentComponent": "x"}', "incidentComponent"),
        (b'{"incidentComponent": []}', "incidentComponent"),
        (b'{"incidentComponent": [1]}', "incidentComponent[0]"),
    ],
)
def test_document_level_errors(body: bytes, field: str) -> None:
    assert rejected(body)[0] == field


def test_location_errors_name_the_component() -> None:
    doc = minimal()
    doc["locationComponent"] = "loc"
    assert rejected(doc)[0] == "locationComponent"
    doc = minimal()
    doc["locationComponent"][0]["locationByValue"] = {"gml:Point": [47, -122]}
    assert rejected(doc)[0] == "locationComponent[0].locationByValue"
    doc = minimal()
    del doc["locationComponent"]
    assert rejected(doc)[0] == "locationComponent"


@pytest.mark.parametrize(
    ("location_info", "message"),
    [
        ("<ca:civicAddress><ca:HNO>1</ca:HNO><ca:A6>Main</ca:A6></ca:civicAddress>",
         "civic-only"),
        ("<gml:Point><gml:pos>47.6</gml:pos></gml:Point>", "lat lon"),
        ("<gml:Point><gml:pos>-122.3 47.6</gml:pos></gml:Point>", "latitude"),
        ("<gml:Point><gml:pos>47.6 north</gml:pos></gml:Point>", "numbers"),
        ("<gml:Point><gml:pos>NaN 1</gml:pos></gml:Point>", "finite"),
        ("<gml:Point/>", "missing"),
        ("<gs:Circle><gml:pos>47.6 -122.3</gml:pos>"
         '<gs:radius uom="urn:ogc:def:uom:EPSG::9036">2</gs:radius></gs:Circle>', "metres"),
        ("<gs:Circle><gml:pos>47.6 -122.3</gml:pos><gs:radius>-5</gs:radius></gs:Circle>",
         "between"),
        ("<gs:Circle><gml:pos>47.6 -122.3</gml:pos><gs:radius>1 2</gs:radius></gs:Circle>",
         "one number"),
        ("<gs:Circle><gml:pos>0 179.999</gml:pos><gs:radius>5000</gs:radius></gs:Circle>",
         "antimeridian"),
        ("<gml:Polygon/>", "LinearRing"),
        ("<gml:Polygon><gml:exterior><gml:LinearRing><gml:posList>47 -122 47.1 -122 47.1"
         "</gml:posList></gml:LinearRing></gml:exterior></gml:Polygon>", "whole"),
        ("<gml:Polygon><gml:exterior><gml:LinearRing><gml:posList>"
         "47.0 -122.0 47.1 -121.9 47.1 -122.0 47.0 -121.9 47.0 -122.0"
         "</gml:posList></gml:LinearRing></gml:exterior></gml:Polygon>", "invalid polygon"),
        ("<gml:Polygon><gml:exterior><gml:LinearRing><gml:posList>"
         "-16 179.5 -16 -179.5 -17 -179.5 -17 179.5 -16 179.5"
         "</gml:posList></gml:LinearRing></gml:exterior></gml:Polygon>", "antimeridian"),
    ],
)
def test_bad_pidf_geometry_is_refused(location_info: str, message: str) -> None:
    field, msg = rejected(minimal(location_info))
    assert field == "locationComponent[0].locationByValue"
    assert message in msg


def test_malformed_pidf_is_refused() -> None:
    doc = minimal()
    doc["locationComponent"][0]["locationByValue"] = "<presence><gml:Point>"
    field, message = rejected(doc)
    assert field == "locationComponent[0].locationByValue"
    assert message.startswith("malformed XML")


def test_oversized_pidf_is_refused() -> None:
    doc = minimal(POINT + "<!--" + "x" * eido.MAX_PIDF_BYTES + "-->")
    assert "larger than" in rejected(doc)[1]


def test_inputs_are_not_mutated() -> None:
    doc = fixture("point_civic.json")
    before = copy.deepcopy(doc)
    eido.parse(encode(doc))
    assert doc == before
