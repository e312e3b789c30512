"""An agency's manual alerts as OASIS CAP 1.2 documents and an Atom feed of them (pure).

Each Atom entry carries its CAP ``<alert>`` inline (``content type="application/cap+xml"``,
RFC 4287 4.1.3.3) and links to the same document on its own, the shape IPAWS-style
aggregators read. Times are written as CAP requires: ``YYYY-MM-DDThh:mm:ss-00:00``,
never ``Z``. Polygons are ``lat,lon`` pairs, first and last the same.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from server.domain.severity import CAP_SEVERITY

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
CAP_MEDIA_TYPE = "application/cap+xml"

# The prefix CAP elements get inside the Atom feed (otherwise ElementTree's "ns0").
ET.register_namespace("cap", CAP_NS)


def cap_time(t: dt.datetime) -> str:
    text = t.astimezone(dt.UTC).replace(microsecond=0).isoformat()
    return text.replace("+00:00", "-00:00")


def _atom_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def cap_polygon(area: dict[str, Any]) -> str:
    ring = area["coordinates"][0]
    return " ".join(f"{lat:.6f},{lon:.6f}" for lon, lat in ring)


def _sub(parent: ET.Element, ns: str, tag: str, text: str | None = None,
         **attrs: str) -> ET.Element:
    # Atom elements are written unqualified under the root's xmlns (ElementTree can't
    # serialize a default namespace alongside unqualified attributes).
    el = ET.SubElement(parent, f"{{{ns}}}{tag}" if ns != ATOM_NS else tag, attrs)
    if text is not None:
        el.text = text
    return el


def cap_alert(alert: dict[str, Any], *, agency_id: str, sender: str,
              web_url: str | None = None) -> ET.Element:
    """One manual alert as a CAP 1.2 ``<alert>`` (element order is the schema's)."""
    root = ET.Element(f"{{{CAP_NS}}}alert")
    for tag, text in (("identifier", f"geopush-{agency_id}-{alert['id']}"),
                      ("sender", sender), ("sent", cap_time(alert["sent_at"])),
                      ("status", "Actual"), ("msgType", "Alert"), ("scope", "Public")):
        _sub(root, CAP_NS, tag, text)
    info = _sub(root, CAP_NS, "info")
    for tag, text in (("language", "en-US"), ("category", "Safety"),
                      ("event", alert["title"]), ("urgency", "Immediate"),
                      ("severity", CAP_SEVERITY[alert["severity"]]),
                      ("certainty", "Observed"), ("effective", cap_time(alert["sent_at"])),
                      ("expires", cap_time(alert["expires_at"])),
                      ("senderName", alert["agency_name"]), ("headline", alert["title"]),
                      ("description", alert["body"])):
        _sub(info, CAP_NS, tag, text)
    if web_url:
        _sub(info, CAP_NS, "web", web_url)
    area = _sub(info, CAP_NS, "area")
    _sub(area, CAP_NS, "areaDesc", alert["title"])
    _sub(area, CAP_NS, "polygon", cap_polygon(alert["area"]))
    return root


def cap_document(alert: dict[str, Any], *, agency_id: str, sender: str) -> bytes:
    data: bytes = ET.tostring(cap_alert(alert, agency_id=agency_id, sender=sender),
                              encoding="utf-8", xml_declaration=True,
                              default_namespace=CAP_NS)
    return data


def atom_feed(alerts: Iterable[dict[str, Any]], *, agency_id: str, agency_name: str,
              base_url: str, sender: str, now: dt.datetime) -> bytes:
    """The feed at ``{base_url}/v1/agencies/{agency}/alerts.atom``, newest first."""
    alerts = list(alerts)
    feed_url = f"{base_url}/v1/agencies/{agency_id}/alerts.atom"
    feed = ET.Element("feed", xmlns=ATOM_NS)
    _sub(feed, ATOM_NS, "id", feed_url)
    _sub(feed, ATOM_NS, "title", f"{agency_name}: alerts")
    _sub(feed, ATOM_NS, "updated", _atom_time(alerts[0]["sent_at"] if alerts else now))
    author = _sub(feed, ATOM_NS, "author")
    _sub(author, ATOM_NS, "name", agency_name)
    _sub(feed, ATOM_NS, "link", rel="self", href=feed_url, type="application/atom+xml")
    for alert in alerts:
        cap_url = f"{base_url}/v1/agencies/{agency_id}/alerts/{alert['id']}.cap"
        entry = _sub(feed, ATOM_NS, "entry")
        _sub(entry, ATOM_NS, "id", f"urn:uuid:{alert['id']}")
        _sub(entry, ATOM_NS, "title", alert["title"])
        _sub(entry, ATOM_NS, "updated", _atom_time(alert["sent_at"]))
        _sub(entry, ATOM_NS, "published", _atom_time(alert["sent_at"]))
        _sub(entry, ATOM_NS, "summary", alert["body"])
        _sub(entry, ATOM_NS, "link", rel="alternate", href=cap_url, type=CAP_MEDIA_TYPE)
        content = _sub(entry, ATOM_NS, "content", type=CAP_MEDIA_TYPE)
        content.append(cap_alert(alert, agency_id=agency_id, sender=sender))
    data: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return data
