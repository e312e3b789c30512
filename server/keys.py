"""Every Redis key and stream name geopush uses, and nothing else.

Keeping them here makes the Redis footprint reviewable in one screen (what a device's
erasure must delete, what a Redis Cluster deployment must hash-tag) and keeps typos
from splitting one logical key into two.

Redis Cluster (docs/adr/0003-redis-cluster.md). A cluster puts each key in one of 16,384
hash slots, spread over its masters, and refuses a script, MULTI or multi-key command
whose keys are in different slots (CROSSSLOT). A ``{tag}`` in a name decides its slot
alone, so keys that must change together share a tag, and keys that need not are left
apart so they spread over the masters. The same names on a single Redis, which ignores
tags: one code path. What is atomic, and with what:

- The push path (per device: dedup, hourly counter, its push, its retries): one tag per
  *push shard* (``{p<k>.<n>}``, :func:`device_shard`, :func:`shard_tag`: the shards'
  slots spread evenly over the masters); see the push keys below.
- A position set's GEO set and its report times: one tag per set (``{responders}``,
  ``{near_me}``): reported and forgotten in one MULTI.
- Single-key scripts need no tag: the rate limiters' GCRA (one key a call), the stream
  consumers' XACK+XDEL (one stream), a sign-in counter (one key a call).
- Not atomic together, by design, each explained where it is defined: a sign-in's user
  and address counters (:func:`login_failures`), a sender's retries and the dead stream
  (:data:`DEAD_STREAM`), an erasure's steps (store/erasure.py: never one transaction,
  each step one key or one shard's, each harmless to repeat).

Durability across a failover is not a matter of slots: hand-offs wait for replicas
(``ReplicaWait`` in store/redisclient.py).
"""

from __future__ import annotations

import binascii
import functools
import zlib
from uuid import UUID

PREFIX = "geopush"

# Push shards. Every per-device key on the push path (its push stream entry, retry,
# dedup membership, hourly counter, index of dedup sets) lives in the device's shard,
# and a shard's keys share one hash tag (``{p<k>.<n>}``): the matcher's enqueue script for
# the devices of one shard touches one Redis Cluster slot, and the shards spread the
# push path over the cluster's masters. Single-node Redis runs the same code.
DEFAULT_PUSH_STREAM_SHARDS = 8
MAX_PUSH_STREAM_SHARDS = 1024


def device_shard(device_id: str | UUID, shards: int) -> int:
    """The push shard of a device: crc32 of its canonical uuid string (lowercase,
    hyphenated, as PostgreSQL prints it) modulo ``shards`` (GEOPUSH_PUSH_STREAM_SHARDS).
    Stable across processes and languages (no per-process hash seed)."""
    return zlib.crc32(str(device_id).lower().encode()) % shards


SLOTS = 16384
"""Hash slots of a Redis Cluster."""


@functools.cache
def shard_tag(shard: int) -> str:
    """The hash tag of a push shard: ``p<k>.<n>``, ``n`` the first number that puts the
    tag's slot (CRC16 of the tag mod 16,384, as Redis computes it) in the ``k``-th
    window of a van der Corput spread of the slot range: 0, 1/2, 1/4, 3/4, 1/8, ...

    A cluster gives each master a contiguous range of slots (``redis-cli --cluster
    create`` and ``rebalance`` make them equal). Plain ``p<k>`` tags fall where CRC16
    puts them: 8 shards landed 4/2/2 on 3 masters, half the push path on one. Spread
    this way, a power-of-two count of shards (8 to 64) is as even as it can be on 2 to
    8 equal masters (8 on 3: 3/3/2), other counts within a few shards. Deterministic,
    the same in any language with CRC16-XMODEM; about a millisecond to find, once per
    shard and process."""
    if not 0 <= shard < MAX_PUSH_STREAM_SHARDS:
        raise ValueError(f"shard {shard} is not in 0..{MAX_PUSH_STREAM_SHARDS - 1}")
    bits = (MAX_PUSH_STREAM_SHARDS - 1).bit_length()
    width = SLOTS // MAX_PUSH_STREAM_SHARDS
    low = int(format(shard, f"0{bits}b")[::-1], 2) * width
    n = 0
    while not low <= binascii.crc_hqx(f"p{shard}.{n}".encode(), 0) % SLOTS < low + width:
        n += 1
    return f"p{shard}.{n}"


def _shard(shard: int) -> str:
    return f"{PREFIX}:{{{shard_tag(shard)}}}"


# Streams
INCIDENTS_STREAM = f"{PREFIX}:incidents"
"""Incidents to match: fields ``incident_id`` (uuid). Written by ingest and the outbox
relay. One stream, one key: no script or transaction names it with another key, so it
needs no hash tag (its slot is its name's). The hand-off that must survive a failover:
its XADD is confirmed by replicas (``ReplicaWait``) before the outbox row goes."""

