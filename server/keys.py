"""Every Redis key and stream name geopush uses, and nothing else.

Keeping them here makes the Redis footprint reviewable in one screen (what a device's
erasure must delete, what a Redis Cluster deployment must hash-tag) and keeps typos
from splitting one logical key into two.
"""

from __future__ import annotations

import zlib
from uuid import UUID

PREFIX = "geopush"

# Push shards. Every per-device key on the push path (its push stream entry, retry,
# dedup membership, hourly counter, index of dedup sets) lives in the device's shard,
# and a shard's keys share one hash tag (``{p<k>}``): the matcher's enqueue script for
# the devices of one shard touches one Redis Cluster slot, and the shards spread the
# push path over the cluster's masters. Single-node Redis runs the same code.
DEFAULT_PUSH_STREAM_SHARDS = 8
MAX_PUSH_STREAM_SHARDS = 1024


def device_shard(device_id: str | UUID, shards: int) -> int:
    """The push shard of a device: crc32 of its canonical uuid string (lowercase,
    hyphenated, as PostgreSQL prints it) modulo ``shards`` (GEOPUSH_PUSH_STREAM_SHARDS).
    Stable across processes and languages (no per-process hash seed)."""
    return zlib.crc32(str(device_id).lower().encode()) % shards


def _shard(shard: int) -> str:
    return f"{PREFIX}:{{p{shard}}}"


# Streams
INCIDENTS_STREAM = f"{PREFIX}:incidents"
"""Incidents to match: fields ``incident_id`` (uuid). Written by ingest and the outbox
relay. One stream, one key: no script or transaction names it with another key, so it
needs no hash tag (its slot is its name's)."""

FANOUT_WORK_STREAM = f"{PREFIX}:{{fanout}}:work"
"""Pages of large fan-outs for any matcher to enqueue (field ``item``: a
``workers.fanout.WorkItem`` as JSON, the devices' rows in it). One stream: an item is
thousands of pushes, so one slot carries them easily; it is never named with another
key in one command, and its hash tag only fixes its slot (where a deployment can see
it). Read by the matchers' group after the incidents stream, so a new incident is
matched before the remainder of a large one (docs/adr/0002-shared-fan-out.md)."""

DEAD_STREAM = f"{PREFIX}:dead"
"""Pushes that could not be delivered before their alert expired, with the reason."""

PLATFORMS = ("apns", "fcm")


def push_stream(platform: str, shard: int) -> str:
    """Pushes of one shard's devices waiting for a sender of one platform. A sender
    reads every shard of its platform, each with its own consumer group."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}")
    return f"{_shard(shard)}:push:{platform}"


def push_streams(platform: str, shards: int) -> list[str]:
    """All push streams of a platform, shard 0 first."""
    return [push_stream(platform, shard) for shard in range(shards)]


def retry_schedule(platform: str, shard: int) -> str:
    """Sorted set of one shard's pushes waiting for a retry, scored by the unix time
    they are due; promoted onto the same shard's push stream (one slot)."""
    if platform not in PLATFORMS:
        raise ValueError(f"unknown platform {platform!r}")
    return f"{_shard(shard)}:retry:{platform}"


# Consumer groups
MATCHER_GROUP = "matchers"
SENDER_GROUP = "senders"


def pushed(event_id: str, shard: int) -> str:
    """Set of the shard's device ids already given a push for this event (dedup): an
    event's dedup set is split by shard, so each part sits in the slot of the devices
    (and the push stream) the enqueue script checks it with."""
    return f"{_shard(shard)}:pushed:{event_id}"


def device_events(device_id: str, shard: int) -> str:
    """Set of the ``pushed`` sets a device is a member of (same TTL): erasure removes
    the device from exactly those, without scanning the keyspace. In the device's
    shard, as they are."""
    return f"{_shard(shard)}:device_events:{device_id}"


PUSHED_TTL_S = 48 * 3600
"""Longer than any incident stays alertable (staleness window + expiry)."""


def agency_rate(agency_id: str) -> str:
    """GCRA state (theoretical arrival time, ms) of an agency's webhook rate limit."""
    return f"{PREFIX}:rate:agency:{agency_id}"


def agency_rejected_rate(agency_id: str) -> str:
    """GCRA state of the webhooks naming an agency id that failed verification."""
    return f"{PREFIX}:rate:rejected:{agency_id}"


def registration_rate(client: str) -> str:
    """GCRA state of device registrations from one client address (a digest of it)."""
    return f"{PREFIX}:rate:register:{client}"


def agency_dry_run_rate(agency_id: str) -> str:
    """GCRA state of an agency's dry-run rate limit: a budget of its own, so a vendor's
    test suite never spends what the agency's real incidents need."""
    return f"{PREFIX}:rate:dry_run:{agency_id}"


RESPONDERS_GEO = f"{PREFIX}:responders:geo"
"""GEO set of responders' last reported positions (member: device id)."""

RESPONDERS_SEEN = f"{PREFIX}:responders:seen"
"""Sorted set: when each responder last reported (unix s); older than
RESPONDER_POSITION_TTL_S and the position is forgotten."""

RESPONDER_POSITION_TTL_S = 15 * 60

NEAR_ME_GEO = f"{PREFIX}:near_me:geo"
"""GEO set of the last position devices with "near me" reported (member: device id)."""

NEAR_ME_SEEN = f"{PREFIX}:near_me:seen"
"""Sorted set: when each device last reported (unix s); older than
GEOPUSH_LOCATION_TTL_MINUTES and the position is forgotten."""


def update_second_pass(incident_id: str) -> str:
    """Set once the updates of an ended incident have had their second pass scheduled."""
    return f"{PREFIX}:update_pass:{incident_id}"


def device_rate(device_id: str, shard: int) -> str:
    """Pushes enqueued for a device in the current hour (fixed window), in the device's
    shard: checked and counted by the enqueue script with the push it guards."""
    return f"{_shard(shard)}:device_rate:{device_id}"


def apns_provider_token(team_id: str, key_id: str) -> str:
    """The APNs provider JWT all sender processes share (JSON: jwt, iat)."""
    return f"{PREFIX}:apns:provider_token:{team_id}:{key_id}"


def login_failures(username: str) -> str:
    """Failed sign-ins for a username in the current window (fixed window counter)."""
    return f"{PREFIX}:login:user:{username}"


def login_attempts(address: str) -> str:
    """Sign-in attempts from one client address in the current window."""
    return f"{PREFIX}:login:addr:{address}"


def public_rate(address: str) -> str:
    """GCRA state of one client address on the public incident map's API."""
    return f"{PREFIX}:rate:public:{address}"


REVIEW_CHANNEL = "geopush_review"
"""PostgreSQL NOTIFY channel (not Redis): "<agency> <incident>" on every review item
change, from the trigger in sql/0006."""
