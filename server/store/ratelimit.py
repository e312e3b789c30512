"""Per-agency rate limit in Redis (GCRA: smooth, with a burst of one minute's budget).

Only authenticated requests count, so nobody can spend an agency's budget for it. If
Redis is unreachable the limit is not enforced: refusing incidents because the
limiter is down would trade a safety feature for an outage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server import keys

log = logging.getLogger(__name__)

# KEYS[1]: the agency's key. ARGV[1]: ms between requests at the steady rate,
# ARGV[2]: burst tolerance in ms. Returns {allowed, retry_after_ms}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
return {1, 0}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0


class RateLimiter:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(_GCRA)

    async def check(self, agency_id: str, per_minute: int, *, dry_run: bool = False) -> Verdict:
        """One request of the agency's webhooks (or, ``dry_run``, of its dry runs: a
        separate budget)."""
        key = keys.agency_dry_run_rate(agency_id) if dry_run else keys.agency_rate(agency_id)
        if per_minute <= 0:
            return Verdict(False, 60)
        interval_ms = 60_000 / per_minute
        try:
            allowed, retry_ms = await self._script(keys=[key], args=[interval_ms, 60_000])
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable, not enforcing: %s", exc)
            return Verdict(True)
        if allowed:
            return Verdict(True)
        return Verdict(False, max(1, math.ceil(int(retry_ms) / 1000)))
