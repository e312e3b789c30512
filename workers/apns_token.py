"""One APNs provider token (ES256 JWT) for every sender process, kept in Redis.

Apple refuses a team that recreates its token more often than every 20 minutes
(429 TooManyProviderTokenUpdates) and tokens older than an hour (403
ExpiredProviderToken). Whether the 20-minute rule counts per connection or per team
is not documented, and operators of several sender instances report the 429; so
geopush never lets two processes mint at once: the token lives in Redis for 40
minutes, the first process to find it missing mints the next one (SET NX), and the
others read it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import jwt

from server import keys
from server.store.redisclient import REDIS_UNAVAILABLE, RedisClient

TOKEN_LIFETIME_S = 40 * 60   # within Apple's [20, 60) minutes, with margin both ways
MAX_AGE_S = 55 * 60          # never present a token older than this


class SharedProviderToken:
    def __init__(self, redis: RedisClient, *, key_pem: str, key_id: str, team_id: str,
                 lifetime_s: int = TOKEN_LIFETIME_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._key_pem = key_pem
        self._key_id = key_id
        self._team_id = team_id
        self._lifetime = lifetime_s
        self._clock = clock
        self._key = keys.apns_provider_token(team_id, key_id)
        self._header: str | None = None
        self._issued_at = 0
        self._valid_until = 0.0
        self._lock = asyncio.Lock()

    def _mint(self, now: int) -> str:
        return jwt.encode({"iss": self._team_id, "iat": now}, self._key_pem,
                          algorithm="ES256", headers={"kid": self._key_id})

    def current(self) -> str | None:
        """The local copy while it is good, without touching Redis; else None."""
        if self._header is not None and self._clock() < self._valid_until:
            return self._header
        return None

    async def header(self) -> str:
        """``bearer <jwt>``; reads Redis only when the local copy is about to expire, once
        for all concurrent sends."""
        now = self._clock()
        if self._header is not None and now < self._valid_until:
            return self._header
        async with self._lock:
            now = self._clock()
            if self._header is not None and now < self._valid_until:
                return self._header
            try:
                await self._refresh(now)
            except REDIS_UNAVAILABLE:
                if self._header is None or now - self._issued_at >= MAX_AGE_S:
                    raise
                self._valid_until = now + 5   # keep using ours; ask Redis again soon
            assert self._header is not None
            return self._header

    async def _refresh(self, now: float) -> None:
        for _ in range(3):
            raw = await self._redis.get(self._key)
            if raw is not None:
                stored = json.loads(raw)
                token, iat = stored["jwt"], int(stored["iat"])
                # Past its 40 minutes by our clock but still in Redis (clocks differ a
                # little): keep sharing it while Apple still takes it.
                if now - iat < MAX_AGE_S:
                    break
                overwrite = True     # too old for Apple: replace it whatever the others do
            else:
                overwrite = False
            iat = int(now)
            token = self._mint(iat)
            value = json.dumps({"jwt": token, "iat": iat})
            if await self._redis.set(self._key, value, nx=not overwrite, ex=self._lifetime):
                break
            # Another process minted in the meantime: take theirs.
        self._header = f"bearer {token}"
        self._issued_at = iat
        # Re-read a little before the shared one expires, so all processes switch together.
        self._valid_until = min(iat + self._lifetime - 5, now + 60)
