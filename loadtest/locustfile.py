"""Locust scenarios against a running geopush: `make run` (which runs
``geopush loadtest setup``), or any server after ``geopush loadtest setup --url URL``.

  locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 60s --host http://127.0.0.1:8080

Users (weights in brackets):

- ``CadVendor`` [4] posts signed webhooks for the load-test agency: new incidents as
  native JSON, CAP 1.2 and NENA EIDO, and revisions and clears of incidents it posted.
- ``PhoneUser`` [3] registers a phone with a zone, changes its preferences, reads its
  alert feed, reports its position as a CPR responder, rotates its push token.
- ``Editor`` [1] reads the review queue (the load-test agency holds shootings for
  review) and approves or rejects what is waiting.
- ``GatewayWatcher`` (one per Locust process) reads what the fake APNs and FCM
  gateways received and reports, for every push of an incident this process posted,
  the time from the webhook being sent to the gateway receiving the push: rows
  ``PUSH webhook -> apns`` and ``PUSH webhook -> fcm`` in Locust's table, beside the
  HTTP latencies.

Options (or environment variables):

  --state / GEOPUSH_LOAD_STATE        .geopush/loadtest.json (agency, secret, fakes)
  --agency, --agency-secret           override the state's agency
  --admin-token                       for the editors (default: .geopush/admin-token)
  --area                              "min_lat,min_lon,max_lat,max_lon"
  --expect-429                        the rate limit is what is tested: 429s are
                                      counted apart (as "... (429)"), not as failures
  --gateway-watchers N                one per Locust worker process when distributed

``loadtest/surge.py`` adds a surge shape (a quiet city, then a major incident).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from locust import HttpUser, between, constant, events, task
from locust.env import Environment

from loadtest import incidents
from server.dev.demo import push_token
from server.domain.signing import HEADER, sign

WEBHOOK = "/v1/agencies/[agency]/incidents"
PUSH = "PUSH"


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument("--state", default=os.environ.get("GEOPUSH_LOAD_STATE",
                                                          ".geopush/loadtest.json"),
                        help="the state `geopush loadtest setup` wrote")
    parser.add_argument("--agency", default=os.environ.get("GEOPUSH_LOAD_AGENCY", ""),
                        help="agency id to post as (default: the state's)")
    parser.add_argument("--agency-secret", default=os.environ.get("GEOPUSH_LOAD_SECRET", ""),
                        help="the agency's signing secret (default: the state's)")
    parser.add_argument("--admin-token", default=os.environ.get("GEOPUSH_ADMIN_TOKEN", ""),
                        help="admin token for the editors (default: .geopush/admin-token)")
    parser.add_argument("--area", default=os.environ.get("GEOPUSH_LOAD_AREA", ""),
                        help="min_lat,min_lon,max_lat,max_lon (default: Seattle)")
    parser.add_argument("--expect-429", action="store_true", default=False,
                        help="count 429s apart instead of as failures")
    parser.add_argument("--gateway-watchers", type=int, default=1,
                        help="GatewayWatcher users: one per Locust worker process")


class Config:
    """What every user of this process needs, read once from options and the state."""

    def __init__(self, environment: Environment) -> None:
        opts: Any = environment.parsed_options
        state_file = Path(opts.state)
        state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() \
            else {}
        self.agency: str = opts.agency or state.get("agency", "")
        self.secret: str = opts.agency_secret or state.get("secret", "")
        if not self.agency or not self.secret:
            raise RuntimeError(f"no agency: run `geopush loadtest setup` (writes {state_file}) "
                               "or pass --agency and --agency-secret")
        token_file = Path(".geopush/admin-token")
        self.admin_token: str = opts.admin_token or (
            token_file.read_text().strip() if token_file.exists() else "")
        area = opts.area or state.get("area") or ",".join(map(str, incidents.SEATTLE))
        a = [float(x) for x in area.split(",")]
        self.area = (a[0], a[1], a[2], a[3])
        self.fakes: dict[str, str] = state.get("fakes", {})
        self.expect_429: bool = opts.expect_429


_CONFIG: dict[int, Config] = {}


def config(environment: Environment) -> Config:
    key = id(environment)
    if key not in _CONFIG:
        _CONFIG[key] = Config(environment)
    return _CONFIG[key]


class Posted:
    """Incidents this process posted and when (for the end-to-end latency), shared by
    the CadVendors and the GatewayWatcher of one Locust process."""

    def __init__(self, keep: int = 100_000) -> None:
        self.sent_at: dict[str, float] = {}
        self.order: deque[str] = deque()
        self.keep = keep
        self.lock = threading.Lock()

    def add(self, incident_id: str, sent_at: float) -> None:
        with self.lock:
            if incident_id in self.sent_at:
                return   # a revision: the push measures from the first webhook
            self.sent_at[incident_id] = sent_at
            self.order.append(incident_id)
            while len(self.order) > self.keep:
                self.sent_at.pop(self.order.popleft(), None)

    def get(self, incident_id: str) -> float | None:
        return self.sent_at.get(incident_id)


POSTED = Posted()


class CadVendor(HttpUser):
    weight = 4
    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.cfg = config(self.environment)
        self.rng = random.Random()
        # Incidents this user may revise or clear: (native doc, format, first CAP sent).
        self.open: deque[tuple[dict[str, Any], str, str]] = deque(maxlen=50)

    def _post(self, body: bytes, content_type: str, name: str) -> dict[str, Any] | None:
        headers = {HEADER: sign(self.cfg.secret, body, int(time.time())),
                   "Content-Type": content_type}
        sent_at = time.time()
        with self.client.post(f"/v1/agencies/{self.cfg.agency}/incidents", data=body,
                              headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code == 429 and self.cfg.expect_429:
                resp.request_meta["name"] = f"{name} (429)"
                resp.success()
                return None
            if resp.status_code != 202:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")
                return None
            answer: dict[str, Any] = resp.json()
            if "decision" not in answer:
                resp.failure("202 without a decision")
                return None
            if answer["decision"] == "alert":
                POSTED.add(answer["incident_id"], sent_at)
            return answer

    def _new(self, fmt: str) -> None:
        now = dt.datetime.now(dt.UTC)
        doc = incidents.random_incident(self.rng, f"LOAD-{uuid.uuid4().hex[:16]}", now,
                                        self.cfg.area)
        body, content_type = self._encode(doc, fmt, first_sent=None)
        if self._post(body, content_type, f"{WEBHOOK} [{fmt} new]") is not None:
            self.open.append((doc, fmt, doc["updated_at"].replace("Z", "+00:00")))

    @staticmethod
    def _encode(doc: dict[str, Any], fmt: str, first_sent: str | None) -> tuple[bytes, str]:
        if fmt == "cap":
            return incidents.cap_alert(doc, first_sent=first_sent), "application/cap+xml"
        if fmt == "eido":
            return incidents.eido_document(doc), "application/eido+json"
        return json.dumps(doc).encode(), "application/json"

    @task(6)
    def post_native(self) -> None:
        self._new("native")

    @task(2)
    def post_cap(self) -> None:
        self._new("cap")

    @task(2)
    def post_eido(self) -> None:
        self._new("eido")

    def _revise(self, cleared: bool) -> None:
        if not self.open:
            self._new("native")
            return
        doc, fmt, first_sent = self.open.popleft() if cleared else self.open[0]
        # A revision is a second later than the last one: CAD clocks tick in seconds.
        now = max(dt.datetime.now(dt.UTC),
                  dt.datetime.fromisoformat(doc["updated_at"].replace("Z", "+00:00"))
                  + dt.timedelta(seconds=1))
        new = incidents.revised(doc, now, cleared=cleared)
        body, content_type = self._encode(new, fmt, first_sent=first_sent)
        what = "clear" if cleared else "revision"
        if self._post(body, content_type, f"{WEBHOOK} [{fmt} {what}]") is not None \
                and not cleared:
            self.open[0] = (new, fmt, first_sent)

    @task(2)
    def revise(self) -> None:
        self._revise(cleared=False)

    @task(1)
    def clear(self) -> None:
        self._revise(cleared=True)


class PhoneUser(HttpUser):
    weight = 3
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.cfg = config(self.environment)
        self.rng = random.Random()
        platform = self.rng.choice(["apns", "fcm"])
        token = push_token(platform)
        resp = self.client.post("/v1/devices", json={
            "platform": platform, "token": token, "timezone": "America/Los_Angeles"},
            name="/v1/devices")
        created = resp.json() if resp.status_code == 201 else {}
        self.device = created.get("id", "")
        self.auth = {"Authorization": f"Bearer {created.get('secret', '')}"}
        self.platform = platform
        self.responder = False
        if self.device:
            self.put_zones()

    def _point(self) -> tuple[float, float]:
        min_lat, min_lon, max_lat, max_lon = self.cfg.area
        return self.rng.uniform(min_lat, max_lat), self.rng.uniform(min_lon, max_lon)

    def _put(self, what: str, body: dict[str, Any], expected: int) -> None:
        if not self.device:
            return
        with self.client.put(f"/v1/devices/{self.device}/{what}", json=body, headers=self.auth,
                             name=f"/v1/devices/[device]/{what}", catch_response=True) as resp:
            if resp.status_code != expected:
                resp.failure(f"{resp.status_code}: {resp.text[:200]}")

    @task(2)
    def put_zones(self) -> None:
        lat, lon = self._point()
        self._put("zones", {"zones": [{"name": "Home", "center": {"lat": lat, "lon": lon},
                                       "radius_m": self.rng.uniform(500, 3000)}]}, 200)

    @task(2)
    def put_preferences(self) -> None:
        self.responder = self.rng.random() < 0.5
        categories = self.rng.choice([None, ["structure_fire", "shooting"],
                                      ["structure_fire", "residential_fire", "cardiac_arrest"]])
        self._put("preferences", {"categories": categories, "responder": self.responder,
                                  "quiet_hours": self.rng.choice([None, {"start": "23:00",
                                                                         "end": "06:00"}])},
                  200)

    @task(6)
    def read_feed(self) -> None:
        if self.device:
            self.client.get(f"/v1/devices/{self.device}/alerts?limit=20", headers=self.auth,
                            name="/v1/devices/[device]/alerts")

    @task(2)
    def report_position(self) -> None:
        if self.responder:
            lat, lon = self._point()
            self._put("location", {"lat": lat, "lon": lon}, 204)

    @task(1)
    def rotate_token(self) -> None:
        token = push_token(self.platform)
        self._put("token", {"token": token}, 204)


class Editor(HttpUser):
    weight = 1
    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.cfg = config(self.environment)
        self.admin = {"Authorization": f"Bearer {self.cfg.admin_token}"}
        self.rng = random.Random()

    @task
    def decide(self) -> None:
        if not self.cfg.admin_token:
            return
        resp = self.client.get(f"/v1/admin/review?agency={self.cfg.agency}", headers=self.admin,
                               name="/v1/admin/review")
        if resp.status_code != 200:
            return
        items = resp.json().get("items", [])
        if not items:
            return
        item = self.rng.choice(items)
        verdict = self.rng.choice(["approve", "approve", "reject"])
        with self.client.post(f"/v1/admin/review/{item['incident_id']}/{verdict}",
                              headers=self.admin, name=f"/v1/admin/review/[incident]/{verdict}",
                              catch_response=True) as decided:
            # 409: another editor (or the item's expiry) decided it first: as expected.
            if decided.status_code in (200, 409):
                decided.success()
            else:
                decided.failure(f"{decided.status_code}: {decided.text[:200]}")


def incident_of(platform: str, delivery: dict[str, Any]) -> str | None:
    """The incident id a fake gateway's recorded push is about."""
    if platform == "apns":
        incident = (delivery.get("payload") or {}).get("incident") or {}
        return incident.get("id")
    data = (delivery.get("message") or {}).get("data") or {}
    return data.get("incident_id")


