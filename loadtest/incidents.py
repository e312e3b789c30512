"""Random native-JSON incidents for the load tests (the Locust scenario and the ingest
benchmark): Seattle-like call types, weighted so that about half are pushable."""

from __future__ import annotations

import datetime as dt
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
