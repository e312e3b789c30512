"""``geopush loadtest setup``: an agency and phones for the Locust load test.

The agency's webhook rate limit fits a load test (the demo agency's 1,200 a minute
would answer 429 to it), shootings are held for review (so the editors of the load
test have decisions to make), and phones with zones spread over the load test's area
give incidents a fan-out. The state (agency, secret, the fake gateways' control URLs)
goes to ``.geopush/loadtest.json``, which ``loadtest/locustfile.py`` reads; it is
reused while it matches the server's database, and made again when it doesn't.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from server.dev.demo import (
    CALL_TYPES,
    DEFAULT_FAKES,
    ensure_agency,
    register_device,
    request,
    reuse_state,
    save_state,
)

AGENCY = "geopush-loadtest"
# Webhooks a minute: far above what one machine can post, so the limit is never what
# a load test measures (set a lower one with PATCH to test the limit itself).
RATE_LIMIT_PER_MINUTE = 1_000_000
DEFAULT_DEVICES = 200
DEFAULT_STATE = Path(".geopush/loadtest.json")
SEATTLE = (47.50, -122.44, 47.73, -122.24)   # min_lat, min_lon, max_lat, max_lon


def setup(state_file: Path, base: str, admin_token: str, *, devices: int = DEFAULT_DEVICES,
          fakes: dict[str, str] | None = None, seed: int = 17) -> dict[str, Any]:
    state = reuse_state(state_file, base, admin_token, "load-test agency and phones")
    if state is not None:
        return state
    call_types = json.loads(CALL_TYPES.joinpath("seattle-fire.json").read_text())
    secret = ensure_agency(base, admin_token, {
        "id": AGENCY, "name": "geopush load test", "timezone": "America/Los_Angeles",
        "call_types": call_types,
    })
    status, answer = request(
        "PATCH", f"{base}/v1/admin/agencies/{AGENCY}",
        {"rate_limit_per_minute": RATE_LIMIT_PER_MINUTE, "review_categories": ["shooting"]},
        {"Authorization": f"Bearer {admin_token}"})
    if status != 200:
        raise RuntimeError(f"configuring the load-test agency failed: {status} {answer}")
    rng = random.Random(seed)
    min_lat, min_lon, max_lat, max_lon = SEATTLE
    phones = [register_device(base, "apns" if n % 2 else "fcm", f"load-{n}",
                              rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon),
                              rng.uniform(1000, 2500))
              for n in range(devices)]
    state = {"url": base, "agency": AGENCY, "secret": secret, "fakes": fakes or DEFAULT_FAKES,
             "area": ",".join(str(x) for x in SEATTLE), "devices": phones}
    save_state(state_file, state)
    return state
