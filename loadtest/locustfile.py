"""Locust scenarios against a running geopush.

CadVendor posts correctly signed native-JSON incidents at random points inside an
area, as a CAD system's webhook would. Configure with options or environment:

  --agency / GEOPUSH_LOAD_AGENCY          agency id (must exist)
  --agency-secret / GEOPUSH_LOAD_SECRET   its signing secret
  --area / GEOPUSH_LOAD_AREA              "min_lat,min_lon,max_lat,max_lon" (default: Seattle)

  locust -f loadtest/locustfile.py --headless -u 20 -r 20 -t 30s --host http://127.0.0.1:8080 \\
      --agency seattle-fire-demo --agency-secret "$(jq -r .secret .geopush/demo.json)"
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import time
import uuid
from typing import Any

from locust import HttpUser, between, events, task

from loadtest import incidents
from server.domain.signing import HEADER, sign

SEATTLE = "47.50,-122.44,47.73,-122.24"


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--agency", default=os.environ.get("GEOPUSH_LOAD_AGENCY", ""),
                        help="agency id to post as")
    parser.add_argument("--agency-secret", default=os.environ.get("GEOPUSH_LOAD_SECRET", ""),
                        help="the agency's signing secret")
    parser.add_argument("--area", default=os.environ.get("GEOPUSH_LOAD_AREA", SEATTLE),
                        help="min_lat,min_lon,max_lat,max_lon")


def random_incident(area: tuple[float, float, float, float], rng: random.Random) -> bytes:
    now = dt.datetime.now(dt.UTC)
    doc = incidents.random_incident(rng, f"LOAD-{uuid.uuid4().hex[:16]}", now, area)
    return json.dumps(doc).encode()


class CadVendor(HttpUser):
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.agency = opts.agency
        self.secret = opts.agency_secret
        if not self.agency or not self.secret:
            raise RuntimeError("set --agency and --agency-secret (or GEOPUSH_LOAD_*)")
        parts = [float(x) for x in opts.area.split(",")]
        self.area = (parts[0], parts[1], parts[2], parts[3])
        self.rng = random.Random()

    @task
    def post_incident(self) -> None:
        body = random_incident(self.area, self.rng)
        headers = {HEADER: sign(self.secret, body, int(time.time())),
                   "Content-Type": "application/json"}
        with self.client.post(f"/v1/agencies/{self.agency}/incidents", data=body,
                              headers=headers, name="/v1/agencies/[agency]/incidents",
                              catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
            elif "decision" not in resp.json():
                resp.failure("202 without a decision")