class GatewayWatcher(HttpUser):
    """Reads the fakes' deliveries (``?since=``) and reports webhook -> gateway latency
    per push. One per Locust process: each knows only the incidents its process posted."""

    fixed_count = 1
    wait_time = constant(0.5)

    def on_start(self) -> None:
        self.cfg = config(self.environment)
        self.since = {platform: time.time() - 1 for platform in self.cfg.fakes}

    @task
    def watch(self) -> None:
        for platform, url in self.cfg.fakes.items():
            resp = self.client.get(f"{url}/_fake/deliveries?since={self.since[platform]}",
                                   name=f"fake {platform} deliveries")
            if resp.status_code != 200:
                continue
            for delivery in resp.json():
                self.since[platform] = max(self.since[platform], delivery["arrived_at"])
                incident_id = incident_of(platform, delivery)
                sent_at = POSTED.get(incident_id) if incident_id else None
                if sent_at is None:
                    continue     # another process's, or the demo's
                self.environment.events.request.fire(
                    request_type=PUSH, name=f"webhook -> {platform}",
                    response_time=max(0.0, delivery["arrived_at"] - sent_at) * 1000,
                    response_length=0, exception=None, context={})


@events.init.add_listener  # type: ignore[untyped-decorator]
def _watchers(environment: Environment, **_: Any) -> None:
    # Distributed (--master/--worker): one watcher per worker process, each measuring
    # the incidents its own process posted.
    opts = environment.parsed_options
    if opts is not None:
        GatewayWatcher.fixed_count = max(1, opts.gateway_watchers)
