"""Where phones are right now (Redis GEO sets), forgotten after a time-to-live.

Two sets: CPR responders' positions (forgotten after 15 minutes: a responder must be
close now) and "near me" positions (GEOPUSH_LOCATION_TTL_MINUTES, 120 by default).
A position lives in Redis only, never in PostgreSQL; each set has a sorted set of
when each device last reported, and a search first forgets what is older than the
time-to-live, so a forgotten position is never matched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from server import keys
from server.store.redisclient import RedisClient, is_cluster_client


@dataclass(frozen=True)
class Nearby:
    device_id: str
    distance_m: float
    lat: float
    lon: float


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class PositionSet:
    geo_key: str
    seen_key: str
    ttl_s: float

    async def report(self, redis: RedisClient, device_id: str, lat: float, lon: float,
                     now: float | None = None) -> None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.geoadd(self.geo_key, (lon, lat, device_id))
            pipe.zadd(self.seen_key, {device_id: now or time.time()})
            await pipe.execute()

    async def forget(self, redis: RedisClient, device_ids: list[str]) -> None:
        if device_ids:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.geo_key, *device_ids)
                pipe.zrem(self.seen_key, *device_ids)
                await pipe.execute()

    async def forget_stale(self, redis: RedisClient, now: float | None = None) -> int:
        cutoff = (now or time.time()) - self.ttl_s
        stale: list[Any] = await redis.zrangebyscore(self.seen_key, "-inf", cutoff)
        ids = [_s(s) for s in stale]
        await self.forget(redis, ids)
        return len(ids)

    async def near(self, redis: RedisClient, lat: float, lon: float, radius_m: float,
                   now: float | None = None, *, forget: bool = True) -> list[Nearby]:
        """Devices whose last position (within the time-to-live) is within radius_m,
        nearest first: one GEOSEARCH, whatever the number of devices. ``forget``:
        delete the positions past their time-to-live first (else only pass them over,
        as a dry run must, which writes nothing)."""
        now = now or time.time()
        if forget:
            await self.forget_stale(redis, now)
        found: list[Any] = await redis.geosearch(
            self.geo_key, longitude=lon, latitude=lat, radius=radius_m, unit="m",
            sort="ASC", withdist=True, withcoord=True,
        )
        nearby = [Nearby(_s(member), float(dist), float(coord[1]), float(coord[0]))
                  for member, dist, coord in found]
        if nearby and not forget:
            seen = await redis.zmscore(self.seen_key, [n.device_id for n in nearby])
            cutoff = now - self.ttl_s
            nearby = [n for n, t in zip(nearby, seen, strict=True)
                      if t is not None and float(t) >= cutoff]
        return nearby


RESPONDERS = PositionSet(keys.RESPONDERS_GEO, keys.RESPONDERS_SEEN,
                         keys.RESPONDER_POSITION_TTL_S)


def near_me(ttl_s: float) -> PositionSet:
    """The near-me positions, forgotten ``ttl_s`` after the last report."""
    return PositionSet(keys.NEAR_ME_GEO, keys.NEAR_ME_SEEN, ttl_s)


async def forget_device(redis: RedisClient, device_id: str) -> None:
    """Every position of a device, in both sets (erasure)."""
    await RESPONDERS.forget(redis, [device_id])
    await near_me(0).forget(redis, [device_id])


# KEYS: pairs of (old name, new name). Moves each old sorted set into the new one: a
# rename when the new one is empty, else its members the new one lacks (a position
# reported under the new name is newer than the same device's under the old one).
_ADOPT = """
local moved = 0
for i = 1, #KEYS, 2 do
  local old, new = KEYS[i], KEYS[i + 1]
  if redis.call('EXISTS', old) == 1 then
    moved = moved + redis.call('ZCARD', old)
    if redis.call('EXISTS', new) == 0 then
      redis.call('RENAME', old, new)
    else
      local members = redis.call('ZRANGE', old, 0, -1, 'WITHSCORES')
      for j = 1, #members, 2 do
        redis.call('ZADD', new, 'NX', members[j + 1], members[j])
      end
      redis.call('DEL', old)
    end
  end
end
return moved
"""


async def adopt_legacy_keys(redis: RedisClient) -> int:
    """Positions still under the position keys' names of before the hash tags (left by
    the upgrade, or written by a web process of the old version during a rolling one),
    moved under the current names, atomically; how many. Nothing to do on a cluster."""
    if is_cluster_client(redis):
        return 0
    names = [name for pair in keys.LEGACY_POSITION_KEYS for name in pair]
    return int(await redis.register_script(_ADOPT)(keys=names))
