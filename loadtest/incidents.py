"""Random native-JSON incidents for the load tests (the Locust scenario and the ingest
benchmark): Seattle-like call types, weighted so that about half are pushable."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

SEATTLE = (47.50, -122.44, 47.73, -122.24)   # min_lat, min_lon, max_lat, max_lon
STREETS = ["Pine St", "24th Ave NE", "Alki Ave SW", "Rainier Ave S", "Aurora Ave N"]
CALL_TYPES = [
    ("Fire in Building", 5), ("Residential Fire", 3), ("Commercial Fire", 1),
    ("Scenes Of Violence 7", 1), ("Aid Response", 8), ("Medic Response", 3),
    ("Auto Fire Alarm", 2),
]
_NAMES, _WEIGHTS = zip(*CALL_TYPES, strict=True)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def random_incident(rng: random.Random, incident_id: str, now: dt.datetime,
                    area: tuple[float, float, float, float] = SEATTLE) -> dict[str, Any]:
    """An incident that happened 10 s to 10 min before ``now``."""
    min_lat, min_lon, max_lat, max_lon = area
    occurred = now - dt.timedelta(seconds=rng.randint(10, 600))
    return {
        "id": incident_id,
        "updated_at": iso(occurred + dt.timedelta(seconds=30)),
        "status": "active",
        "call_type": rng.choices(_NAMES, _WEIGHTS)[0],
        "occurred_at": iso(occurred),
        "location": {
            "lat": round(rng.uniform(min_lat, max_lat), 6),
            "lon": round(rng.uniform(min_lon, max_lon), 6),
            "address": f"{rng.randint(100, 9999)} {rng.choice(STREETS)}",
            "kind": rng.choice(["public", "residence"]),
        },
        "priority": rng.randint(1, 5),
    }


CAP_SENDER = "cad@loadtest.geopush.invalid"


def cap_alert(doc: dict[str, Any], *, first_sent: str | None = None) -> bytes:
    """``doc`` (a native incident) as a CAP 1.2 alert. With ``first_sent`` (the
    original alert's ``sent``) it is an Update of that alert, or a Cancel when the
    incident is cleared: CAP keeps one incident's revisions together by referencing
    the first message."""
    location = doc["location"]
    cleared = doc.get("status", "active") != "active"
    msg_type = "Alert" if first_sent is None else ("Cancel" if cleared else "Update")
    identifier = doc["id"] if first_sent is None else f"{doc['id']}-{doc['updated_at']}"
    references = "" if first_sent is None else \
        f"<references>{CAP_SENDER},{doc['id']},{first_sent}</references>"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier.replace(':', '')}</identifier>
  <sender>{CAP_SENDER}</sender>
  <sent>{doc['updated_at'].replace('Z', '+00:00')}</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {references}
  <info>
    <language>en-US</language>
    <category>Fire</category>
    <event>{doc['call_type']}</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <onset>{doc['occurred_at'].replace('Z', '+00:00')}</onset>
    <area>
      <areaDesc>{location['address']}</areaDesc>
      <circle>{location['lat']},{location['lon']} 0</circle>
    </area>
  </info>
</alert>""".encode()


def eido_document(doc: dict[str, Any]) -> bytes:
    """``doc`` (a native incident) as a NENA EIDO JSON document (PIDF-LO location)."""
    location = doc["location"]
    pidf = (
        '<?xml version="1.0" encoding="UTF-8"?><presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:gp="urn:ietf:params:xml:ns:pidf:geopriv10" xmlns:gml="http://www.opengis.net/gml" '
        'entity="pres:incident@loadtest.geopush.invalid"><tuple id="loc1"><status><gp:geopriv>'
        '<gp:location-info><gml:Point srsName="urn:ogc:def:crs:EPSG::4326">'
        f'<gml:pos>{location["lat"]} {location["lon"]}</gml:pos></gml:Point>'
        '</gp:location-info><gp:usage-rules/></gp:geopriv></status></tuple></presence>')
    status = "Dispatched" if doc.get("status", "active") == "active" else "Closed"
    return json.dumps({
        "eidoMessageIdentifier": f"urn:emergency:eido:loadtest:{doc['id']}:{doc['updated_at']}",
        "incidentComponent": {
            "$id": "inc", "incidentTrackingIdentifier": doc["id"],
            "lastUpdateTimeStamp": doc["updated_at"],
            "incidentCreationTimeStamp": doc["occurred_at"],
            "incidentTypeInternalText": doc["call_type"],
            "incidentStatusCommonRegistryText": [status],
            "locationReference": [{"$ref": "loc"}],
        },
        "locationComponent": [{"$id": "loc", "locationTypeDescriptionRegistryText": "Initial",
                               "locationByValue": pidf}],
    }).encode()


def revised(doc: dict[str, Any], now: dt.datetime, *, cleared: bool = False) -> dict[str, Any]:
    """The next revision of ``doc``: updated now, possibly cleared."""
    return {**doc, "updated_at": iso(now), "status": "cleared" if cleared else "active"}
