"""The CAD side: the benchmark's agency, real Seattle Fire incident locations, and the
signed webhooks a CAD would send (native JSON for a fire, CAP for the large area).

``loadtest/data/seattle-fire-2022-01-sample.csv`` holds 300 incidents of Seattle Fire's
real-time 911 feed (data.seattle.gov, January 2022): every 32nd one inside the city.
Most of them are medical calls, which geopush stores without pushing; the benchmark
posts each location as a ``Fire in Building`` (structure fire, alerted, within the
hourly limit) so every one is a neighbourhood fan-out of the size a fire gets.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench_common import BenchError
from loadtest.delivery import REPO
from loadtest.fanout import AGENCY, DOWNTOWN
from loadtest.incidents import iso
from server.domain.signing import HEADER, sign

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "seattle-fire-2022-01-sample.csv"
RATE_LIMIT_PER_MINUTE = 1_000_000
FIRE = "Fire in Building"


@dataclass(frozen=True)
class Location:
    number: str     # the CAD's incident number
    address: str
    lat: float
    lon: float


@dataclass(frozen=True)
class Posted:
    incident_id: str
    external_id: str
    kind: str            # "fire" | "area"
    accepted_at: float   # unix time the 202 arrived
    decision: str


def locations() -> list[Location]:
    with SAMPLE.open(newline="") as f:
        return [Location(r["Incident Number"], r["Address"], float(r["Latitude"]),
                         float(r["Longitude"])) for r in csv.DictReader(f)]


async def create_agency(database_url: str) -> str:
    """The benchmark's agency with Seattle Fire's call-type map and its webhook rate
    limit raised to the most the admin API allows; its signing secret."""
    from server.agencies import create_agency_with_secret
    from server.store.agencies import update_agency
    from server.store.db import create_pool

    call_types = json.loads((REPO / "server/examples/call-types/seattle-fire.json").read_text())
    secret = await create_agency_with_secret(
        database_url, agency_id=AGENCY, name="Seattle Fire (fan-out benchmark)",
        timezone="America/Los_Angeles", call_types=call_types)
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await update_agency(pool, AGENCY, {"rate_limit_per_minute": RATE_LIMIT_PER_MINUTE})
    finally:
        await pool.close()
    return secret


def agency_secret(database_url: str) -> str:
    return asyncio.run(create_agency(database_url))


class Cad:
    """Posts signed webhooks to ``web_url`` as the agency's CAD would."""

    def __init__(self, web_url: str, secret: str, run: str) -> None:
        self.web_url = web_url
        self.secret = secret
        self.run = run   # makes external ids unique per run

    def _post(self, body: bytes, content_type: str, external_id: str, kind: str) -> Posted:
        headers = {"Content-Type": content_type,
                   HEADER: sign(self.secret, body, int(time.time()))}
        request = urllib.request.Request(  # noqa: S310 (local URL)
            f"{self.web_url}/v1/agencies/{AGENCY}/incidents", data=body, headers=headers,
            method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                answer = json.loads(resp.read())
                status = resp.status
        except urllib.error.HTTPError as exc:
            raise BenchError(f"webhook answered {exc.code}: {exc.read()[:500]!r}") from None
        accepted_at = time.time()
        if status != 202 or answer.get("duplicate"):
            raise BenchError(f"webhook answered {status}: {answer}")
        return Posted(answer["incident_id"], external_id, kind, accepted_at, answer["decision"])

    def fire(self, where: Location, n: int) -> Posted:
        """A structure fire at ``where``, reported a minute ago (native JSON)."""
        now = dt.datetime.now(dt.UTC)
        external_id = f"{where.number}-{self.run}-{n}"
        doc = {
            "id": external_id, "updated_at": iso(now), "status": "active",
            "call_type": FIRE, "occurred_at": iso(now - dt.timedelta(minutes=1)),
            "location": {"lat": where.lat, "lon": where.lon, "address": where.address,
                         "kind": "public"},
            "priority": 1,
        }
        return self._post(json.dumps(doc).encode(), "application/json", external_id, "fire")

    def area(self, radius_km: float, centre: tuple[float, float] = DOWNTOWN) -> Posted:
        """An explosion downtown with a CAP circle of ``radius_km`` as its area."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        identifier = f"bench-area-{self.run}-{uuid.uuid4().hex[:8]}"
        lat, lon = centre
        body = f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>cad@seattle.gov</sender>
  <sent>{now.isoformat()}</sent>
  <status>Actual</status>
  <msgType>Alert</msgType>
  <scope>Public</scope>
  <info>
    <language>en-US</language>
    <category>Fire</category>
    <event>Explosion - Major</event>
    <urgency>Immediate</urgency>
    <severity>Extreme</severity>
    <certainty>Observed</certainty>
    <onset>{(now - dt.timedelta(minutes=1)).isoformat()}</onset>
    <area>
      <areaDesc>Downtown Seattle</areaDesc>
      <circle>{lat},{lon} {radius_km}</circle>
    </area>
  </info>
</alert>""".encode()
        return self._post(body, "application/cap+xml", identifier, "area")
