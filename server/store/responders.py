"""Where opted-in CPR responders are right now (Redis GEO), forgotten after 15 minutes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from server import keys


@dataclass(frozen=True)
class NearbyResponder:
    device_id: str
    distance_m: float


async def report_position(redis: aioredis.Redis, device_id: str, lat: float, lon: float,
                          now: float | None = None) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.geoadd(keys.RESPONDERS_GEO, (lon, lat, device_id))
        pipe.zadd(keys.RESPONDERS_SEEN, {device_id: now or time.time()})
        await pipe.execute()


async def forget(redis: aioredis.Redis, device_ids: list[str]) -> None:
    if device_ids:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.RESPONDERS_GEO, *device_ids)
            pipe.zrem(keys.RESPONDERS_SEEN, *device_ids)
            await pipe.execute()


async def forget_stale(redis: aioredis.Redis, now: float | None = None) -> int:
    cutoff = (now or time.time()) - keys.RESPONDER_POSITION_TTL_S
    stale: list[Any] = await redis.zrangebyscore(keys.RESPONDERS_SEEN, "-inf", cutoff)
    ids = [s.decode() if isinstance(s, bytes) else s for s in stale]
    await forget(redis, ids)
    return len(ids)


async def near(redis: aioredis.Redis, lat: float, lon: float, radius_m: float,
               now: float | None = None) -> list[NearbyResponder]:
    """Responders whose last position (under 15 minutes old) is within radius_m."""
    await forget_stale(redis, now)
    found: list[Any] = await redis.geosearch(
        keys.RESPONDERS_GEO, longitude=lon, latitude=lat, radius=radius_m, unit="m",
        sort="ASC", withdist=True,
    )
    out = []
    for member, dist in found:
        device_id = member.decode() if isinstance(member, bytes) else member
        out.append(NearbyResponder(device_id, float(dist)))
    return out
