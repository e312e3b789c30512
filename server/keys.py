"""Every Redis key and stream name geopush uses, and nothing else.

Keeping them here makes the Redis footprint reviewable in one screen (what a device's
erasure must delete, what a Redis Cluster deployment must hash-tag) and keeps typos
from splitting one logical key into two.
"""

from __future__ import annotations

PREFIX = "geopush"

# Streams
INCIDENTS_STREAM = f"{PREFIX}:incidents"
"""Incidents to match: fields ``incident_id`` (uuid). Written by ingest and the outbox relay."""

DEAD_STREAM = f"{PREFIX}:dead"
"""Pushes that could not be delivered before their alert expired, with the reason."""

PLATFORMS = ("apns", "fcm")


def push_stream(platform: str) -> str:
    """Pushes waiting for a sender of one platform."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}")
    return f"{PREFIX}:push:{platform}"


def retry_schedule(platform: str) -> str:
    """Sorted set of pushes waiting for a retry, scored by the unix time they are due."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}")
    return f"{PREFIX}:retry:{platform}"


# Consumer groups
MATCHER_GROUP = "matchers"
SENDER_GROUP = "senders"


def pushed(incident_id: str, device_id: str) -> str:
    """Set once a push of this incident to this device has been enqueued (dedup)."""
    return f"{PREFIX}:pushed:{incident_id}:{device_id}"


PUSHED_TTL_S = 48 * 3600
"""Longer than any incident stays alertable (staleness window + expiry)."""


def agency_rate(agency_id: str) -> str:
    """GCRA state (theoretical arrival time, ms) of an agency's webhook rate limit."""
    return f"{PREFIX}:rate:agency:{agency_id}"
