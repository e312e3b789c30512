"""The locustfile's users under a surge: a quiet city, then a major incident.

  locust -f loadtest/surge.py --headless --host http://127.0.0.1:8080

For ``QUIET_S`` seconds a few CAD vendors and phone users keep a low, steady load;
then a major incident: CAD vendors jump (many units dispatched, revisions every few
seconds) and phone users pile in, checking their feeds; after ``SURGE_S`` it calms
down again. The fan-out of each incident comes from the phones ``geopush loadtest
setup`` registered (and those the phone users add). The shape overrides -u, -r, -t.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtest.locustfile import CadVendor, Editor, GatewayWatcher, PhoneUser

__all__ = ["CadVendor", "Editor", "GatewayWatcher", "PhoneUser", "Surge"]

QUIET_S, SURGE_S, CALM_S = 20, 40, 20
QUIET_USERS, SURGE_USERS = 6, 60


class Surge(LoadTestShape):
    """(users, spawn rate) over time: quiet, surge, calm, then stop."""

    stages = (
        (QUIET_S, QUIET_USERS, QUIET_USERS),
        (QUIET_S + SURGE_S, SURGE_USERS, 30),
        (QUIET_S + SURGE_S + CALM_S, QUIET_USERS, 30),
    )

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()  # type: ignore[no-untyped-call]
        for until, users, rate in self.stages:
            if elapsed < until:
                return users, rate
        return None
