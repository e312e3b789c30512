"""The demo ``make run`` loads: Seattle's police neighbourhoods, an agency, four
devices (three with a circle, one with a neighbourhood as its zone), and a signed
incident to post.

It talks to the running server over HTTP only, exactly as a CAD vendor and a phone
app would, so the demo exercises the real path end to end.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from server.domain.signing import HEADER, sign

REPO = Path(__file__).resolve().parents[2]
AGENCY = "seattle-fire-demo"
# 5300 24th Ave NE, Seattle: the first call of the January 2022 Seattle Fire sample.
HOME = (47.66707, -122.301946)
DEVICES = [
    # (name, platform, centre, radius_m)
    ("ravenna-iphone", "apns", HOME, 1500),
    ("ravenna-android", "fcm", (47.6690, -122.3050), 1200),
    ("west-seattle-iphone", "apns", (47.5707, -122.3868), 1000),  # too far: gets nothing
]
# A phone whose zone is the neighbourhood HOME lies in (Seattle police's "University").
NEIGHBOURHOOD_DEVICE = ("university-android", "fcm")
NEIGHBOURHOODS = REPO / "examples/seattle-police-mcpp-areas.geojson"


DEFAULT_URL = "http://127.0.0.1:8080"


def _request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 (local URL)
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def load_neighbourhoods(base_url: str, admin_token: str) -> None:
    """Import Seattle police's 61 neighbourhoods (idempotent: re-imports update)."""
    status, answer = _request(
        "POST", f"{base_url}/v1/admin/neighbourhoods?name_property=NAME&source=seattle-spd-mcpp",
        raw=NEIGHBOURHOODS.read_bytes(),
        headers={"Authorization": f"Bearer {admin_token}",
                 "Content-Type": "application/geo+json"})
    if status != 200:
        raise RuntimeError(f"importing the demo neighbourhoods failed: {status} {answer}")


def load(state_file: Path, base_url: str, admin_token: str) -> dict[str, Any]:
    """Create the demo agency and devices once; later calls reuse the saved state."""
    load_neighbourhoods(base_url, admin_token)
    if state_file.exists():
        return dict(json.loads(state_file.read_text()))
    base = base_url
    admin = {"Authorization": f"Bearer {admin_token}"}
    call_types = json.loads((REPO / "examples/call-types/seattle-fire.json").read_text())
    status, created = _request("POST", f"{base}/v1/admin/agencies", {
        "id": AGENCY, "name": "Seattle Fire Department (demo)",
        "timezone": "America/Los_Angeles", "call_types": call_types,
    }, admin)
    if status != 201:
        raise RuntimeError(f"creating the demo agency failed: {status} {created}")
    state: dict[str, Any] = {"url": base, "agency": AGENCY, "secret": created["secret"],
                             "devices": []}
    # An agency admin for the editor console (/console/): manual alerts, the audit log.
    console = {"username": "demo-admin", "password": secrets.token_urlsafe(12)}
    status, made = _request("POST", f"{base}/v1/admin/agencies/{AGENCY}/users",
                            {**console, "role": "agency_admin"}, admin)
    if status != 201:
        raise RuntimeError(f"creating the demo console account failed: {status} {made}")
    state["console"] = console
    for name, platform, (lat, lon), radius in DEVICES:
        token = _demo_token(platform)
        status, dev = _request("POST", f"{base}/v1/devices", {
            "platform": platform, "token": token, "timezone": "America/Los_Angeles",
        })
        if status != 201:
            raise RuntimeError(f"registering a demo device failed: {status} {dev}")
        zone = {"name": name, "center": {"lat": lat, "lon": lon}, "radius_m": radius}
        _request("PUT", f"{base}/v1/devices/{dev['id']}/zones", {"zones": [zone]},
                 {"Authorization": f"Bearer {dev['secret']}"})
        state["devices"].append({"name": name, "platform": platform, "token": token, **dev})
    state["devices"].append(_neighbourhood_device(base))
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=2))
    state_file.chmod(0o600)
    return state


def _demo_token(platform: str) -> str:
    """A push token of the platform's shape (registration refuses any other)."""
    if platform == "apns":
        return secrets.token_hex(32)
    # FCM's: the app instance's id, a colon, the token proper
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(105)}"


def _neighbourhood_device(base: str) -> dict[str, Any]:
    name, platform = NEIGHBOURHOOD_DEVICE
    token = _demo_token(platform)
    status, dev = _request("POST", f"{base}/v1/devices", {
        "platform": platform, "token": token, "timezone": "America/Los_Angeles"})
    if status != 201:
        raise RuntimeError(f"registering a demo device failed: {status} {dev}")
    _, found = _request("GET", f"{base}/v1/neighbourhoods?lat={HOME[0]}&lon={HOME[1]}")
    [hood, *_] = found["neighbourhoods"]
    zone = {"name": hood["name"], "neighbourhood": hood["id"]}
    _request("PUT", f"{base}/v1/devices/{dev['id']}/zones", {"zones": [zone]},
             {"Authorization": f"Bearer {dev['secret']}"})
    return {"name": name, "platform": platform, "token": token, **dev}


def post_incident(state_file: Path, *, base_url: str | None, call_type: str,
                  lat: float | None, lon: float | None) -> None:
    state = json.loads(state_file.read_text())
    base = base_url or state.get("url") or DEFAULT_URL
    now = dt.datetime.now(dt.UTC)
    incident = {
        "id": f"DEMO{int(time.time())}",
        "updated_at": now.isoformat(),
        "call_type": call_type,
        "occurred_at": (now - dt.timedelta(minutes=2)).isoformat(),
        "location": {"lat": lat if lat is not None else HOME[0],
                     "lon": lon if lon is not None else HOME[1],
                     "address": "5312 24th Ave NE", "kind": "residence"},
        "narrative": "demo narrative: never pushed",
        "caller": {"name": "Demo Caller", "phone": "+1 206 555 0100"},
    }
    body = json.dumps(incident).encode()
    status, answer = _request(
        "POST", f"{base}/v1/agencies/{state['agency']}/incidents", raw=body,
        headers={HEADER: sign(state["secret"], body, int(time.time()))},
    )
    print(f"POST /v1/agencies/{state['agency']}/incidents -> {status} {json.dumps(answer)}")
    if status != 202:
        return
    if answer.get("decision") != "alert":
        return
    time.sleep(2)
    for device in state["devices"]:
        control = ("http://127.0.0.1:8444" if device["platform"] == "apns"
                   else "http://127.0.0.1:8445")
        _, seen = _request("GET", f"{control}/_fake/deliveries?token={device['token']}")
        mine = [d for d in seen or [] if answer["incident_id"] in json.dumps(d)]
        what = "nothing"
        if mine:
            payload = mine[-1].get("payload") or mine[-1].get("message") or {}
            alert = payload.get("aps", {}).get("alert") or payload.get("notification")
            what = json.dumps(alert, ensure_ascii=False)
        print(f"  {device['name']:<22} ({device['platform']}): {what}")
