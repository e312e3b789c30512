"""Enqueueing a fan-out: many devices' pushes for one incident, fast, once each.

The matcher reads an incident's audience page by page (``server.store.matching``) and
hands each page here as soon as it is read:

- ``Fanout`` is what every push of the incident shares, built once per incident: the
  push's JSON around the four fields that differ per device (device id, platform,
  token, locale; the text in the device's language is the sender's work), the event
  whose dedup set keeps a device to one push, and the hourly limit.
- ``Enqueuer.enqueue`` puts a group of devices on the push streams: grouped by push
  shard, one script call per shard (every key it touches in the shard's slot: dedup,
  hourly limit and XADD atomic per device), all the shards in one round trip.
- A large fan-out is shared: past the first pages the reader enqueues itself, each
  page goes onto the work stream as a ``WorkItem`` (the devices' rows carried in it,
  so nobody runs the spatial query again) for any matcher to enqueue
  (docs/adr/0002-shared-fan-out.md). Work items wait while the push streams hold
  more than a backlog limit; new incidents never do (``Enqueuer.room``).

Crash safety: a work item is acknowledged only after its devices are enqueued, and
the incident only after its items are on the work stream; whatever is done again
after a crash goes through the same dedup sets, so nobody is pushed twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import msgspec
from redis.typing import EncodableT

from server import keys, metrics
from server.store.publish import STREAM_MAXLEN
from server.store.redisclient import NO_WAIT, RedisClient, ReplicaWait, eval_many, write_all
from workers.push import Push

log = logging.getLogger(__name__)

# One call per (event, shard) and group of devices: every key it touches is in the
# shard's hash slot (server/keys.py), so it runs on a Redis Cluster as on one Redis.
# KEYS: the event's dedup set (of this shard), the shard's APNs and FCM push streams,
# then per device its hourly counter and its index of dedup sets (what its erasure
# must clean). ARGV: dedup TTL, stream MAXLEN, hourly limit (0: none), then per device
# its id, the index in KEYS of its platform's stream, and the push (the entry's field).
# A device already in the dedup set is skipped before its counter is touched, so a
# replayed call neither pushes twice nor counts twice. Returns {enqueued, limited}.
_ENQUEUE = """
local ttl = ARGV[1]
local maxlen = ARGV[2]
local limit = tonumber(ARGV[3])
local enqueued, limited = 0, 0
local k = 4
for i = 4, #ARGV, 3 do
  local device = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], device) == 0 then
    local over = false
    if limit > 0 then
      local n = redis.call('INCR', KEYS[k])
      if n == 1 then
        redis.call('EXPIRE', KEYS[k], 3600)
      end
      over = n > limit
    end
    if over then
      limited = limited + 1
    else
      redis.call('SADD', KEYS[1], device)
      redis.call('SADD', KEYS[k + 1], KEYS[1])
      redis.call('EXPIRE', KEYS[k + 1], ttl)
      redis.call('XADD', KEYS[tonumber(ARGV[i + 1])], 'MAXLEN', '~', maxlen, '*',
                 'device_id', device, 'push', ARGV[i + 2])
      enqueued = enqueued + 1
    end
  end
  k = k + 2
end
if enqueued > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {enqueued, limited}
"""
_STREAM_INDEX = {"apns": "2", "fcm": "3"}

# A device as a fan-out carries it: id, platform, token, locale.
Device = tuple[str, str, str, str]

_DEVICE_FIELDS = '"device_id":"","platform":"","token":"","locale":""'


class Fanout(msgspec.Struct, frozen=True):
    """What all the pushes of one fan-out share."""

    incident_id: str
    event: str           # whose dedup set: the incident, the same event's first report,
    limit: int           # or "update:<incident>"; the hourly limit (0: none)
    head: str            # the push's JSON before the device's fields...
    tail: str            # ...and after them
    expires_at: float    # not worth enqueueing after this (unix s)
    kind: str = "alert"

    @classmethod
    def of(cls, template: Push, event: str, limit: int) -> Fanout:
        """From a push with the device's four fields empty (msgspec writes a struct's
        fields in their order, so they sit together in the JSON, once)."""
        encoded = template.to_fields()["push"]
        head, sep, tail = encoded.partition(_DEVICE_FIELDS)
        if not sep or _DEVICE_FIELDS in tail:
            raise ValueError("the template push must leave the device's fields empty")
        return cls(template.incident_id, event, limit, head, tail, template.expires_at,
                   template.kind)

    def render(self, device_id: str, platform: str, token: str, locale: str) -> str:
        """The push's JSON for one device, as ``Push.to_fields`` would write it."""
        return (f'{self.head}"device_id":"{device_id}","platform":"{platform}",'
                f'"token":{_quoted(token)},"locale":{_quoted(locale)}{self.tail}')


