"""Where phones are right now (Redis GEO sets), forgotten after a time-to-live.

Two sets: CPR responders' positions (forgotten after 15 minutes: a responder must be
close now) and "near me" positions (GEOPUSH_LOCATION_TTL_MINUTES, 120 by default),
these in bands by the device's radius (``NearMePositions``).
A position lives in Redis only, never in PostgreSQL; each set has a sorted set of
when each device last reported, and a search first forgets what is older than the
time-to-live, so a forgotten position is never matched.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from server import keys
from server.domain.zones import MAX_NEAR_ME_RADIUS_M
from server.store.redisclient import RedisClient, is_cluster_client

# Redis measures distances on a sphere, PostGIS (which has the last word) on the
# spheroid: they differ by up to ~0.5%. A search reaches this much further, so that a
# position PostGIS puts within a device's radius is never left out by Redis.
SEARCH_MARGIN = 1.01


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

    @property
    def geo_keys(self) -> list[str]:
        """Every GEO set a position of this set may be in."""
        return [self.geo_key]

    async def forget(self, redis: RedisClient, device_ids: list[str]) -> None:
        if device_ids:
            async with redis.pipeline(transaction=True) as pipe:
                for key in self.geo_keys:
                    pipe.zrem(key, *device_ids)
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
        return await self._fresh(redis, nearby, now) if not forget else nearby

    async def _fresh(self, redis: RedisClient, nearby: list[Nearby], now: float
                     ) -> list[Nearby]:
        """Of ``nearby``, those reported within the time-to-live (a dry run's filter,
        where stale positions are passed over, not deleted)."""
        if not nearby:
            return nearby
        seen = await redis.zmscore(self.seen_key, [n.device_id for n in nearby])
        cutoff = now - self.ttl_s
        return [n for n, t in zip(nearby, seen, strict=True)
                if t is not None and float(t) >= cutoff]


RESPONDERS = PositionSet(keys.RESPONDERS_GEO, keys.RESPONDERS_SEEN,
                         keys.RESPONDER_POSITION_TTL_S)


# KEYS[1]: the band the device belongs in now; KEYS[2..]: the others. ARGV[1]: the
# device. Moves its position (a GEO set member's score is its geohash) into KEYS[1].
_MOVE = """
for i = 2, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if score then
    redis.call('ZADD', KEYS[1], score, ARGV[1])
    redis.call('ZREM', KEYS[i], ARGV[1])
  end
end
return 0
"""


@dataclass(frozen=True)
class NearMePositions(PositionSet):
    """"Near me" positions, one GEO set per band of the device's radius
    (``keys.NEAR_ME_BANDS``; above the last band, ``geo_key``). An incident is searched
    for in each band only as far as that band's radius reaches (plus the incident's
    extent): with one set, every search had to reach as far as the largest radius
    anyone may choose, and at a metro's scale it returned ten times the positions that
    could match, each then looked up and measured by PostgreSQL. The exact test (the
    device's own radius, on the spheroid) stays PostgreSQL's.

    A device's band follows its radius: a report puts the position in the band of the
    radius it has then, and a change of radius moves it (``move``). All the sets share
    one hash tag: every command here is in one slot of a Redis Cluster."""

    bands: tuple[tuple[int, str], ...] = keys.NEAR_ME_BANDS
    widest_m: int = MAX_NEAR_ME_RADIUS_M

    def in_full(self) -> NearMePositions:
        """The same positions, every band searched twice as far as the widest radius
        (a check's oracle for the bands and the search's reach: PostgreSQL keeps those
        within their device's radius, so searching further only costs time)."""
        widest = 2 * self.widest_m
        return dataclasses.replace(self, bands=tuple((widest, key) for _, key in self.bands),
                                   widest_m=widest)

    @property
    def reaches(self) -> list[tuple[int, str]]:
        """(radius, GEO set) of every band, the widest (``geo_key``) last."""
        return [*self.bands, (self.widest_m, self.geo_key)]

    @property
    def geo_keys(self) -> list[str]:
        return [key for _, key in self.reaches]

    def band(self, radius_m: int | None) -> str:
        """The GEO set of a device with this radius (None: the widest)."""
        for limit, key in self.bands:
            if radius_m is not None and radius_m <= limit:
                return key
        return self.geo_key

    async def report(self, redis: RedisClient, device_id: str, lat: float, lon: float,
                     now: float | None = None, *, radius_m: int | None = None) -> None:
        """The device's position, in the band of ``radius_m``, and out of any other."""
        target = self.band(radius_m)
        async with redis.pipeline(transaction=True) as pipe:
            for key in self.geo_keys:
                if key != target:
                    pipe.zrem(key, device_id)
            pipe.geoadd(target, (lon, lat, device_id))
            pipe.zadd(self.seen_key, {device_id: now or time.time()})
            await pipe.execute()

    async def move(self, redis: RedisClient, device_id: str, radius_m: int) -> None:
        """The device's radius changed: its position (if any) into the new band."""
        target = self.band(radius_m)
        others = [key for key in self.geo_keys if key != target]
        await redis.register_script(_MOVE)(keys=[target, *others], args=[device_id])

    async def any(self, redis: RedisClient) -> bool:
        return bool(await redis.exists(*self.geo_keys))

    async def candidates(self, redis: RedisClient, lat: float, lon: float, extent_m: float,
                         now: float | None = None, *, forget: bool = True) -> list[Nearby]:
        """Positions that may be within their device's radius of a geometry reaching
        ``extent_m`` from (lat, lon): each band searched as far as its radius reaches,
        in one round trip; nearest first. ``forget`` as for ``near``."""
        now = now or time.time()
        if forget:
            await self.forget_stale(redis, now)
        async with redis.pipeline(transaction=False) as pipe:
            for limit, key in self.reaches:
                pipe.geosearch(key, longitude=lon, latitude=lat,
                               radius=(limit + extent_m) * SEARCH_MARGIN, unit="m",
                               withdist=True, withcoord=True)
            found: list[Any] = await pipe.execute()
        nearby = sorted((Nearby(_s(member), float(dist), float(coord[1]), float(coord[0]))
                         for band in found for member, dist, coord in band),
                        key=lambda n: n.distance_m)
        return await self._fresh(redis, nearby, now) if not forget else nearby


def near_me(ttl_s: float) -> NearMePositions:
    """The near-me positions, forgotten ``ttl_s`` after the last report."""
    return NearMePositions(keys.NEAR_ME_GEO, keys.NEAR_ME_SEEN, ttl_s)


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