FANOUT_WORK_STREAM = f"{PREFIX}:{{fanout}}:work"
"""Pages of large fan-outs for any matcher to enqueue (field ``item``: a
``workers.fanout.WorkItem`` as JSON, the devices' rows in it). One stream: an item is
thousands of pushes, so one slot carries them easily; it is never named with another
key in one command, and its hash tag only fixes its slot (where a deployment can see
it). Read by the matchers' group after the incidents stream, so a new incident is
matched before the remainder of a large one (docs/adr/0002-shared-fan-out.md)."""

DEAD_STREAM = f"{PREFIX}:dead"
"""Pushes that could not be delivered before their alert expired, with the reason.

One stream for every shard and platform (a record for operators, a few entries a day):
a sender writes it in the same pipeline as its shard's retry schedule but not in one
transaction with it (different slots); see ``Sender`` for why that is safe."""

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
    """GCRA state (theoretical arrival time, ms) of an agency's webhook rate limit.

    Like every rate limiter's key here, read and written by one single-key script call:
    no hash tag, so a cluster spreads the agencies' and addresses' limits over its
    masters."""
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


# Positions. A position set is a GEO set and a sorted set of report times, written and
# forgotten together in one MULTI (a position never stays without its time, which would
# make it immortal, nor a time without its position): the two keys share a hash tag.
# Each set is one key, so one slot, by necessity: GEOSEARCH reads one key. A city's
# phones are a few hundred thousand members at most (tens of MB), well within one node;
# splitting a set by area would make a radius search fan out over shards.
RESPONDERS_GEO = f"{PREFIX}:{{responders}}:geo"
"""GEO set of responders' last reported positions (member: device id)."""

RESPONDERS_SEEN = f"{PREFIX}:{{responders}}:seen"
"""Sorted set: when each responder last reported (unix s); older than
RESPONDER_POSITION_TTL_S and the position is forgotten."""

RESPONDER_POSITION_TTL_S = 15 * 60

NEAR_ME_GEO = f"{PREFIX}:{{near_me}}:geo"
"""GEO set of the last position devices with "near me" reported (member: device id),
for the devices whose radius is above the last of NEAR_ME_BANDS (and positions
reported before the bands existed)."""

NEAR_ME_BANDS = tuple((m, f"{PREFIX}:{{near_me}}:geo:{m}")
                      for m in (500, 750, 1000, 1500, 2000, 3000, 4000))
"""(metres, GEO set): the positions of devices whose near-me radius is at most that
many metres (and above the band before): an incident's search reaches each band only
as far as its own radius, not every position within the largest radius anyone may
choose (server/store/positions.py, ``NearMePositions``)."""

NEAR_ME_SEEN = f"{PREFIX}:{{near_me}}:seen"
"""Sorted set: when each device last reported (unix s); older than
GEOPUSH_LOCATION_TTL_MINUTES and the position is forgotten."""

LEGACY_POSITION_KEYS = (
    (f"{PREFIX}:responders:geo", RESPONDERS_GEO),
    (f"{PREFIX}:responders:seen", RESPONDERS_SEEN),
    (f"{PREFIX}:near_me:geo", NEAR_ME_GEO),
    (f"{PREFIX}:near_me:seen", NEAR_ME_SEEN),
)
"""(old name, name) of the position keys from before they had hash tags. Only a single
Redis can hold the old names (geopush did not run on a Redis Cluster before): the
relay's maintenance moves what they hold, so no position outlives its time-to-live
under a name nothing reads (``positions.adopt_legacy_keys``)."""


def update_second_pass(incident_id: str) -> str:
    """Set once the updates of an ended incident have had their second pass scheduled
    (SET NX alone: no tag)."""
    return f"{PREFIX}:update_pass:{incident_id}"


def device_rate(device_id: str, shard: int) -> str:
    """Pushes enqueued for a device in the current hour (fixed window), in the device's
    shard: checked and counted by the enqueue script with the push it guards."""
    return f"{_shard(shard)}:device_rate:{device_id}"


def apns_provider_token(team_id: str, key_id: str) -> str:
    """The APNs provider JWT all sender processes share (JSON: jwt, iat). GET and
    SET NX on this key alone: no tag."""
    return f"{PREFIX}:apns:provider_token:{team_id}:{key_id}"


def login_failures(username: str) -> str:
    """Failed sign-ins for a username in the current window (fixed window counter).

    Deliberately not in the slot of :func:`login_attempts`: a sign-in names a user and an
    address that have nothing else in common. The limiter reads and counts each counter
    with its own single-key script (window opened and counted atomically per counter);
    the two counters need no atomicity between them, each limit holds on its own."""
    return f"{PREFIX}:login:user:{username}"


def login_attempts(address: str) -> str:
    """Sign-in attempts from one client address in the current window (see
    :func:`login_failures` for why the two are apart)."""
    return f"{PREFIX}:login:addr:{address}"


def public_rate(address: str) -> str:
    """GCRA state of one client address on the public incident map's API."""
    return f"{PREFIX}:rate:public:{address}"


REVIEW_CHANNEL = "geopush_review"
"""PostgreSQL NOTIFY channel (not Redis): "<agency> <incident>" on every review item
change, from the trigger in sql/0006."""