def _quoted(text: str) -> str:
    """A JSON string: as is when nothing in it needs escaping (tokens and locales are
    plain ASCII almost always), else escaped."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text, ensure_ascii=False)


class WorkItem(msgspec.Struct, frozen=True):
    """A page of a large fan-out, on the work stream for any matcher to enqueue."""

    fanout: Fanout
    devices: list[Device]


_encode_item = msgspec.json.Encoder().encode
_decode_item = msgspec.json.Decoder(WorkItem).decode


def decode_item(fields: dict[str, str]) -> WorkItem:
    """A work stream entry's item; ValueError or KeyError if malformed."""
    try:
        return _decode_item(fields["item"])
    except msgspec.MsgspecError as exc:
        raise ValueError(f"malformed work item: {exc}") from None


@dataclass(frozen=True)
class FanoutLimits:
    """How a fan-out is read and shared. The first page is small so the first pushes
    leave at once; a matcher enqueues up to ``split_after`` devices of an incident
    itself (a small incident is one matcher's, start to end) and hands the rest out
    as work items of a page each; items wait while a platform's push streams hold
    more than ``backlog`` pushes (GEOPUSH_PUSH_BACKLOG_LIMIT)."""

    first_page: int = 500
    page: int = 2_000
    split_after: int = 4_000
    backlog: int = 5_000


class Enqueuer:
    def __init__(self, redis: RedisClient, shards: int,
                 replica_wait: ReplicaWait = NO_WAIT) -> None:
        self.redis = redis
        self.shards = shards
        # What an enqueue or a posted item waits for before the caller acknowledges
        # the incident or work item it came from (ReplicaWait).
        self.replica_wait = replica_wait
        self._enqueue = redis.register_script(_ENQUEUE)
        # The keys of a shard, less the device id at their end (server/keys.py names
        # them; concatenating the id is all that is left per device).
        self._rate = [keys.device_rate("", s) for s in range(shards)]
        self._index = [keys.device_events("", s) for s in range(shards)]
        self._streams = [(keys.push_stream("apns", s), keys.push_stream("fcm", s))
                         for s in range(shards)]

    async def enqueue(self, fanout: Fanout, devices: list[Device]) -> tuple[int, int]:
        """Each device's push enqueued unless it is in the event's dedup set already,
        or over the hourly limit: (enqueued, limited)."""
        if not devices:
            return 0, 0
        shards = self.shards
        rate, index, render = self._rate, self._index, fanout.render
        by_shard: dict[int, tuple[list[str], list[EncodableT]]] = {}
        crc32 = keys.device_shard
        for device_id, platform, token, locale in devices:
            shard = crc32(device_id, shards)
            group = by_shard.get(shard)
            if group is None:
                apns, fcm = self._streams[shard]
                group = by_shard[shard] = ([keys.pushed(fanout.event, shard), apns, fcm],
                                           [keys.PUSHED_TTL_S, STREAM_MAXLEN, fanout.limit])
            group[0].append(rate[shard] + device_id)
            group[0].append(index[shard] + device_id)
            group[1].extend((device_id, _STREAM_INDEX[platform],
                             render(device_id, platform, token, locale)))
        # One pipeline: one round trip per master of a cluster (eval_many).
        results = await eval_many(self.redis, self._enqueue, list(by_shard.values()),
                                  self.replica_wait)
        enqueued = sum(int(r[0]) for r in results)
        limited = sum(int(r[1]) for r in results)
        metrics.MATCH_RATE_LIMITED.inc(limited)
        return enqueued, limited

    async def post(self, fanout: Fanout, devices: list[Device]) -> None:
        """A page of the fan-out onto the work stream, for any matcher."""
        item = _encode_item(WorkItem(fanout, devices)).decode()
        stream = keys.FANOUT_WORK_STREAM
        [reply] = await write_all(self.redis, [(stream, ("XADD", stream, "*", "item", item))],
                                  self.replica_wait)
        if isinstance(reply, Exception):
            raise reply
        metrics.FANOUT_ITEMS.labels("posted").inc()

    async def backlog(self) -> int:
        """Pushes waiting on the push streams of the busiest platform (all shards)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for apns, fcm in self._streams:
                pipe.xlen(apns)
                pipe.xlen(fcm)
            lengths = await pipe.execute()
        return max(sum(int(n) for n in lengths[0::2]), sum(int(n) for n in lengths[1::2]))
