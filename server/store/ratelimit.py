"""Rate limits in Redis (GCRA: smooth, with a burst of one period's budget).

Webhooks: an agency's authenticated requests count against its own budget; requests
that fail verification count against a budget of their own for the agency id they
name (known or not, alike), so forgeries are limited without spending the agency's
budget for it. Device registrations: a budget per client address. If Redis is
unreachable no limit is enforced: refusing incidents because the limiter is down
would trade a safety feature for an outage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from server import keys
from server.store.redisclient import REDIS_UNAVAILABLE, RedisClient, eval_many

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
    def __init__(self, redis: RedisClient) -> None:
        self._script = redis.register_script(_GCRA)

    async def check(self, agency_id: str, per_minute: int, *, dry_run: bool = False) -> Verdict:
        """One request of the agency's webhooks (or, ``dry_run``, of its dry runs: a
        separate budget)."""
        key = keys.agency_dry_run_rate(agency_id) if dry_run else keys.agency_rate(agency_id)
        return await self.check_key(key, per_minute)

    async def check_key(self, key: str, per_minute: int) -> Verdict:
        """GCRA on any key: ``per_minute`` steady, a minute's budget as burst."""
        if per_minute <= 0:
            return Verdict(False, 60)
        return await self.allow(key, per_minute, 60)

    async def allow(self, key: str, count: int, period_s: int) -> Verdict:
        """One more request under ``key``, limited to ``count`` per ``period_s``."""
        period_ms = period_s * 1000
        try:
            allowed, retry_ms = await self._script(
                keys=[key], args=[period_ms / count, period_ms])
        except REDIS_UNAVAILABLE as exc:
            log.warning("rate limiter unavailable, not enforcing: %s", exc)
            return Verdict(True)
        if allowed:
            return Verdict(True)
        return Verdict(False, max(1, math.ceil(int(retry_ms) / 1000)))


# KEYS[1]: a fixed-window counter. Returns {count, ms until the window ends}.
_READ_WINDOW = """
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}
"""

# KEYS[1]: a fixed-window counter, ARGV[1]: the window in seconds. The first count
# opens the window (SET NX EX; INCR keeps the TTL). Returns the count.
_COUNT_IN_WINDOW = """
redis.call('SET', KEYS[1], 0, 'EX', ARGV[1], 'NX')
return redis.call('INCR', KEYS[1])
"""


class LoginLimiter:
    """Sign-in attempts in fixed windows: failures per username (guessing one
    account's password from many addresses) and attempts per client address (trying
    many accounts from one). Like the agency limit, not enforced while Redis is down:
    the memory-hard password hash still bounds guessing."""

    def __init__(self, redis: RedisClient, *, failures_per_user: int = 5,
                 attempts_per_address: int = 30, window_s: int = 15 * 60) -> None:
        self._redis = redis
        self._read = redis.register_script(_READ_WINDOW)
        self._count = redis.register_script(_COUNT_IN_WINDOW)
        self.failures_per_user = failures_per_user
        self.attempts_per_address = attempts_per_address
        self.window_s = window_s

    # The user's and the address's counters are in different slots (keys.login_failures
    # says why): each is read and counted by a script of its own, two calls in one
    # pipeline.

    async def check(self, username: str, address: str) -> Verdict:
        try:
            (user_n, user_ttl), (addr_n, addr_ttl) = await eval_many(self._redis, self._read, [
                ([keys.login_failures(username)], []), ([keys.login_attempts(address)], [])])
        except REDIS_UNAVAILABLE as exc:
            log.warning("login limiter unavailable, not enforcing: %s", exc)
            return Verdict(True)
        waits = [ttl for n, ttl, cap in ((user_n, user_ttl, self.failures_per_user),
                                         (addr_n, addr_ttl, self.attempts_per_address))
                 if int(n) >= cap]
        if not waits:
            return Verdict(True)
        return Verdict(False, max(1, math.ceil(max(int(w) for w in waits) / 1000)))

    async def attempted(self, username: str, address: str, succeeded: bool) -> None:
        counted = [keys.login_attempts(address)]
        try:
            if succeeded:
                await self._redis.delete(keys.login_failures(username))
            else:
                counted.append(keys.login_failures(username))
            await eval_many(self._redis, self._count,
                            [([key], [self.window_s]) for key in counted])
        except REDIS_UNAVAILABLE as exc:
            log.warning("login limiter unavailable, attempt not counted: %s", exc)
